"""Claiming a commit, and where the operator routes a repository's runs: the two steps of
enqueueing, over any connection (redis-py, or :mod:`ciq.store.resp` on the push path).

A commit is *claimed* once: its metadata, its place in the repository's history and,
when the broker is this same Redis, its broker message, in one atomic step. Claiming is
what makes enqueueing idempotent: a second observer, a restarted observer or a repeated
`ciq enqueue` finds the claim and sends nothing. Standard library only.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..supersede import policy_for
from . import keys
from .scripts import CLAIM, SENT, Redisish


def claim(conn: Redisish, repo: str, sha: str, branch: str | None, meta: dict[str, str],
          message: tuple[str, str] | None = None) -> bool:
    """Record a commit as seen, once. False when it was claimed before (by anyone).

    ``message`` is (queue, payload) when the broker is this Redis: it is then pushed in
    the same step. Without one, the commit waits in the unsent set until its sender calls
    :func:`mark_sent` (or a reconciler sends it).
    """
    rid = keys.repo_id(repo)
    now = keys.now_us()
    fields = {
        **{k: v for k, v in meta.items() if v is not None},
        "repo": repo,
        "commit": sha,
        "branch": branch or "",
        "enqueued_at": datetime.fromtimestamp(now / 1e6, UTC).isoformat(timespec="milliseconds"),
        # The same instant as a number, for the scripts that time the queue wait.
        "enqueued_us": str(now),
        "attempts": "0",
    }
    flat = [x for kv in fields.items() for x in kv]
    queue, payload = message or (keys.NONE, "")
    policy = policy_for(branch, operator_config(conn, repo))
    live = keys.branch_live(rid, branch) if branch else keys.NONE
    got = conn.eval(
        CLAIM, [keys.commit(rid, sha), keys.index(rid), keys.UNSENT, keys.REPOS, queue, keys.SENT,
                keys.metrics(rid), live],
        [json.dumps(flat), now, sha, keys.member(rid, sha), rid, repo, payload, policy,
         keys.commit_prefix(rid), fields["enqueued_at"]])
    return bool(int(got))


def mark_sent(conn: Redisish, repo: str, sha: str, queue: str) -> bool:
    """The commit's message goes on ``queue``'s list: it moves from the unsent set to the
    sent set, where the reconciler finds it if no run ever takes its lease. True if it
    was in the unsent set."""
    rid = keys.repo_id(repo)
    return bool(conn.eval(SENT, [keys.UNSENT, keys.SENT, keys.commit(rid, sha), queue],
              [keys.member(rid, sha), keys.now_us()]))


def routed_queue(conn: Redisish, repo: str) -> str | None:
    """The broker queue the operator's settings route this repository's runs to, if any."""
    queue = operator_config(conn, repo).get("queue")
    return queue if isinstance(queue, str) and queue else None


def operator_config(conn: Redisish, repo: str) -> dict[str, Any]:
    """The operator's stored settings of the repository (empty: none)."""
    raw = conn.call("HGET", keys.REPO_CONFIG, keys.repo_id(repo))
    if raw is None:
        return {}
    config = json.loads(raw).get("config", {})
    return config if isinstance(config, dict) else {}
