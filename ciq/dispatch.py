"""Handing commits to the broker, once each.

A commit is first *claimed* in Redis (atomically, with its metadata and its place in the
repository's history), then sent as a Celery message, then marked sent. Claiming is
what makes enqueueing idempotent: a second observer, a restarted observer or a repeated
`ciq enqueue` finds the claim and sends nothing. If the enqueuer dies between the claim
and the send, the commit stays in the unsent set and a worker's reconciler sends it.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .gitrepo import CommitInfo
from .store import Store, task_id

logger = logging.getLogger(__name__)

#: Name of the Celery task that tests one commit.
RUN_TASK = "ciq.run"


class Sender(Protocol):
    def __call__(self, repo: str, sha: str, branch: str | None) -> None: ...


def celery_sender(app: Any, queue: str) -> Sender:
    """A sender over a Celery app (taken as a parameter: this module imports no Celery)."""

    def send(repo: str, sha: str, branch: str | None) -> None:
        app.send_task(
            RUN_TASK,
            args=[repo, sha, branch],
            task_id=task_id(repo, sha),
            queue=queue,
            # What Flower and `celery inspect` show instead of the full arguments.
            argsrepr=f"({repo!r}, {sha[:12]!r}, {branch!r})",
        )

    return send


class Dispatcher:
    def __init__(self, store: Store, send: Sender) -> None:
        self.store = store
        self.send = send

    def submit(self, repo: str, sha: str, branch: str | None, info: CommitInfo | None = None
               ) -> bool:
        """Enqueue one commit unless it was enqueued before. True if this call did."""
        meta = {"subject": info.subject, "author": info.author} if info else {}
        if not self.store.claim(repo, sha, branch, meta):
            return False
        self.send(repo, sha, branch)
        self.store.mark_sent(repo, sha)
        logger.info("dispatch: enqueued %s of %s (%s)", sha[:12], repo, branch or "-")
        return True
