"""Sharded runs in Redis: plans, chunk leases, chunk results, the merge, durations.

A run that decides to shard (see :class:`Sharder`) writes the commit's *plan* and queues
its other chunks in one Lua step, then runs the first chunk itself in the checkout and
environment it already has. Every chunk runs under a lease of its own, with the same
rules as whole-commit runs: a chunk is taken at most once at a time, its result is
written once (set-if-absent), a chunk whose worker died is queued again by the
reconciler, and one that kills its worker ``max_attempts`` times is an ``error``. The
run that writes the last result merges them (:func:`ciq.shards.merge`) and stores the
commit's report with the usual compare-and-set; if it dies in between, the reconciler
merges. While the chunks run, the commit's lease is held by the plan
(``shards:<run id>``) and extended each time a chunk starts, so the commit is not
re-queued meanwhile.

Keys (``member`` is ``"<rid>:<sha>"``):

==================================  ======  ============================================
``ciq:plan:<rid>:<sha>``            hash    plan (JSON), meta (repo, branch, queue: JSON),
                                            k (chunks), n (results so far), r:<i> (result
                                            JSON), a:<i> (attempts of chunk i)
``ciq:chunk-lease:<rid>:<sha>:<i>`` string  run id of chunk i's live run
``ciq:chunks:started``              set     ``<member>:<i>`` of chunks taken, no result yet
``ciq:sharded``                     set     members with a plan and no report yet
``ciq:durations:<rid>``             hash    test id → seconds in its last report
``ciq:workers``                     hash    node → {queues, processes, seen} (JSON)
==================================  ======  ============================================
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .keys import CHUNK_TASK, repo_id
from .message import run_message
from .report import Report, utcnow
from .shards import ChunkResult, estimates, merge, plan_chunks
from .store import RELEASE_SCRIPT, RENEW_SCRIPT, Store

logger = logging.getLogger(__name__)

WORKERS = "ciq:workers"
SHARDED = "ciq:sharded"
CHUNKS_STARTED = "ciq:chunks:started"
#: Seconds after which a worker that stopped writing its entry in WORKERS is gone.
WORKER_SEEN_WITHIN = 15.0
#: Durations kept per repository beyond its last report's tests, before a rewrite.
DURATIONS_SLACK = 200

MODES = ("auto", "always", "never")


def plan_key(rid: str, sha: str) -> str:
    return f"ciq:plan:{rid}:{sha}"


def chunk_lease_key(rid: str, sha: str, index: int) -> str:
    return f"ciq:chunk-lease:{rid}:{sha}:{index}"


def durations_key(rid: str) -> str:
    return f"ciq:durations:{rid}"


# KEYS: commit lease, report, plan, chunk 0 lease, sharded, chunks started, queue.
# ARGV: run id, plan json, commit ttl ms, chunk ttl ms, member, chunk count, meta json,
# messages...
# The planning run must still hold the commit's lease; it then hands the lease to the
# plan, takes chunk 0 itself, and queues the other chunks (when the broker is this Redis)
# in the same step, so a plan never exists without its chunks on the queue.
_PLAN = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('HSET', KEYS[3], 'plan', ARGV[2], 'meta', ARGV[7], 'k', ARGV[6], 'n', 0, 'a:0', 1)
redis.call('SET', KEYS[1], 'shards:' .. ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[4])
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('SADD', KEYS[6], ARGV[5] .. ':0')
for i = 8, #ARGV do redis.call('RPUSH', KEYS[7], ARGV[i]) end
return 1
"""

# KEYS: chunk lease, report, plan, chunks started, commit lease. ARGV: run id, ttl ms,
# member:i, i, commit ttl ms. -1: nothing to do (reported, plan gone, chunk done);
# 0: a live run holds the chunk; else the attempt number.
_TAKE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[3], 'r:' .. ARGV[4]) == 1 then return -1 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SADD', KEYS[4], ARGV[3])
local lease = redis.call('GET', KEYS[5])
if lease and string.sub(lease, 1, 7) == 'shards:' then
  redis.call('PEXPIRE', KEYS[5], ARGV[5])
end
return redis.call('HINCRBY', KEYS[3], 'a:' .. ARGV[4], 1)
"""

# KEYS: plan, chunk lease, chunks started. ARGV: i, result json, member:i, run id.
# 0: dropped (the plan is gone or the chunk has a result); 1: stored; 2: stored, and it
# was the last one missing.
_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if n >= tonumber(redis.call('HGET', KEYS[1], 'k')) then return 2 end
return 1
"""

# KEYS: report, plan, chunk lease, chunks started. ARGV: member:i, i. 1 when the chunk
# lost its run (no result, no live lease): it leaves the started set and must be sent.
_CHUNK_ORPHAN = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 0
   or redis.call('HEXISTS', KEYS[2], 'r:' .. ARGV[2]) == 1 then
  redis.call('SREM', KEYS[4], ARGV[1]); return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SREM', KEYS[4], ARGV[1])
