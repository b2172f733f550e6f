"""What a ciq worker runs besides tasks: the reconciler, the stale-run sweeper and the
delivery of notifications.

They run in threads of the worker's main process (a Celery bootstep), not in the pool,
so they keep going while every pool process is busy with a long run, and no run waits
for a slow webhook.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import bootsteps

from . import outbox
from .delivery import Deliverer
from .dispatch import make_sender
from .reconciler import reconcile
from .runner import sweep_stale_runs
from .sharding import WORKERS, Shards
from .store import Store

logger = logging.getLogger(__name__)


class Housekeeping(bootsteps.StartStopStep):
    """Every ``reconcile_interval`` seconds: sweep this host's dead runs (and free their
    leases), deliver reports left in the outbox, and (in one worker of the cluster at a
    time) hand commits whose run died back to the queue. A second thread delivers due
    notification events (:mod:`ciq.delivery`)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._notifier: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        settings = worker.app.ciq_settings
        store = Store.from_url(settings.result_backend)
        send = make_sender(settings, store, urgent=True)  # reruns go first
        shards = Shards(store, settings.lease_ttl, settings.time_limit, settings.output_limit)
        self._thread = threading.Thread(
            target=self._loop, args=(worker, settings, store, send, shards),
            name="ciq-housekeeping", daemon=True,
        )  # fmt: skip
        self._thread.start()
        # A thread of its own: a webhook that takes CIQ_NOTIFY_TIMEOUT to fail must not
        # hold up the reconciler.
        deliverer = Deliverer(store, settings)
        self._notifier = threading.Thread(
            target=deliverer.run, args=(self._stop, settings.reconcile_interval),
            name="ciq-notify", daemon=True,
        )  # fmt: skip
        self._notifier.start()

    def _loop(self, worker: Any, settings: Any, store: Store, send: Any,
              shards: Shards) -> None:
        queues = list(worker.app.amqp.queues.consume_from or [settings.queue])
        while True:
            try:
                # How many runs this node takes at once, for the sharding plans of every
                # worker (autoscaling changes it: read it each time).
                processes = getattr(worker.pool, "num_processes", None) or worker.concurrency
                shards.announce(worker.hostname, queues, int(processes or 1))
                for dead in sweep_stale_runs(settings.data_dir, os.uname().nodename):
                    # Its process is gone for sure: free the lease now (only if that run
                    # still holds it) so the rerun need not wait for the expiry.
                    store.release(dead.repo, dead.sha, dead.run_id)
                outbox.deliver_pending(store, settings.data_dir)
                if store.try_lock("reconciler", settings.reconcile_interval * 0.9):
                    reconcile(store, send, shards=shards)
            except Exception as exc:  # Redis away, disk full...: log, try next time
                logger.warning("housekeeping: pass failed: %s", exc)
            if self._stop.wait(settings.reconcile_interval):
                return

    def stop(self, worker: Any) -> None:
        self._stop.set()
        try:  # no longer counted by sharding plans (else for WORKER_SEEN_WITHIN more)
            Store.from_url(worker.app.ciq_settings.result_backend).client.hdel(
                WORKERS, worker.hostname)
        except Exception as exc:  # Redis away: the entry ages out by itself
            logger.warning("housekeeping: could not sign off: %s", exc)
        for thread in (self._thread, self._notifier):
            if thread is not None:
                thread.join(timeout=5)
