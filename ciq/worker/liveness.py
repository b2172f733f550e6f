"""The watcher: frees the leases of worker processes that died and has their commits
sent again at once, instead of a lease lifetime later (see :mod:`ciq.store.liveness`).

It is a thread of each worker's main process; one of them watches at a time (the lock
names the watcher's connection, so another takes over as soon as its process dies).
Every ``liveness_interval`` the watcher compares the holders of leases with the
connections Redis has; what it frees, the reconciler sends again in the same pass.
"""

from __future__ import annotations

import logging
import threading

import redis

from ..dispatch import reconcile
from ..settings import Settings
from ..store.liveness import Liveness
from .attempt import Attempts

logger = logging.getLogger(__name__)


def resend_after(settings: Settings) -> float:
    """Seconds a sent commit may go untaken and off its queue before it is sent again:
    two lease lifetimes, far above the milliseconds between a worker taking a message
    and its run taking the lease (see :func:`ciq.dispatch.reconcile`)."""
    return 2 * settings.lease_ttl


class Watcher:
    def __init__(self, attempts: Attempts) -> None:
        self.attempts = attempts
        settings = attempts.settings
        self.interval = settings.liveness_interval
        self.liveness = Liveness(attempts.store, settings.lease_ttl)
        #: One connection of its own, held: the watcher's lock names its id. Made at the
        #: first look: a worker must start while Redis is away.
        self.client: redis.Redis | None = None
        #: Long enough to ride out a slow pass; a dead watcher is replaced at once anyway.
        self.lock_ttl = max(1.0, 10 * self.interval)

    def run(self, stop: threading.Event) -> None:
        failing = False
        while not stop.wait(self.interval):
            try:
                self.look()
                failing = False
            except Exception as exc:  # Redis away: say it once, try again next time
                if not failing:
                    logger.warning("watcher: cannot look at the leases: %s", exc)
                failing = True
        if self.client is not None:
            self.client.close()

    def look(self) -> int:
        """One look; how many leases it freed."""
        if self.client is None:
            self.client = redis.Redis(
                connection_pool=self.attempts.store.client.connection_pool,
                single_connection_client=True)
        if not self.liveness.watch(self.client, self.lock_ttl):
            return 0
        freed = self.liveness.free_dead()
        if freed:
            logger.warning("watcher: %d lease(s) held by worker processes that died: %s; "
                           "sending their work again", len(freed), ", ".join(freed))
            a = self.attempts
            reconcile(a.store, a.sender, shards=a.shards, resend_after=resend_after(a.settings))
        return len(freed)
