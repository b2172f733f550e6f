"""One attempt at a commit, or at one chunk of a sharded commit: exactly-once reporting
over at-least-once delivery.

An attempt takes its lease (:mod:`.lease`), gives up with an `error` report when the
commit keeps killing its worker (past ``max_attempts``: a poison commit), else prepares
the checkout, decides whether to shard (:mod:`ciq.sharding`; only a whole commit run
with the default command, and only here, between preparing and running), runs the
tests and stores what it found: a commit's report with the final compare-and-set (via
the outbox, so that Redis being away loses nothing), a chunk's result once, and the
merged report when it was the last chunk.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import redis

from ..dispatch import Message, Sender
from ..flaky import to_rerun
from ..report import Report, utcnow
from ..runner.commit import Checkout, collect, prepare, run_tests
from ..runner.deflake import deflake
from ..runner.runs import RunSpec, clean_up
from ..settings import Settings
from ..sharding.plan import ShardPlan, decide, plan_chunks
from ..store import outbox
from ..store.client import process_name
from ..store.live import LiveResults
from ..store.quarantine import muted, muted_ids
from ..store.reruns import RerunRequests
from ..store.shards import DROPPED, LAST, Shards
from ..store.store import BACKFILL, SUPERSEDED, Store
from . import hints, rerun
from .cancel import report_unstarted, stopped, to_backfill
from .lease import ChunkLease, CommitLease, Heartbeat, Lease, patiently, wait_for
from .rerun import Elsewhere
from .spec import run_spec

logger = logging.getLogger(__name__)

#: Why a fail-fast plan's chunks without a result did not run.
FAIL_FAST = "stopped at the first failing chunk (fail_fast)"
#: Why a plan whose lease lapsed has chunks without a result.
PLAN_LAPSED = "the sharded run did not finish within its time limit"


@dataclass(frozen=True)
class Attempts:
    """What one worker process needs to make attempts: its settings, the store, the
    sharding state and the sender. One per process (pool processes are forked)."""

    settings: Settings
    store: Store
    shards: Shards
    sender: Sender

    @classmethod
    def open(cls, settings: Settings, role: str = "run") -> Attempts:
        """The parts of one process; ``role`` names its Redis connections (with its host
        and pid), which is how the watcher tells that it died (:mod:`.liveness`)."""
        # A renewal every third of the lease lifetime, each given at most a quarter of
        # it (and one retry): a lease is renewed in time, or the run knows it may be lost.
        store = Store.from_url(settings.result_backend, client_name=process_name(role),
                               socket_timeout=min(10.0, settings.lease_ttl / 4))
        shards = Shards(store, settings.lease_ttl, settings.time_limit, settings.output_limit)
        return cls(settings, store, shards, Sender.for_store(settings, store))

    def rerun(self, repo: str, sha: str, branch: str | None, run_id: str,
              worker: str) -> str:
        """Make the reruns of failing tests that run ``run_id`` asked another worker for
        (:mod:`.rerun`), if it still waits for them."""
        return rerun.take(self.settings, self.store, repo, sha, branch, run_id, worker)

    def run(self, repo: str, sha: str, branch: str | None, worker: str,
            chunk: int | None = None) -> str:
        """Make one attempt at the commit (or at its chunk ``chunk``) and store what it
        found. Returns what happened, in a few words for Celery's log and Flower: the
        status stored, or why nothing was (already reported, a live run holds it)."""
        run_id = uuid.uuid4().hex
        lease: Lease
        if chunk is None:
            lease = CommitLease(self.store, repo, sha, run_id, self.settings.lease_ttl, worker,
                                branch=branch)
        else:
            lease = ChunkLease(self.shards, repo, sha, run_id, chunk)
        got = patiently(f"run {run_id}", lambda: wait_for(lease, self.settings.lease_ttl))
        if got == -1 and chunk is None:
            logger.info("run %s: %s already reported; dropping this copy", run_id, sha[:12])
            return "already reported"
        if chunk is None and got == SUPERSEDED:  # ciq.supersede: reported, not started
            return report_unstarted(self.store, lease, branch, worker, self.settings.data_dir)
        if chunk is None and got == BACKFILL:
            return to_backfill(self.sender, lease, branch)
        if got <= 0:
            logger.info("run %s: %s is done or being run elsewhere; standing down", run_id,
                        lease.what)
            return "stood down"
        attempt = _Attempt(self, lease, branch, worker, got)
        try:
            return attempt.make()
        finally:
            attempt.close()


class _Attempt:
    """One attempt, from its lease taken to its lease released."""

    def __init__(self, attempts: Attempts, lease: Lease, branch: str | None, worker: str,
                 number: int) -> None:
        self.a, self.lease, self.branch, self.worker = attempts, lease, branch, worker
        self.number = number
        self.repo, self.sha, self.run_id = lease.repo, lease.sha, lease.run_id
        self.tag = f"run {self.run_id}"
        self.spec: RunSpec | None = None
        #: The sharding plan this attempt runs a chunk of (its own, once it shards).
        self.plan: ShardPlan | None = None
        #: The commit's lease, kept to release it when the attempt moved to chunk 0.
        self.commit_lease: Lease | None = None

    def make(self) -> str:
        a, sha = self.a, self.sha
        shards = a.shards
        if self.lease.chunk is None:
            if patiently(self.tag, lambda: shards.plan(self.repo, sha)):
                # The commit's lease lapsed under a plan: its chunks did not all finish in
                # the time limit.
                logger.warning("%s: the sharded run of %s outlived its time; reporting what "
                               "its chunks reported", self.tag, sha[:12])
                merged = shards.finish(self.repo, sha, lost_reason=PLAN_LAPSED)
                return f"merged late: {merged.status}" if merged else "already reported"
        else:
            self.plan = patiently(self.tag, lambda: shards.plan(self.repo, sha))
            if self.plan is None or self.lease.chunk >= len(self.plan.chunks):
                return "stood down"
        if self.number > a.settings.max_attempts and self._poisoned():
            report = self._gave_up()
        else:
            heartbeat = Heartbeat(lambda: self.lease, self.tag, a.settings.lease_ttl)
            self.spec = replace(self._spec(), cancelled=heartbeat.stopped,
                                live=LiveResults(a.store, self.repo, self.sha, self.run_id))
            with heartbeat:
                report = self._guarded(self.spec)
            if heartbeat.is_lost():  # a stale run: another may hold the commit now
                logger.warning("%s: lost the lease of %s; dropping its report (%s)",
                               self.tag, self.lease.what, report.status)
                return "dropped: lease lost"
            if heartbeat.stopped_superseded:  # stopped by a newer commit: what it had
                report = stopped(a.store, report, self.tag)
        return self._store(report)

    def _spec(self) -> RunSpec:
        spec = run_spec(self.a.settings, self.a.store, self.repo, self.sha, self.branch,
                        self.run_id, self.worker, self.number, self.tag)
        if self.lease.chunk is not None:  # a chunk runs as its plan cut it
            return spec
        return replace(spec, order_hints=hints.gather(self.a.store, self.a.shards, self.repo,
                                                      self.sha, self.branch, self.tag))

    def _guarded(self, spec: RunSpec) -> Report:
        try:
            return self._run(spec)
        except Exception as exc:  # a ciq bug must not loop the commit forever
            logger.exception("%s: internal error on %s", self.tag, self.sha[:12])
            return Report(
                repo=self.repo, commit=self.sha, branch=self.branch, status="error",
                worker=self.worker, attempts=self.number, run_id=self.run_id,
                finished_at=utcnow(), message=f"ciq internal error: {exc!r}",
            )  # fmt: skip

    def _run(self, spec: RunSpec) -> Report:
        with prepare(spec) as ready:
            if isinstance(ready, Report):
                return ready
            if self.plan is not None:
                assert self.lease.chunk is not None
                report = run_tests(ready, self.plan.chunks[self.lease.chunk])
            else:
                report = run_tests(ready, self._shard(ready))
            if not to_rerun(report):  # most runs: no quarantine to read, nothing to ask
                return report
            # A chunk's failing tests are rerun by their chunk (in order: after the
            # tests before them in that chunk, as they ran in its process).
            elsewhere = Elsewhere(RerunRequests(self.a.store), self.a.sender, self.repo,
                                  self.sha, self.branch, self.run_id, self.worker,
                                  self.a.settings.lease_ttl, spec.cancelled or _never,
                                  self.lease.chunk)
            return deflake(ready, report, muted_ids(self.a.store, self.repo, self.tag),
                           elsewhere)

    # -- sharding -----------------------------------------------------------------------

    def _shard(self, ready: Checkout) -> list[str] | None:
        """Decide whether to shard this commit and, if so, plan it and take chunk 0: the
        test ids this run goes on to run (its own chunk), or None to run them all."""
        if ready.custom_command:
            return None  # only the default command can be given test ids
        a = self.a
        config = ready.config
        mode = (config.shard if config and config.shard else None) or a.settings.shard
        if mode == "never":
            return None
        try:
            queue = a.sender.queue_for(self.repo)
            processes = a.shards.processes(queue)
            if mode == "auto" and processes < 2:
                return None  # the usual case on one worker: no need for the durations
            durations = a.shards.durations(self.repo)
        except redis.RedisError as exc:  # Redis away: run it whole rather than wait
            logger.warning("%s: cannot plan a sharded run (%s); running it whole", self.tag,
                           exc)
            return None
        if not decide(mode, durations, processes, a.settings.shard_min_seconds):
            return None
        ids = collect(ready)
        if not ids or len(ids) < 2:
            return None
        chunks = plan_chunks(ids, durations, max(processes, 2), a.settings.shard_min_chunk,
                             likely=ready.likely)
        if len(chunks) < 2:
            return None
        plan = ShardPlan(self.repo, self.sha, self.branch, chunks, ready.head().to_dict(),
                         bool(config and config.fail_fast), queue)
        # Largest first on the queue's right end: chunk 1 is the next one taken.
        messages = [a.sender.chunk(self.repo, self.sha, self.branch, i, queue)
                    for i in range(len(chunks) - 1, 0, -1)]
        try:
            created = a.sender.along(messages, self._plan_step(plan))
        except redis.RedisError as exc:  # run it whole; chunks queued anyway only repeat it
            logger.warning("%s: cannot store the plan (%s); running it whole", self.tag, exc)
            return None
        if not created:
            return None  # lost the lease meanwhile: the report will be dropped anyway
        self.plan = plan
        try:
            a.shards.hold_first(self.repo, self.sha, self.run_id)
        except redis.RedisError as exc:  # then only its expiry frees chunk 0 if we die
            logger.warning("%s: could not name the holder of chunk 1: %s", self.tag, exc)
        self.commit_lease, self.lease = self.lease, ChunkLease(
            a.shards, self.repo, self.sha, self.run_id, 0)
        logger.info("%s: %s sharded into %d chunks for %d processes", self.tag, self.sha[:12],
                    len(chunks), processes)
        return chunks[0]

    def _plan_step(self, plan: ShardPlan) -> Callable[[list[Message]], bool]:
        def step(inline: list[Message]) -> bool:
            return self.a.shards.create(plan, self.run_id, [m.body for m in inline])

        return step

    # -- storing what it found ----------------------------------------------------------

    def _poisoned(self) -> bool:
        """Whether to give up: ``max_attempts`` runs ended with their worker process
        dying, or (a bound for deaths nobody saw, such as hosts that vanished) three
        times as many runs were made."""
        s = self.a.settings
        return self._deaths() >= s.max_attempts or self.number > 3 * s.max_attempts

    def _deaths(self) -> int:
        store, chunk = self.a.store, self.lease.chunk
        return patiently(self.tag, lambda: store.deaths(self.repo, self.sha, chunk))

    def _gave_up(self) -> Report:
        """The `error` report of a commit (or chunk) whose runs kept killing their worker."""
        what = f"chunk {self.lease.chunk + 1}: " if self.lease.chunk is not None else ""
        attempts = self.number - 1
        deaths = min(self._deaths(), attempts)
        why = (f"gave up after {attempts} attempts: every run ended with its worker process "
               "dying (does a test kill its parent process?)") if deaths >= attempts else (
               f"gave up after {attempts} attempts, {deaths} of them ending with their worker "
               "process dying; the others lost their lease (worker hosts lost, or Redis "
               "unreachable for longer than CIQ_LEASE_TTL)")
        return Report(
            repo=self.repo, commit=self.sha, branch=self.branch, status="error",
            worker=self.worker, attempts=attempts, run_id=self.run_id, started_at=utcnow(),
            finished_at=utcnow(),
            message=f"{what}{why}",
        )  # fmt: skip

    def _store(self, report: Report) -> str:
        report = muted(self.a.store, report)  # quarantined tests' failures decide nothing
        if self.lease.chunk is not None:
            return self._store_chunk(report)
        a, sha = self.a, self.sha
        saved = outbox.save(a.settings.data_dir, report)
        if not patiently(self.tag, lambda: outbox.deliver(a.store, saved, report)):
            logger.warning("%s: %s was reported meanwhile, or another run holds it; "
                           "dropping this report", self.tag, sha[:12])
            return "dropped: reported meanwhile"
        logger.info("%s: %s %s (%d tests, %.2fs)", self.tag, sha[:12], report.status,
                    report.summary.total, report.duration)
        try:
            a.shards.record_durations(report)
        except redis.RedisError as exc:  # they only help the next plan
            logger.warning("%s: could not keep test durations: %s", self.tag, exc)
        return report.status

    def _store_chunk(self, report: Report) -> str:
        index, plan = self.lease.chunk, self.plan
        assert index is not None and plan is not None
        merged = patiently(self.tag, lambda: store_chunk(self.a.shards, plan, index, report,
                                                         self.run_id))
        logger.info("%s: chunk %d of %s %s (%d tests, %.2fs)%s", self.tag, index + 1,
                    self.sha[:12], report.status, report.summary.total, report.duration,
                    f"; {self.sha[:12]} {merged.status}" if merged else "")
        if self.commit_lease is not None:  # this run planned the commit
            return f"sharded; merged: {merged.status}" if merged else "sharded; chunk 1 done"
        return f"chunk {index + 1}; merged: {merged.status}" if merged else \
            f"chunk {index + 1} done"

    def close(self) -> None:
        for lease in (self.lease, self.commit_lease):
            if lease is None:
                continue
            try:
                lease.release()
            except redis.RedisError as exc:  # it expires by itself
                logger.warning("%s: could not release the lease of %s: %s", self.tag,
                               lease.what, exc)
        if self.spec is not None:
            clean_up(self.spec.data_dir, self.run_id, self.repo)


def _never() -> bool:
    return False


def store_chunk(shards: Shards, plan: ShardPlan, index: int, report: Report,
                run_id: str) -> Report | None:
    """Store the report of chunk ``index`` of ``plan`` (made by run ``run_id``); the
    commit's report when this stored it too (the last chunk, or the first failure of a
    fail-fast plan)."""
    got = shards.done(plan.repo, plan.sha, index, report, run_id)
    if got == DROPPED:
        logger.info("chunk %d of %s: a result is there already; dropping this one",
                    index + 1, plan.sha[:12])
        return None
    if got == LAST:
        return shards.finish(plan.repo, plan.sha)
    if plan.fail_fast and report.status != "passed":
        return shards.finish(plan.repo, plan.sha, FAIL_FAST)
    return None

