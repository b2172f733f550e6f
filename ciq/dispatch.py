"""Handing work to the broker: the one sender of every message ciq puts there, and the
reconciler that sends again what a dead run or a dead enqueuer left behind.

Three kinds of message go out, all as Celery task messages (:mod:`ciq.message`):
a new commit's run (claimed first, see :mod:`ciq.store.claims`), the chunks of a sharded
commit, and the rerun of a commit or chunk whose run died. The :class:`Sender` is the one
place that knows where each goes (the operator may route a repository to a queue of its
own) and how: when the broker is the Redis of reports and leases, a message goes in the
same atomic step as the state change that calls for it (the claim, the plan); otherwise
it is pushed once that step is done, and a commit stays in the unsent set until then.

The sender works over any :class:`~ciq.store.scripts.Redisish` connection: redis-py in
workers and the observer, ciq's own RESP client on the push path (`ciq enqueue`), which
is why this module imports no redis-py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .gitrepo import CommitInfo
from .message import run_message
from .settings import Settings
from .store import claims
from .store.keys import task_id
from .store.scripts import Redisish, RedisPy
from .supersede import BACKFILL_PRIORITY, backfill_list

if TYPE_CHECKING:
    from .store.shards import Shards
    from .store.store import Store

logger = logging.getLogger(__name__)

#: Seconds a claimed commit may stay unsent before the reconciler sends it; far above
#: the few milliseconds between a claim and its send.
UNSENT_AFTER = 30.0
#: Seconds a sent commit may go untaken, off its queue, before it is sent again: far
#: above the milliseconds between a worker taking a message and the run's lease.
RESEND_AFTER = 10.0
#: The task id in a message (kombu's envelope, as :mod:`ciq.message` writes it).
_TASK_ID = re.compile(r'"id": "([0-9a-f-]{36})"')


@dataclass(frozen=True)
class Message:
    """One task message for the broker's list ``queue``.

    kombu's Redis transport pushes on the left (LPUSH) and workers pop from the right
    (BRPOP). A ``first`` message is pushed on the right, so it is the next one taken:
    chunks of a commit already started, and reruns of a commit whose run died, which
    would otherwise wait behind a queue of new commits (with 26 queued, a rerun started
    38 s after its worker died).
    """

    queue: str
    body: str
    first: bool = False


class Sender:
    """Puts ciq's messages on the broker (see the module's docstring)."""

    def __init__(self, backend: Redisish, broker: Redisish, default_queue: str) -> None:
        #: The Redis of reports and leases, where the operator's routes are.
        self.backend = backend
        self.broker = broker
        #: The queue of repositories the operator routes nowhere else (CIQ_QUEUE).
        self.default_queue = default_queue
        #: The broker is the backend's Redis: state change and message are one step.
        self.atomic = broker is backend

    @classmethod
    def for_store(cls, settings: Settings, store: Store) -> Sender:
        """The sender of a process that holds a :class:`~ciq.store.store.Store`."""
        if settings.broker_is_backend:
            return cls(store.conn, store.conn, settings.queue)
        # redis-py, imported here only: the push path takes its fast path (ciq's own
        # client) only when broker and backend are one Redis, so it never comes here.
        from .store.client import connect

        return cls(store.conn, RedisPy(connect(settings.broker_url)), settings.queue)

    def queue_for(self, repo: str) -> str:
        """Where the runs of ``repo`` go: the operator's route, read now, or the default."""
        return claims.routed_queue(self.backend, repo) or self.default_queue

    def run(self, repo: str, sha: str, branch: str | None, queue: str | None = None,
            first: bool = False) -> Message:
        """The message of a commit's run."""
        queue = queue or self.queue_for(repo)
        return Message(queue, run_message(repo, sha, branch, queue), first)

    def chunk(self, repo: str, sha: str, branch: str | None, index: int,
              queue: str) -> Message:
        """The message of chunk ``index`` of a sharded commit: first in line, since its
        commit has started."""
        return Message(queue, run_message(repo, sha, branch, queue, index), first=True)

    def backfill(self, repo: str, sha: str, branch: str | None,
                 queue: str | None = None) -> Message:
        """The message of a commit's run on its queue's backfill list, which workers
        take only when nothing else waits on the queue (:mod:`ciq.supersede`)."""
        queue = queue or self.queue_for(repo)
        return Message(backfill_list(queue),
                       run_message(repo, sha, branch, queue, priority=BACKFILL_PRIORITY))

    def to_backfill(self, repo: str, sha: str, branch: str | None) -> Message:
        """Move a commit that a newer commit of its branch waits behind to the backfill.
        It is marked sent there first: if this process dies before the push, the
        reconciler finds it on no list and sends it again; nothing is lost."""
        message = self.backfill(repo, sha, branch)
        claims.mark_sent(self.backend, repo, sha, message.queue)
        self.push([message])
        return message

    def push(self, messages: list[Message]) -> None:
        for m in messages:
            self.broker.call("RPUSH" if m.first else "LPUSH", m.queue, m.body)

    def along(self, messages: list[Message], step: Callable[[list[Message]], bool]) -> bool:
        """Run a state change that calls for ``messages``: ``step(inline)`` must push the
        ``inline`` messages in its own atomic step, and returns whether it took place.
        When the broker is elsewhere it is given none, and they are pushed after it."""
        if self.atomic:
            return step(messages)
        if not step([]):
            return False
        self.push(messages)
        return True

    def submit(self, repo: str, sha: str, branch: str | None,
               info: CommitInfo | None = None) -> bool:
        """Enqueue one commit unless it was enqueued before. True if this call did."""
        meta = {"subject": info.subject, "author": info.author} if info else {}
        message = self.run(repo, sha, branch)

        def claim(inline: list[Message]) -> bool:
            pushed = (inline[0].queue, inline[0].body) if inline else None
            return claims.claim(self.backend, repo, sha, branch, meta, pushed)

        if not self.along([message], claim):
            return False
        if not self.atomic:
            claims.mark_sent(self.backend, repo, sha, message.queue)
        logger.info("dispatch: enqueued %s of %s (%s)", sha[:12], repo, branch or "-")
        return True

    def queued_ids(self, queue: str, page: int = 1000) -> set[str]:
        """The task ids of the messages waiting on ``queue``'s list, read a page at a time
        (the list may move meanwhile: an id missed only costs a harmless extra copy)."""
        found: set[str] = set()
        start = 0
        while True:
            chunk = self.broker.call("LRANGE", queue, start, start + page - 1) or []
            for raw in chunk:
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                found.update(_TASK_ID.findall(text))
            if len(chunk) < page:
                return found
            start += page


