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
from .sharding import Plan, Shards, chunk_plan, decide
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
    """Renews a lease every third of its lifetime until stopped. What it renews can
    change mid-run (:meth:`retarget`): a run that shards hands the commit's lease to the
    plan and goes on under the lease of its own chunk."""

    def __init__(self, renew: Callable[[], bool], what: str, ttl: float) -> None:
        self._renew = renew
        self._what = what
        self._ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ciq-heartbeat", daemon=True)
        self.lost = False

    def retarget(self, renew: Callable[[], bool], what: str) -> None:
        self._renew, self._what = renew, what

    def _beat(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                if not self._renew():
                    self.lost = True
                    logger.error("%s: lease lost; a late report will be dropped", self._what)
            except Exception as exc:  # Redis away: keep trying, the lease may survive
                logger.warning("%s: cannot renew the lease: %s", self._what, exc)

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


def _run_plan(settings: Settings, store: Store, repo: str, sha: str, branch: str | None,
              run_id: str, worker: str, attempt: int,
              only: tuple[str, ...] | None = None) -> RunPlan:
    stored = patiently(f"run {run_id}", lambda: store.repo_config(repo))
    operator = RepoConfig.parse(stored[1], stored[0]) if stored else None
    return RunPlan(
        repo=repo, sha=sha, branch=branch, run_id=run_id, worker=worker,
        attempts=attempt, data_dir=settings.data_dir, time_limit=settings.time_limit,
        output_limit=settings.output_limit, min_free_bytes=settings.min_free_mb << 20,
        run_as=settings.run_as, operator=operator, env_root=settings.env_root,
        env_cache_size=settings.env_cache_size, only=only,
    )  # fmt: skip


def _gave_up(repo: str, sha: str, branch: str | None, worker: str, run_id: str,
             attempts: int, what: str) -> Report:
    """The `error` report of a commit (or chunk) whose runs kept killing their worker."""
    return Report(
        repo=repo, commit=sha, branch=branch, status="error", worker=worker,
        attempts=attempts, run_id=run_id, started_at=utcnow(), finished_at=utcnow(),
        message=f"{what}gave up after {attempts} attempts: every run ended with its "
        "worker process dying (does a test kill its parent process?)",
    )  # fmt: skip


def _guarded(plan: RunPlan, sharding: Splitter | None = None) -> Report:
    try:
        return run_commit(plan, sharding)
    except Exception as exc:  # a ciq bug must not loop the commit forever
        logger.exception("run %s: internal error on %s", plan.run_id, plan.sha[:12])
        return Report(
            repo=plan.repo, commit=plan.sha, branch=plan.branch, status="error",
            worker=plan.worker, attempts=plan.attempts, run_id=plan.run_id,
            finished_at=utcnow(), message=f"ciq internal error: {exc!r}",
        )  # fmt: skip


class Splitter:
    """The :class:`~ciq.runner.Sharding` of one run: decides with what Redis knows
    (durations, live worker processes, settings), stores the plan, and moves the run's
    heartbeat from the commit's lease to its own chunk's."""

    def __init__(self, shards: Shards, settings: Settings, plan: RunPlan, queue: str,
                 heartbeat: Heartbeat, send: Callable[[str, str], None]) -> None:
        self.shards, self.settings, self.run, self.queue = shards, settings, plan, queue
        self.heartbeat, self.send = heartbeat, send
        self.planned = False
        self._durations: dict[str, float] = {}
        self._processes = 0
        self._fail_fast = False

    def wanted(self, config: RepoConfig | None) -> bool:
        mode = (config.shard if config and config.shard else None) or self.settings.shard
        if mode == "never":
            return False
        self._fail_fast = bool(config and config.fail_fast)
        try:
            self._processes = self.shards.processes(self.queue)
            if mode == "auto" and self._processes < 2:
                return False  # the usual case on one worker: no need for the durations
            self._durations = self.shards.durations(self.run.repo)
        except redis.RedisError as exc:  # Redis away: run it whole rather than wait
            logger.warning("run %s: cannot plan a sharded run (%s); running it whole",
                           self.run.run_id, exc)
            return False
        return decide(mode, self._durations, self._processes, self.settings.shard_min_seconds)

    def split(self, ids: list[str], head: Report) -> list[str] | None:
        chunks = chunk_plan(ids, self._durations, self._processes,
                            self.settings.shard_min_chunk)
        if len(chunks) < 2:
            return None
        run = self.run
        plan = Plan(run.repo, run.sha, run.branch, chunks, head.to_dict(), self._fail_fast,
                    self.queue)
        same = self.settings.broker_url == self.settings.result_backend
        try:
            created = self.shards.create(plan, run.run_id, self.send, same)
        except redis.RedisError as exc:  # run it whole; chunks queued anyway only repeat it
            logger.warning("run %s: cannot store the plan (%s); running it whole",
                           run.run_id, exc)
            return None
        if not created:
            return None  # lost the lease meanwhile: the report will be dropped anyway
        self.heartbeat.retarget(lambda: self.shards.renew(run.repo, run.sha, 0, run.run_id),
                                f"run {run.run_id} (chunk 1 of {run.sha[:12]})")
        self.planned = True
        logger.info("run %s: %s sharded into %d chunks for %d processes", run.run_id,
                    run.sha[:12], len(chunks), self._processes)
        return chunks[0]


def execute(store: Store, settings: Settings, repo: str, sha: str, branch: str | None,
            worker: str, shards: Shards | None = None,
            send: Callable[[str, str], None] | None = None) -> str:
    """Run a commit once under its lease and store its report.

    Returns what happened, in a few words for Celery's log and Flower: the status of the
    report it stored, or why it stored none (stood down: already reported, or a live run
    holds it). With ``shards`` the run may shard (see :mod:`ciq.sharding`).
    """
    run_id = uuid.uuid4().hex
    lease_ttl, max_attempts = settings.lease_ttl, settings.max_attempts
    attempt = patiently(f"run {run_id}",
                        lambda: acquire(store, repo, sha, run_id, lease_ttl, worker))
    if attempt == -1:
        logger.info("run %s: %s already reported; dropping this copy", run_id, sha[:12])
        return "already reported"
    if attempt == 0:
        logger.info("run %s: %s is being run elsewhere; standing down", run_id, sha[:12])
        return "stood down"
    plan: RunPlan | None = None
    splitter: Splitter | None = None
    try:
        if shards is not None and patiently(f"run {run_id}", lambda: shards.plan(repo, sha)):
            # A plan whose lease lapsed: its chunks did not all finish in the time limit.
            logger.warning("run %s: the sharded run of %s outlived its time; reporting what "
                           "its chunks reported", run_id, sha[:12])
            merged = shards.finish(repo, sha, lost_reason="the sharded run did not finish "
                                   "within its time limit")
            return f"merged late: {merged.status}" if merged else "already reported"
        if attempt > max_attempts:
            report = _gave_up(repo, sha, branch, worker, run_id, attempt - 1, "")
        else:
            plan = _run_plan(settings, store, repo, sha, branch, run_id, worker, attempt)
            with Heartbeat(lambda: store.renew(repo, sha, run_id, lease_ttl),
                           f"run {run_id} ({sha[:12]})", lease_ttl) as beat:
                if shards is not None and send is not None:
                    queue = store.queue_for(repo) or settings.queue
                    splitter = Splitter(shards, settings, plan, queue, beat, send)
                report = _guarded(plan, splitter)
        if splitter is not None and splitter.planned:
            assert shards is not None
            merged = _chunk_done(shards, repo, sha, 0, report, run_id)
            return f"sharded; merged: {merged.status}" if merged else "sharded; chunk 1 done"
        saved = outbox.save(settings.data_dir, report)
        if patiently(f"run {run_id}", lambda: outbox.deliver(store, saved, report)):
            logger.info("run %s: %s %s (%d tests, %.2fs)", run_id, sha[:12], report.status,
                        report.summary.total, report.duration)
            if shards is not None:
                try:
                    shards.record_durations(report)
                except redis.RedisError as exc:  # they only help the next plan
                    logger.warning("run %s: could not keep test durations: %s", run_id, exc)
            return report.status
        logger.warning("run %s: %s was reported meanwhile; dropping this report",
                       run_id, sha[:12])
        return "dropped: reported meanwhile"
    finally:
        try:
            store.release(repo, sha, run_id)
            if splitter is not None and splitter.planned and shards is not None:
                shards.release(repo, sha, 0, run_id)
        except redis.RedisError as exc:  # it expires by itself
            logger.warning("run %s: could not release the lease: %s", run_id, exc)
        if plan is not None:
            clean_up(plan)


def _chunk_done(shards: Shards, repo: str, sha: str, index: int, report: Report,
                run_id: str) -> Report | None:
    merged = patiently(f"run {run_id}", lambda: shards.done(repo, sha, index, report, run_id))
    logger.info("run %s: chunk %d of %s %s (%d tests, %.2fs)%s", run_id, index + 1, sha[:12],
                report.status, report.summary.total, report.duration,
                f"; {sha[:12]} {merged.status}" if merged else "")
    return merged


def execute_chunk(store: Store, shards: Shards, settings: Settings, repo: str, sha: str,
                  branch: str | None, index: int, worker: str) -> str:
    """Run chunk ``index`` of a sharded commit under its own lease and store its result;
    returns what happened, in a few words (see :func:`execute`)."""
    run_id = uuid.uuid4().hex
    lease_ttl, max_attempts = settings.lease_ttl, settings.max_attempts

    def take() -> int:
        deadline = time.monotonic() + lease_ttl + 1.0
        while True:
            got = shards.take(repo, sha, index, run_id)
            if got != 0 or time.monotonic() >= deadline:
                return got
            time.sleep(LEASE_POLL)

    attempt = patiently(f"run {run_id}", take)
    if attempt <= 0:
        logger.info("run %s: chunk %d of %s is done or running elsewhere; standing down",
                    run_id, index + 1, sha[:12])
        return "stood down"
    found = patiently(f"run {run_id}", lambda: shards.plan(repo, sha))
    if found is None or index >= len(found.chunks):
        return "stood down"
    plan: RunPlan | None = None
    try:
        if attempt > max_attempts:
            report = _gave_up(repo, sha, branch, worker, run_id, attempt - 1,
                              f"chunk {index + 1}: ")
        else:
            plan = _run_plan(settings, store, repo, sha, branch, run_id, worker, attempt,
                             only=tuple(found.chunks[index]))
            with Heartbeat(lambda: shards.renew(repo, sha, index, run_id),
                           f"run {run_id} (chunk {index + 1} of {sha[:12]})", lease_ttl):
                report = _guarded(plan)
        merged = _chunk_done(shards, repo, sha, index, report, run_id)
        return f"chunk {index + 1}; merged: {merged.status}" if merged else \
            f"chunk {index + 1} done"
    finally:
        try:
            shards.release(repo, sha, index, run_id)
        except redis.RedisError as exc:
            logger.warning("run %s: could not release the chunk's lease: %s", run_id, exc)
        if plan is not None:
            clean_up(plan)
