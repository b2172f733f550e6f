"""Sharded runs in Redis: plans, chunk leases, chunk results, the merge, durations.

A run that decides to shard (:mod:`ciq.worker.attempt`) writes the commit's *plan* and
queues its other chunks in one Lua step, then runs the first chunk itself in the
checkout and environment it already has. Every chunk runs under a lease of its own,
with the same rules as whole-commit runs: a chunk is taken at most once at a time, its
result is written once (set-if-absent), a chunk whose worker died is queued again by the
reconciler, and one that kills its worker ``max_attempts`` times is an ``error``. The
run that writes the last result merges them (:func:`ciq.sharding.merge.merge`) and
stores the commit's report with the usual compare-and-set; if it dies in between, the
reconciler merges. While the chunks run, the commit's lease is held by the plan
(``shards:<run id>``) and extended each time a chunk starts, so the commit is not
queued again meanwhile. The keys are in :mod:`.keys`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..report import Report, utcnow
from ..sharding.merge import ChunkResult, merge
from ..sharding.plan import ShardPlan
from . import keys
from .quarantine import muted
from .scripts import (
    CHUNK_DONE,
    CHUNK_ORPHAN,
    CLEAN_PLAN,
    DURATIONS,
    HOLD,
    PLAN,
    RELEASE,
    RENEW,
    TAKE,
    register,
)
from .store import Store

logger = logging.getLogger(__name__)

#: Seconds after which a worker that stopped writing its entry in ciq:workers is gone.
WORKER_SEEN_WITHIN = 15.0
#: Durations kept per repository beyond its last report's tests, before a rewrite.
DURATIONS_SLACK = 200

#: What :meth:`Shards.done` says of a chunk's result.
DROPPED, STORED, LAST = 0, 1, 2


class Shards:
    """The sharding state of ciq's Redis (one per process, over a :class:`Store`)."""

    def __init__(self, store: Store, lease_ttl: float, time_limit: float,
                 output_limit: int) -> None:
        self.store = store
        self.client: Any = store.client
        self.lease_ttl = lease_ttl
        #: How long the plan holds the commit after its last chunk started: a chunk's
        #: own time limit, and a minute to write its result.
        self.commit_ttl = time_limit + 60
        self.output_limit = output_limit
        client = self.client
        self._plan = register(client, PLAN)
        self._take = register(client, TAKE)
        self._done = register(client, CHUNK_DONE)
        self._orphan = register(client, CHUNK_ORPHAN)
        self._renew = register(client, RENEW)
        self._release = register(client, RELEASE)
        self._clean = register(client, CLEAN_PLAN)
        self._durations = register(client, DURATIONS)
        self._hold = register(client, HOLD)

    # -- what plans are made from -------------------------------------------------------

    def durations(self, repo: str) -> dict[str, float]:
        raw = self.client.hgetall(keys.durations(keys.repo_id(repo)))
        out = {}
        for k, v in raw.items():
            try:
                out[k] = float(v)
            except ValueError:
                continue
        return out

    def record_durations(self, report: Report) -> None:
        """Keep the tests' durations of a final report for the next plan."""
        timed = {t.id: t.duration for t in report.tests if t.outcome != "skipped"}
        if not timed:
            return
        flat = [x for k, v in timed.items() for x in (k, repr(v))]
        self._durations(keys=[keys.durations(keys.repo_id(report.repo))],
                        args=[len(timed) + DURATIONS_SLACK, *flat])

    def processes(self, queue: str, now: float | None = None) -> int:
        """Worker processes seen lately that take runs from ``queue``."""
        now = time.time() if now is None else now
        total = 0
        for raw in self.client.hvals(keys.WORKERS):
            try:
                entry = json.loads(raw)
                if now - float(entry["seen"]) <= WORKER_SEEN_WITHIN and queue in entry["queues"]:
                    total += int(entry["processes"])
            except (ValueError, KeyError, TypeError):
                continue
        return total

    def announce(self, node: str, queues: Iterable[str], processes: int) -> None:
        """Say that worker ``node`` takes runs from ``queues`` with ``processes`` at once
        (the worker's housekeeping calls it on every pass)."""
        self.client.hset(keys.WORKERS, node, json.dumps(
            {"queues": sorted(queues), "processes": processes, "seen": time.time()}))

    def sign_off(self, node: str) -> None:
        """Worker ``node`` stops: no longer counted by plans (else for WORKER_SEEN_WITHIN)."""
        self.client.hdel(keys.WORKERS, node)

    # -- a plan -------------------------------------------------------------------------

    def create(self, plan: ShardPlan, run_id: str, messages: list[str]) -> bool:
        """Store the plan, hand the commit's lease to it and take chunk 0 for this run;
        ``messages`` (of the other chunks, for plan.queue) are pushed in the same step.
        False when the run lost its lease meanwhile."""
        rid = keys.repo_id(plan.repo)
        meta = json.dumps({"repo": plan.repo, "branch": plan.branch, "queue": plan.queue})
        step = [keys.lease(rid, plan.sha), keys.report(plan.repo, plan.sha),
                keys.plan(rid, plan.sha), keys.chunk_lease(rid, plan.sha, 0), keys.SHARDED,
                keys.CHUNKS_STARTED, plan.queue]
        args = [run_id, plan.to_json(), int(self.commit_ttl * 1000),
                int(self.lease_ttl * 1000), keys.member(rid, plan.sha), len(plan.chunks), meta,
                keys.PLAN_HOLDER + run_id, *messages]
        return int(self._plan(keys=step, args=args)) == 1

    def plan(self, repo: str, sha: str) -> ShardPlan | None:
        raw = self.client.hget(keys.plan(keys.repo_id(repo), sha), "plan")
        return ShardPlan.from_json(raw) if raw else None

    # -- chunks -------------------------------------------------------------------------

    def take(self, repo: str, sha: str, index: int, run_id: str) -> int:
        """The chunk's lease: the attempt number, 0 if a live run holds it, -1 if there is
        nothing to do."""
        rid = keys.repo_id(repo)
        return int(self._take(
            keys=[keys.chunk_lease(rid, sha, index), keys.report(repo, sha),
                  keys.plan(rid, sha), keys.CHUNKS_STARTED, keys.lease(rid, sha),
                  keys.HOLDERS],
            args=[run_id, int(self.lease_ttl * 1000), f"{keys.member(rid, sha)}:{index}",
                  index, int(self.commit_ttl * 1000), keys.PLAN_HOLDER,
                  self.store.name]))  # fmt: skip

    def hold_first(self, repo: str, sha: str, run_id: str) -> None:
        """Name the holder of chunk 0, which the planning run took with the plan, for
        the watcher (:mod:`.liveness`)."""
        if not self.store.name:
            return
        rid = keys.repo_id(repo)
        lease = keys.chunk_lease(rid, sha, 0)
        entry = f"{run_id} {self.store.name} {keys.plan(rid, sha)} d:0"
        self._hold(keys=[lease, keys.HOLDERS], args=[run_id, entry])

    def renew(self, repo: str, sha: str, index: int, run_id: str) -> bool:
        key = keys.chunk_lease(keys.repo_id(repo), sha, index)
        return bool(self._renew(keys=[key], args=[run_id, int(self.lease_ttl * 1000)]))

    def release(self, repo: str, sha: str, index: int, run_id: str) -> None:
        self._release(keys=[keys.chunk_lease(keys.repo_id(repo), sha, index), keys.HOLDERS],
                      args=[run_id])

    def done(self, repo: str, sha: str, index: int, report: Report, run_id: str) -> int:
        """Store chunk ``index``'s report, once: :data:`DROPPED` (a result is there, or
        the plan is gone), :data:`STORED`, or :data:`LAST` (it was the last one missing:
        the caller merges, :meth:`finish`)."""
        rid = keys.repo_id(repo)
        result = json.dumps(ChunkResult(index, report).to_dict())
        return int(self._done(
            keys=[keys.plan(rid, sha), keys.chunk_lease(rid, sha, index), keys.CHUNKS_STARTED,
                  keys.HOLDERS],
            args=[index, result, f"{keys.member(rid, sha)}:{index}", run_id]))  # fmt: skip

    def finish(self, repo: str, sha: str, stop_reason: str | None = None,
               lost_reason: str | None = None) -> Report | None:
        """Merge the chunks' results into the commit's report and store it (once); the
        report when this call stored it. ``stop_reason``: chunks without a result did
        not run (fail fast); ``lost_reason``: they are errors (the plan outlived its
        time)."""
        rid = keys.repo_id(repo)
        raw = self.client.hgetall(keys.plan(rid, sha))
        if "plan" not in raw:
            return None
        plan = ShardPlan.from_json(raw["plan"])
        results = [ChunkResult.from_dict(json.loads(v)) for k, v in sorted(raw.items())
                   if k.startswith("r:")]
        head = Report.from_dict(plan.head)
        elapsed = time.time() - plan.planned_at + head.duration
        report = merge(head, plan.chunks, results, utcnow(), elapsed, self.output_limit,
                       not_run_reason=stop_reason)
        if lost_reason and len(results) < len(plan.chunks):
            report = report.replace(message=f"{lost_reason}; {report.message}")
        report = muted(self.store, report)
        stored = self.store.finish(report)
        self.clean(repo, sha, len(plan.chunks))
        if not stored:
            return None
        try:
            self.record_durations(report)
        except Exception as exc:  # the report is stored; durations only help the next plan
            logger.warning("could not keep the test durations of %s: %s", sha[:12], exc)
        return report

    def _untaken(self, rid: str, sha: str, count: int, older_than: float) -> list[int]:
        """Chunks of a plan that no run took (no attempt) since they were first seen so
        by the reconciler ``older_than`` seconds ago or more; each is seen anew then."""
        plan = keys.plan(rid, sha)
        fields = [f for i in range(count) for f in (f"a:{i}", f"s:{i}")]
        values = self.client.hmget(plan, fields)
        now = time.time()
        due = []
        for i in range(count):
            taken, seen = values[2 * i], values[2 * i + 1]
            if taken is not None:
                continue
            if seen is None:
                self.client.hset(plan, f"s:{i}", now)
            elif now - float(seen) >= older_than:
                self.client.hset(plan, f"s:{i}", now)
                due.append(i)
        return due

    def clean(self, repo: str, sha: str, count: int) -> None:
        rid = keys.repo_id(repo)
        self._clean(keys=[keys.plan(rid, sha), keys.lease(rid, sha), keys.SHARDED,
                          *(keys.chunk_lease(rid, sha, i) for i in range(count))],
                    args=[keys.member(rid, sha), keys.PLAN_HOLDER])

    # -- the reconciler's part ----------------------------------------------------------

    def reconcile(self, resend: Callable[[str, str, str | None, int, str], None],
                  queued: Callable[[str, str], bool] | None = None,
                  resend_after: float = 10.0) -> int:
        """Queue again (``resend(repo, sha, branch, index, queue)``) the chunks whose run
        died, and (given ``queued(queue, task id)``) the chunks that no run took for
        ``resend_after`` seconds and that are not on their queue; merge plans whose
        merging run died; tidy plans of reported commits. Returns how many chunks it
        queued again."""
        # It runs every second in one worker: it reads the plans' small fields only.
        resent = 0
        for started in self.client.smembers(keys.CHUNKS_STARTED):
            rid, sha, index = started.split(":")
            raw = self.client.hget(keys.plan(rid, sha), "meta")
            meta = json.loads(raw) if raw else None
            step = [keys.report(meta["repo"], sha) if meta else keys.NONE, keys.plan(rid, sha),
                    keys.chunk_lease(rid, sha, int(index)), keys.CHUNKS_STARTED]
            if int(self._orphan(keys=step, args=[started, index])) and meta:
                logger.warning("reconciler: chunk %s of %s lost its run; queueing it again",
                               index, sha[:12])
                resend(meta["repo"], sha, meta["branch"], int(index), meta["queue"])
                resent += 1
        for sharded in self.client.smembers(keys.SHARDED):
            rid, sha = sharded.split(":")
            raw, k, n = self.client.hmget(keys.plan(rid, sha), "meta", "k", "n")
            if raw is None:
                self.client.srem(keys.SHARDED, sharded)
                continue
            meta = json.loads(raw)
            repo = meta["repo"]
            if self.client.exists(keys.report(repo, sha)):
                self.clean(repo, sha, int(k))
            elif int(n) >= int(k):
                logger.warning("reconciler: merging the chunks of %s", sha[:12])
                self.finish(repo, sha)
            elif queued is not None:
                for index in self._untaken(rid, sha, int(k), resend_after):
                    if queued(meta["queue"], keys.task_id(repo, sha, index)):
                        continue
                    logger.warning("reconciler: chunk %d of %s was never taken and is not on "
                                   "queue %r; queueing it again", index + 1, sha[:12],
                                   meta["queue"])
                    resend(repo, sha, meta["branch"], index, meta["queue"])
                    resent += 1
        return resent
