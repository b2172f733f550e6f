"""What a ciq worker runs besides tasks: the reconciler and the stale-run sweeper.

Both run in a thread of the worker's main process (a Celery bootstep), not in the pool,
so they keep going while every pool process is busy with a long run.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import bootsteps

from . import outbox
from .dispatch import make_sender
from .reconciler import reconcile
from .runner import sweep_stale_runs
from .store import Store

logger = logging.getLogger(__name__)


class Housekeeping(bootsteps.StartStopStep):
    """Every ``reconcile_interval`` seconds: sweep this host's dead runs (and free their
    leases), deliver reports left in the outbox, and (in one worker of the cluster at a
    time) hand commits whose run died back to the queue."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        settings = worker.app.ciq_settings
        store = Store.from_url(settings.result_backend)
        send = make_sender(settings, store, urgent=True)  # reruns go first
        self._thread = threading.Thread(
            target=self._loop, args=(settings, store, send), name="ciq-housekeeping",
            daemon=True,
        )  # fmt: skip
        self._thread.start()

    def _loop(self, settings: Any, store: Store, send: Any) -> None:
        while True:
            try:
                for dead in sweep_stale_runs(settings.data_dir, os.uname().nodename):
                    # Its process is gone for sure: free the lease now (only if that run
                    # still holds it) so the rerun need not wait for the expiry.
                    store.release(dead.repo, dead.sha, dead.run_id)
                outbox.deliver_pending(store, settings.data_dir)
                if store.try_lock("reconciler", settings.reconcile_interval * 0.9):
                    reconcile(store, send)
            except Exception as exc:  # Redis away, disk full...: log, try next time
                logger.warning("housekeeping: pass failed: %s", exc)
            if self._stop.wait(settings.reconcile_interval):
                return

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
