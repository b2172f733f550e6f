"""Handing commits to the broker, once each.

A commit is first *claimed* in Redis (atomically, with its metadata and its place in the
repository's history), then sent as a Celery message. Claiming is what makes enqueueing
idempotent: a second observer, a restarted observer or a repeated `ciq enqueue` finds
the claim and sends nothing. When the broker is the same Redis as the store (the
default), claim and message are one atomic Lua step. Otherwise the commit sits in the
store's unsent set until it is sent; if the enqueuer dies in between, a worker's
reconciler sends it.
"""

from __future__ import annotations

import logging

import redis

from .gitrepo import CommitInfo
from .keys import CHUNK_TASK, RUN_TASK
from .message import run_message
from .settings import Settings
from .store import Store, connect

__all__ = ["RUN_TASK", "Dispatcher", "RedisSender", "make_sender"]

logger = logging.getLogger(__name__)


class RedisSender:
    """Pushes run messages straight onto the broker's Redis list of a queue.

    kombu's Redis transport pushes on the left (LPUSH) and workers pop from the right
    (BRPOP). An ``urgent`` sender pushes on the right, so its message is the next one
    taken: a commit whose run died is rerun at once, not behind a queue of new commits
    (with 26 queued, a rerun otherwise started 38 s after its worker died).
    """

    def __init__(self, client: redis.Redis, queue: str, urgent: bool = False) -> None:
        self.client = client
        #: The queue of repositories the operator routes nowhere else (CIQ_QUEUE).
        self.queue = queue
        self.urgent = urgent

    def message(self, repo: str, sha: str, branch: str | None, queue: str) -> str:
        return run_message(repo, sha, branch, queue, RUN_TASK)

    def __call__(self, repo: str, sha: str, branch: str | None,
                 queue: str | None = None) -> None:
        queue = queue or self.queue
        push = self.client.rpush if self.urgent else self.client.lpush
        push(queue, self.message(repo, sha, branch, queue))

    def chunk(self, repo: str, sha: str, branch: str | None, index: int, queue: str) -> None:
        """Queue chunk ``index`` of a sharded commit again, first in line."""
        self.client.rpush(queue, run_message(repo, sha, branch, queue, CHUNK_TASK, index))


def make_sender(settings: Settings, store: Store, urgent: bool = False) -> RedisSender:
    """The sender for these settings; ``urgent`` ones jump the queue (see RedisSender).
    Every ciq broker URL, Sentinel's too, is a Redis that :func:`~ciq.store.connect` opens
    (a Sentinel client finds the master again after a failover)."""
    if settings.broker_url == settings.result_backend:
        return RedisSender(store.client, settings.queue, urgent)
    return RedisSender(connect(settings.broker_url), settings.queue, urgent)


class Dispatcher:
    def __init__(self, store: Store, send: RedisSender) -> None:
        self.store = store
        self.send = send

    @classmethod
    def for_settings(cls, settings: Settings, store: Store) -> Dispatcher:
        return cls(store, make_sender(settings, store))

    def submit(self, repo: str, sha: str, branch: str | None, info: CommitInfo | None = None
               ) -> bool:
        """Enqueue one commit unless it was enqueued before. True if this call did."""
        meta = {"subject": info.subject, "author": info.author} if info else {}
        queue = self.store.queue_for(repo) or self.send.queue
        if self.send.client is self.store.client:
            push = (queue, self.send.message(repo, sha, branch, queue))
            if not self.store.claim(repo, sha, branch, meta, push=push):
                return False
        else:
            if not self.store.claim(repo, sha, branch, meta):
                return False
            self.send(repo, sha, branch, queue)
            self.store.mark_sent(repo, sha)
        logger.info("dispatch: enqueued %s of %s (%s)", sha[:12], repo, branch or "-")
        return True