return 1
"""

# KEYS: durations. ARGV: how many tests there are now, then test id, seconds... A hash
# much larger than the tests of the report has tests that are gone: it starts afresh.
_DURATIONS = """
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) end
return redis.call('HSET', KEYS[1], unpack(ARGV, 2))
"""

# KEYS: plan, commit lease, sharded, chunk leases... ARGV: member. After the report is
# stored: the plan, its leases and its place in the sharded set go.
_CLEAN = """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
local lease = redis.call('GET', KEYS[2])
if lease and string.sub(lease, 1, 7) == 'shards:' then redis.call('DEL', KEYS[2]) end
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""


@dataclass(frozen=True)
class Plan:
    """A sharded commit: its chunks of test ids and what the merged report shares."""

    repo: str
    sha: str
    branch: str | None
    chunks: list[list[str]]
    #: The planning run's report so far (start, worker, attempts, command, environment,
    #: timings): the head of the merged report.
    head: dict[str, Any]
    fail_fast: bool = False
    queue: str = "ciq"
    planned_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps({
            "repo": self.repo, "sha": self.sha, "branch": self.branch, "chunks": self.chunks,
            "head": self.head, "fail_fast": self.fail_fast, "queue": self.queue,
            "planned_at": self.planned_at,
        })  # fmt: skip

    @classmethod
    def from_json(cls, raw: str) -> Plan:
        data = json.loads(raw)
        return cls(data["repo"], data["sha"], data["branch"], data["chunks"], data["head"],
                   bool(data.get("fail_fast")), data.get("queue", "ciq"),
                   float(data.get("planned_at", 0)))


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
        self._plan = self.client.register_script(_PLAN)
        self._take = self.client.register_script(_TAKE)
        self._done = self.client.register_script(_DONE)
        self._orphan = self.client.register_script(_CHUNK_ORPHAN)
        self._renew = self.client.register_script(RENEW_SCRIPT)
        self._release = self.client.register_script(RELEASE_SCRIPT)
        self._clean = self.client.register_script(_CLEAN)
        self._durations = self.client.register_script(_DURATIONS)

    # -- planning ---------------------------------------------------------------------

    def durations(self, repo: str) -> dict[str, float]:
        raw = self.client.hgetall(durations_key(repo_id(repo)))
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
        self._durations(keys=[durations_key(repo_id(report.repo))],
                        args=[len(timed) + DURATIONS_SLACK, *flat])

    def processes(self, queue: str, now: float | None = None) -> int:
        """Worker processes seen lately that take runs from ``queue``."""
        now = time.time() if now is None else now
        total = 0
        for raw in self.client.hvals(WORKERS):
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
        self.client.hset(WORKERS, node, json.dumps(
            {"queues": sorted(queues), "processes": processes, "seen": time.time()}))

    def create(self, plan: Plan, run_id: str, send: Callable[[str, str], None] | None,
               same_redis: bool) -> bool:
        """Store the plan, hand the commit's lease to it, take chunk 0 for this run and
        queue the others (largest first). False when the run lost its lease meanwhile."""
        rid = repo_id(plan.repo)
        member = f"{rid}:{plan.sha}"
        messages = [run_message(plan.repo, plan.sha, plan.branch, plan.queue, CHUNK_TASK, i)
                    for i in range(len(plan.chunks) - 1, 0, -1)]  # RPUSH: last is next
        keys = [f"ciq:lease:{rid}:{plan.sha}", self.store.report_key(plan.repo, plan.sha),
                plan_key(rid, plan.sha), chunk_lease_key(rid, plan.sha, 0), SHARDED,
                CHUNKS_STARTED, plan.queue]
        meta = json.dumps({"repo": plan.repo, "branch": plan.branch, "queue": plan.queue})
        args = [run_id, plan.to_json(), int(self.commit_ttl * 1000),
                int(self.lease_ttl * 1000), member, len(plan.chunks), meta,
                *(messages if same_redis else [])]
        if int(self._plan(keys=keys, args=args)) != 1:
            return False
        if not same_redis and send is not None:
            for message in messages:
                send(plan.queue, message)
        return True

    # -- chunks -----------------------------------------------------------------------

    def plan(self, repo: str, sha: str) -> Plan | None:
        raw = self.client.hget(plan_key(repo_id(repo), sha), "plan")
        return Plan.from_json(raw) if raw else None

    def take(self, repo: str, sha: str, index: int, run_id: str) -> int:
        """The chunk's lease: the attempt number, 0 if a live run holds it, -1 if there is
        nothing to do."""
        rid = repo_id(repo)
        return int(self._take(
            keys=[chunk_lease_key(rid, sha, index), self.store.report_key(repo, sha),
                  plan_key(rid, sha), CHUNKS_STARTED, f"ciq:lease:{rid}:{sha}"],
            args=[run_id, int(self.lease_ttl * 1000), f"{rid}:{sha}:{index}", index,
                  int(self.commit_ttl * 1000)]))  # fmt: skip

    def renew(self, repo: str, sha: str, index: int, run_id: str) -> bool:
        key = chunk_lease_key(repo_id(repo), sha, index)
        return bool(self._renew(keys=[key], args=[run_id, int(self.lease_ttl * 1000)]))

    def release(self, repo: str, sha: str, index: int, run_id: str) -> None:
        self._release(keys=[chunk_lease_key(repo_id(repo), sha, index)], args=[run_id])

    def done(self, repo: str, sha: str, index: int, report: Report, run_id: str) -> Report | None:
        """Store chunk ``index``'s report; returns the commit's report when this stored
        it (the last chunk, or the first failure of a fail-fast plan)."""
        rid = repo_id(repo)
        result = json.dumps(ChunkResult(index, report).to_dict())
        got = int(self._done(
            keys=[plan_key(rid, sha), chunk_lease_key(rid, sha, index), CHUNKS_STARTED],
            args=[index, result, f"{rid}:{sha}:{index}", run_id]))  # fmt: skip
        if got == 0:
            logger.info("chunk %d of %s: a result is there already; dropping this one",
                        index, sha[:12])
            return None
        if got == 2:
            return self.finish(repo, sha)
        plan = self.plan(repo, sha)
        if plan and plan.fail_fast and report.status != "passed":
            return self.finish(repo, sha, "stopped at the first failing chunk (fail_fast)")
        return None

    def finish(self, repo: str, sha: str, stop_reason: str | None = None,
               lost_reason: str | None = None) -> Report | None:
        """Merge the chunks' results into the commit's report and store it (once).
        ``stop_reason``: chunks without a result did not run (fail fast);
        ``lost_reason``: they are errors (the plan outlived its time)."""
        rid = repo_id(repo)
        raw = self.client.hgetall(plan_key(rid, sha))
        if "plan" not in raw:
            return None
        plan = Plan.from_json(raw["plan"])
        results = [ChunkResult.from_dict(json.loads(v)) for k, v in sorted(raw.items())
                   if k.startswith("r:")]
        head = Report.from_dict(plan.head)
        elapsed = time.time() - plan.planned_at + head.duration
        report = merge(head, plan.chunks, results, utcnow(), elapsed, self.output_limit,
                       not_run_reason=stop_reason)
        if lost_reason and len(results) < len(plan.chunks):
            report = report.replace(message=f"{lost_reason}; {report.message}")
        stored = self.store.finish(report)
        self.clean(repo, sha, len(plan.chunks))
        if not stored:
            return None
        try:
            self.record_durations(report)
        except Exception as exc:  # the report is stored; durations only help the next plan
            logger.warning("could not keep the test durations of %s: %s", sha[:12], exc)
        return report

    def clean(self, repo: str, sha: str, count: int) -> None:
        rid = repo_id(repo)
        self._clean(keys=[plan_key(rid, sha), f"ciq:lease:{rid}:{sha}", SHARDED,
                          *(chunk_lease_key(rid, sha, i) for i in range(count))],
                    args=[f"{rid}:{sha}"])

    # -- the reconciler's part --------------------------------------------------------

    def reconcile(self, send: Callable[[str, str, str | None, int, str], None]) -> int:
        """Queue again the chunks whose run died; merge plans whose merging run died;
        tidy plans of reported commits. Returns how many chunks it queued again."""
        # It runs every second in one worker: it reads the plans' small fields only.
        resent = 0
        for member in self.client.smembers(CHUNKS_STARTED):
            rid, sha, index = member.split(":")
            raw = self.client.hget(plan_key(rid, sha), "meta")
            meta = json.loads(raw) if raw else None
            keys = [self.store.report_key(meta["repo"], sha) if meta else "ciq:none",
                    plan_key(rid, sha), chunk_lease_key(rid, sha, int(index)), CHUNKS_STARTED]
            if int(self._orphan(keys=keys, args=[member, index])) and meta:
                logger.warning("reconciler: chunk %s of %s lost its run; queueing it again",
                               index, sha[:12])
                send(meta["repo"], sha, meta["branch"], int(index), meta["queue"])
                resent += 1
        for member in self.client.smembers(SHARDED):
            rid, sha = member.split(":")
            raw, k, n = self.client.hmget(plan_key(rid, sha), "meta", "k", "n")
            if raw is None:
                self.client.srem(SHARDED, member)
                continue
            repo = json.loads(raw)["repo"]
            if self.client.exists(self.store.report_key(repo, sha)):
                self.clean(repo, sha, int(k))
            elif int(n) >= int(k):
                logger.warning("reconciler: merging the chunks of %s", sha[:12])
                self.finish(repo, sha)
        return resent


def decide(mode: str, ids_known: dict[str, float], processes: int, min_seconds: float) -> bool:
    """Whether to shard before collecting (collecting costs a pytest start): ``always``,
    or ``auto`` with two worker processes or more and a suite that took ``min_seconds``
    or more last time."""
    if mode == "never":
        return False
    if mode == "always":
        return True
    return processes >= 2 and sum(ids_known.values()) >= min_seconds


def chunk_plan(ids: list[str], durations: dict[str, float], processes: int,
               min_chunk: float) -> list[list[str]]:
    """The chunks of a collected suite for ``processes`` worker processes (at least 2)."""
    return plan_chunks(ids, durations, max(processes, 2), min_chunk)


__all__ = ["Plan", "Shards", "chunk_plan", "decide", "estimates"]
