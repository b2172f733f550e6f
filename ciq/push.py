"""`ciq enqueue`: test one commit now — what a git hook calls, so every millisecond of
start-up is feedback delayed.

With the default set-up (broker and results backend one Redis at a ``redis://`` or
``unix://`` URL) the commit is claimed and its Celery message pushed in one Lua call
over :mod:`ciq.resp`, importing neither click, redis-py nor Celery. Other set-ups go
through :class:`~ciq.dispatch.Dispatcher` with redis-py.
"""

from __future__ import annotations

import sys

from .errors import BadInput, CiqError
from .gitrepo import CommitInfo, describe, normalise_repo, validate_sha
from .keys import CLAIM_SCRIPT, REPO_CONFIG, RUN_TASK, claim_call, repo_id, routed_queue
from .message import run_message
from .settings import Settings


def _is_url(repo: str) -> bool:
    return "://" in repo or "@" in repo.split("/")[0]


def _fast(settings: Settings) -> bool:
    from .resp import SCHEMES

    url = settings.result_backend
    return settings.broker_url == url and url.split("://", 1)[0] in SCHEMES


def _branch_name(name: str) -> str:
    """A branch name to record. It never reaches git, so any name git allows passes
    (``a&b``, ``fix,2``), less what could pass for an option or mangle a terminal."""
    if name.startswith("-") or len(name) > 255 or any(c.isspace() or not c.isprintable()
                                                       for c in name):
        raise BadInput(f"{name[:80]!r} is not a valid branch name")
    return name


def enqueue(settings: Settings, repo_arg: str, rev: str | None,
            branch_name: str | None = None) -> tuple[str, bool]:
    """Enqueue one commit; returns its SHA and whether this call enqueued it.

    ``branch_name`` is the branch to record (a post-receive hook knows it from the
    ref; an empty one records none); without it, the branch ``rev`` names, if any.
    """
    repo = normalise_repo(repo_arg)
    if _is_url(repo):
        if rev is None:
            raise BadInput("give the commit to test as a full SHA when REPO is a URL")
        info, branch = CommitInfo(validate_sha(rev), "", ""), None
    else:
        info, branch = describe(repo, rev or "HEAD")
    if branch_name is not None:
        branch = _branch_name(branch_name) if branch_name else None
    meta = {"subject": info.subject, "author": info.author}
    if _fast(settings):
        from .resp import RespConnection

        conn = RespConnection.open(settings.result_backend)
        try:
            # The operator may route this repository to a queue of its own (one more
            # round trip, well under a millisecond).
            queue = routed_queue(conn.call("HGET", REPO_CONFIG, repo_id(repo))) or (
                settings.queue)
            message = run_message(repo, info.sha, branch, queue, RUN_TASK)
            keys, args = claim_call(repo, info.sha, branch, meta, (queue, message))
            claimed = bool(conn.eval(CLAIM_SCRIPT, keys, args))
        finally:
            conn.close()
        return info.sha, claimed
    from .dispatch import Dispatcher
    from .store import Store

    store = Store.from_url(settings.result_backend)
    store.ping()
    return info.sha, Dispatcher.for_settings(settings, store).submit(repo, info.sha, branch, info)


def run(repo: str, rev: str | None, branch: str | None = None) -> int:
    """The command: prints the SHA (stdout) and any problem as one line (stderr)."""
    try:
        sha, claimed = enqueue(Settings.from_env(), repo, rev, branch)
    except CiqError as exc:
        print(f"ciq: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # refused, unreachable, timed out
        print(f"ciq: cannot reach Redis ({exc}); check CIQ_BROKER_URL and that Redis runs",
              file=sys.stderr)
        return 1
    except Exception as exc:  # an error reply from Redis (auth, readonly replica...)
        if type(exc).__name__ not in ("RespError", "ResponseError", "AuthenticationError"):
            raise
        print(f"ciq: Redis refused the enqueue: {exc}", file=sys.stderr)
        return 1
    if not claimed:
        print(f"ciq: {sha[:12]} was enqueued before; see `ciq report {repo} {sha[:12]}`",
              file=sys.stderr)
    print(sha)
    return 0
