"""Where a run holds its lease: on a whole commit or on one chunk of a sharded commit.

A run of a commit happens only under its lease (set-if-absent with expiry, renewed by a
heartbeat); a delivered copy that finds the lease held waits up to one lease lifetime —
long enough for a dead holder's lease to lapse — and otherwise stands down, because the
holder is alive. Attempts are counted when a lease is taken. A chunk's lease follows the
same rules under its own key (:mod:`ciq.store.shards`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis

from ..store.shards import Shards
from ..store.store import RENEWED_SUPERSEDED, Store

logger = logging.getLogger(__name__)

#: Seconds between two looks at a lease held by someone else.
LEASE_POLL = 0.2
#: Longest pause (seconds) between two tries to reach Redis when it is away.
MAX_BACKOFF = 5.0

T = TypeVar("T")


def patiently(what: str, call: Callable[[], T]) -> T:
    """Call ``call`` until Redis answers: a run must outlive a Redis restart, not fail
    (a failed task is acknowledged, and its commit would wait for the reconciler)."""
    delay = 0.2
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("%s: Redis is away (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)


class Lease(Protocol):
    """A run's hold on what it runs."""

    @property
    def repo(self) -> str: ...

    @property
    def sha(self) -> str: ...

    @property
    def run_id(self) -> str: ...

    @property
    def what(self) -> str:
        """What it holds, for logs: "abc123def456" or "chunk 2 of abc123def456"."""

    @property
    def chunk(self) -> int | None:
        """The chunk's index; None for a whole commit."""

    def take(self) -> int:
        """The attempt number; 0 when a live run holds it; -1 when there is nothing to
        do (reported, or the chunk is done)."""

    def renew(self) -> int:
        """Extend it; 0 (false) when this run no longer holds it, ``RENEWED_SUPERSEDED``
        when it was extended but a newer commit of the branch superseded this one."""

    def release(self) -> None:
        """Let it go (only if this run still holds it)."""


@dataclass
class CommitLease:
    store: Store
    repo: str
    sha: str
    run_id: str
    ttl: float
    worker: str
    chunk: None = None
    #: The commit's branch: what a newer commit of it does is decided on taking it.
    branch: str | None = None

    @property
    def what(self) -> str:
        return self.sha[:12]

    def take(self) -> int:
        return self.store.acquire(self.repo, self.sha, self.run_id, self.ttl, self.worker,
                                  self.branch)

    def renew(self) -> int:
        return self.store.renew(self.repo, self.sha, self.run_id, self.ttl)

    def release(self) -> None:
        self.store.release(self.repo, self.sha, self.run_id)


@dataclass
class ChunkLease:
    shards: Shards
    repo: str
    sha: str
    run_id: str
    chunk: int

    @property
    def what(self) -> str:
        return f"chunk {self.chunk + 1} of {self.sha[:12]}"

    def take(self) -> int:
        return self.shards.take(self.repo, self.sha, self.chunk, self.run_id)

    def renew(self) -> bool:
        return self.shards.renew(self.repo, self.sha, self.chunk, self.run_id)

    def release(self) -> None:
        self.shards.release(self.repo, self.sha, self.chunk, self.run_id)


def wait_for(lease: Lease, ttl: float) -> int:
    """Take the lease, waiting up to one lease lifetime for a holder to go; what
    :meth:`Lease.take` says then."""
    deadline = time.monotonic() + ttl + 1.0
    while True:
        got = lease.take()
        if got != 0 or time.monotonic() >= deadline:
            return got
        time.sleep(LEASE_POLL)


class Heartbeat:
    """Renews the lease that ``current()`` gives every third of its lifetime until
    stopped. What it renews may change mid-run: a run that shards hands the commit's
    lease to the plan and goes on under the lease of its own chunk."""

    def __init__(self, current: Callable[[], Lease], what: str, ttl: float) -> None:
        self._current = current
        self._what = what
        self._ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ciq-heartbeat", daemon=True)
        #: Another run holds the lease now (a renewal said so).
        self.lost = False
        #: A newer commit of the branch superseded this one (a renewal said so: the mark
        #: is in Redis, see ``lua/renew.lua``); the run stops and reports `cancelled`.
        self.superseded = False
        #: The run was told to stop because it was superseded (a run whose tests ended
        #: before they were told keeps its own verdict).
        self.stopped_superseded = False

    def is_lost(self) -> bool:
        """Whether this run must stop: another run holds its lease now (a commit's lease
        that expired while Redis was away is taken back when nobody else took it, see
        ``lua/renew.lua``). The run then stops its tests at once and makes no report."""
        return self.lost

    def stopped(self) -> bool:
        """Whether the run's tests must stop: its lease is lost, or it was superseded."""
        if self.lost:
            return True
        if self.superseded:
            self.stopped_superseded = True
        return self.superseded

    def _beat(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            lease = self._current()
            try:
                got = lease.renew()
                if not got:
                    self.lost = True
                    logger.error("%s (%s): lease lost; its tests stop and make no report",
                                 self._what, lease.what)
                elif got == RENEWED_SUPERSEDED and not self.superseded:
                    self.superseded = True
                    logger.info("%s (%s): superseded by a newer commit of its branch; "
                                "its tests stop", self._what, lease.what)
            except Exception as exc:  # Redis away: keep trying, the lease may survive
                logger.warning("%s (%s): cannot renew the lease: %s", self._what, lease.what,
                               exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
