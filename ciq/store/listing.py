"""History listings (`ciq status`, `ciq web`): one Lua call per repository, no report bodies.

The summary of a final report is copied into its commit's hash when the report is
stored, so a listing reads hashes only. `ciq status` runs it over :mod:`ciq.store.resp`
when it can (like `ciq enqueue`, it then imports no redis-py), otherwise over redis-py.
Standard library only.
"""

from __future__ import annotations

from typing import Any

from . import keys
from .scripts import RECENT, Redisish

#: Newest commits of a repository that a listing filtered by branch looks through.
RECENT_WALK = 10_000


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def repos(redis: Redisish) -> list[str]:
    return sorted(_text(r) for r in redis.call("HVALS", keys.REPOS) or [])


def recent(redis: Redisish, repo: str, limit: int, offset: int = 0,
           branch: str | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` commits of ``repo`` after the newest ``offset`` (of ``branch``
    only, when given), newest first, as `ciq status --json` rows: status is the
    report's, or ``running`` / ``queued``."""
    rid = keys.repo_id(repo)
    reply = redis.eval(RECENT, [keys.index(rid)],
                       [keys.commit_prefix(rid), keys.lease_prefix(rid), limit, offset,
                        branch or "", RECENT_WALK]) or []
    return [row(repo, sha, leased, flat) for sha, leased, flat in reply]


def row(repo: str, sha: Any, leased: Any, flat: list[Any]) -> dict[str, Any]:
    """A listing row from a commit's flat hash and whether its lease is held."""
    meta = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
    final = bool(meta.get("status"))
    return {
        "repo": repo,
        "commit": _text(sha),
        "branch": meta.get("branch") or None,
        "status": meta["status"] if final else ("running" if int(leased) else "queued"),
        "subject": meta.get("subject", ""),
        "author": meta.get("author", ""),
        "enqueued_at": meta.get("enqueued_at"),
        "summary": {k: int(meta.get(k, 0)) for k in
                    ("total", "passed", "failed", "errors", "skipped")} if final else None,
        "duration": float(meta["duration"]) if final and "duration" in meta else None,
        "worker": meta.get("worker") or None,
        "attempts": int(meta.get("attempts") or 0),
        "started_at": meta.get("started_at") or None,
        "finished_at": meta.get("finished_at") or None,
    }  # fmt: skip