def reconcile(store: Store, sender: Sender, unsent_after: float = UNSENT_AFTER,
              shards: Shards | None = None, resend_after: float = RESEND_AFTER) -> int:
    """One pass of the reconciler; returns how many commits (and chunks) it sent again.

    The Redis transport restores a dead worker's unacknowledged message only after its
    visibility timeout (an hour by default) on a sweep that runs about every 100 s, so
    ciq does not wait for it. A commit that started (took a lease) and has neither a
    final report nor a live lease has lost its run: it is sent again at once, first in
    line. A commit claimed but never sent (its enqueuer died in between) is sent too, and
    so is one sent ``resend_after`` seconds ago or more that no run took and that is no
    longer on its queue (a worker died between taking the message and the lease, or the
    message left the broker's list some other way). Extra copies are harmless: the lease
    and the final compare-and-set make them stand down.
    """
    for _repo, sha, _branch in store.release_orphans():
        logger.warning("reconciler: the run of %s died; enqueueing it again", sha[:12])
    count = 0
    for repo, sha, branch in store.unsent(unsent_after):
        message = sender.run(repo, sha, branch, first=True)  # routed as it is now
        if store.mark_sent(repo, sha, message.queue):  # not sent by another pass meanwhile
            logger.info("reconciler: sending %s of %s", sha[:12], repo)
            sender.push([message])
            count += 1
    count += _resend_untaken(store, sender, resend_after)
    if shards is not None:
        lists: dict[str, set[str]] = {}

        def queued(queue: str, tid: str) -> bool:
            if queue not in lists:
                lists[queue] = sender.queued_ids(queue)
            return tid in lists[queue]

        count += shards.reconcile(
            lambda repo, sha, branch, index, queue: sender.push(
                [sender.chunk(repo, sha, branch, index, queue)]), queued, resend_after)
    return count


def _resend_untaken(store: Store, sender: Sender, older_than: float) -> int:
    """Send again the commits sent long ago that no run took and no queue holds."""
    waiting = store.sent_before(older_than)
    queued: dict[str, set[str]] = {}
    count = 0
    for repo, sha, branch, queue in waiting:
        if queue not in queued:
            queued[queue] = sender.queued_ids(queue) if queue else set()
        if task_id(repo, sha) in queued[queue]:
            store.still_queued(repo, sha)  # its queue explains the wait
            continue
        logger.warning("reconciler: %s of %s was sent %.0f s ago or more, no run took it "
                       "and it is not on queue %r; sending it again", sha[:12], repo,
                       older_than, queue)
        # A commit moved to the backfill goes back there (ciq.supersede), others first.
        message = sender.backfill(repo, sha, branch) if queue.endswith(
            backfill_list("")) else sender.run(repo, sha, branch, first=True)
        sender.push([message])
        store.mark_sent(repo, sha, message.queue)
        count += 1
    return count
