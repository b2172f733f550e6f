"""Exactly-once reporting over at-least-once delivery.

A run of a commit happens only under its lease (set-if-absent with expiry, renewed by a
heartbeat); a delivered copy that finds the lease held waits up to one lease lifetime —
long enough for a dead holder's lease to lapse — and otherwise stands down, because the
holder is alive. The final report is written with a compare-and-set, so a late run can
never replace it. Attempts are counted when a lease is taken; past ``max_attempts``
the commit gets an `error` report instead of another run (a poison commit).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import redis

from . import outbox
from .repoconfig import RepoConfig
from .report import Report, utcnow
from .runner import RunPlan, clean_up, run_commit
from .settings import Settings
from .store import Store

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


class Heartbeat:
    """Renews a lease every third of its lifetime until stopped."""

    def __init__(self, store: Store, repo: str, sha: str, run_id: str, ttl: float) -> None:
        self._args = (repo, sha, run_id, ttl)
        self._store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ciq-heartbeat", daemon=True)
        self.lost = False

    def _beat(self) -> None:
        repo, sha, run_id, ttl = self._args
        while not self._stop.wait(ttl / 3):
            try:
                if not self._store.renew(repo, sha, run_id, ttl):
                    self.lost = True
                    logger.error("run %s: lease of %s lost; a late report will be dropped",
                                 run_id, sha[:12])
            except Exception as exc:  # Redis away: keep trying, the lease may survive
                logger.warning("run %s: cannot renew lease of %s: %s", run_id, sha[:12], exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def acquire(store: Store, repo: str, sha: str, run_id: str, ttl: float, worker: str) -> int:
    """Take the commit's lease, waiting up to one lease lifetime for a holder to go.

    Returns the attempt number, 0 to stand down (a live run holds it), -1 if reported.
    """
    deadline = time.monotonic() + ttl + 1.0
    while True:
        got = store.acquire(repo, sha, run_id, ttl, worker)
        if got != 0 or time.monotonic() >= deadline:
            return got
        time.sleep(LEASE_POLL)


def execute(store: Store, settings: Settings, repo: str, sha: str, branch: str | None,
            worker: str) -> Report | None:
    """Run a commit once under its lease and store its report.

    Returns the report this call stored, or None when it stood down (the commit was
    already reported, or a live run holds it).
    """
    run_id = uuid.uuid4().hex
    lease_ttl, max_attempts = settings.lease_ttl, settings.max_attempts
    attempt = patiently(f"run {run_id}",
                        lambda: acquire(store, repo, sha, run_id, lease_ttl, worker))
    if attempt == -1:
        logger.info("run %s: %s already reported; dropping this copy", run_id, sha[:12])
        return None
    if attempt == 0:
        logger.info("run %s: %s is being run elsewhere; standing down", run_id, sha[:12])
        return None
    plan: RunPlan | None = None
    try:
        if attempt > max_attempts:
            report = Report(
                repo=repo, commit=sha, branch=branch, status="error", worker=worker,
                attempts=attempt - 1, run_id=run_id, started_at=utcnow(), finished_at=utcnow(),
                message=f"gave up after {attempt - 1} attempts: every run ended with its "
                "worker process dying (does a test kill its parent process?)",
            )  # fmt: skip
        else:
            stored = patiently(f"run {run_id}", lambda: store.repo_config(repo))
            operator = RepoConfig.parse(stored[1], stored[0]) if stored else None
            plan = RunPlan(
                repo=repo, sha=sha, branch=branch, run_id=run_id, worker=worker,
                attempts=attempt, data_dir=settings.data_dir, time_limit=settings.time_limit,
                output_limit=settings.output_limit, min_free_bytes=settings.min_free_mb << 20,
                run_as=settings.run_as, operator=operator, env_root=settings.env_root,
                env_cache_size=settings.env_cache_size,
            )  # fmt: skip
            with Heartbeat(store, repo, sha, run_id, lease_ttl):
                try:
                    report = run_commit(plan)
                except Exception as exc:  # a ciq bug must not loop the commit forever
                    logger.exception("run %s: internal error on %s", run_id, sha[:12])
                    report = Report(
                        repo=repo, commit=sha, branch=branch, status="error", worker=worker,
                        attempts=attempt, run_id=run_id, finished_at=utcnow(),
                        message=f"ciq internal error: {exc!r}",
                    )  # fmt: skip
        saved = outbox.save(settings.data_dir, report)
        if patiently(f"run {run_id}", lambda: outbox.deliver(store, saved, report)):
            logger.info("run %s: %s %s (%d tests, %.2fs)", run_id, sha[:12], report.status,
                        report.summary.total, report.duration)
            return report
        logger.warning("run %s: %s was reported meanwhile; dropping this report",
                       run_id, sha[:12])
        return None
    finally:
        try:
            store.release(repo, sha, run_id)
        except redis.RedisError as exc:  # it expires by itself
            logger.warning("run %s: could not release the lease: %s", run_id, exc)
        if plan is not None:
            clean_up(plan)
