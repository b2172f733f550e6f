"""`ciq enqueue`: test one commit now — what a git hook calls, so every millisecond of
start-up is feedback delayed.

With the default set-up (broker and results backend one Redis at a ``redis://`` or
``unix://`` URL) the commit is claimed and its Celery message pushed in one Lua call
over :mod:`ciq.store.resp`, importing neither click, redis-py nor Celery (a test holds
it to that). Other set-ups send the same message through redis-py. Both go through the
one :class:`~ciq.dispatch.Sender`.
"""

from __future__ import annotations

from .dispatch import Sender
from .errors import BadInput
from .gitrepo import CommitInfo, describe, normalise_repo, validate_sha
from .settings import Settings
from .store import resp
from .urls import is_url


def branch_name(name: str) -> str:
    """A branch name to record. It never reaches git, so any name git allows passes
    (``a&b``, ``fix,2``), less what could pass for an option or mangle a terminal."""
    if name.startswith("-") or len(name) > 255 or any(c.isspace() or not c.isprintable()
                                                       for c in name):
        raise BadInput(f"{name[:80]!r} is not a valid branch name")
    return name


def enqueue(settings: Settings, repo_arg: str, rev: str | None,
            branch: str | None = None) -> tuple[str, bool]:
    """Enqueue one commit; returns its SHA and whether this call enqueued it.

    ``branch`` is the branch to record (a post-receive hook knows it from the ref; an
    empty one records none); without it, the branch ``rev`` names, if any.
    """
    repo = normalise_repo(repo_arg)
    if is_url(repo):
        if rev is None:
            raise BadInput("give the commit to test as a full SHA when REPO is a URL")
        info, named = CommitInfo(validate_sha(rev), "", ""), None
    else:
        info, named = describe(repo, rev or "HEAD")
    if branch is not None:
        named = branch_name(branch) if branch else None
    if settings.broker_is_backend and resp.handles(settings.result_backend):
        conn = resp.RespConnection.open(settings.result_backend)
        try:
            return info.sha, Sender(conn, conn, settings.queue).submit(
                repo, info.sha, named, info)
        finally:
            conn.close()
    from .store.store import Store  # redis-py: TLS and Sentinel URLs, a broker elsewhere

    store = Store.from_url(settings.result_backend)
    store.ping()
    return info.sha, Sender.for_store(settings, store).submit(repo, info.sha, named, info)
