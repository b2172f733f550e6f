"""Sharding one commit's tests: whether to, and the plan of its chunks.

Plain functions and data, no Redis, no Celery: the worker decides with them
(:mod:`ciq.worker.attempt`), the store keeps the plan (:mod:`ciq.store.shards`).

**Plan.** Tests are ordered longest first by the durations measured in earlier reports of
the repository (a test never seen gets the median of the known ones). A first wave of
chunks, one per worker process, takes three quarters of the suite, balanced longest
first; the rest is cut by *guided self-scheduling* (Polychronopoulos & Kuck, 1987): each
chunk about ``remaining ÷ workers`` seconds, so they shrink towards the end. Chunks go on
the queue as separate tasks in that order, and each free worker process takes the next
one (prefetch one). A static split fixes N equal shards up front, and one whose estimate
was wrong holds everyone; here the small chunks at the end let idle workers even out
whatever the estimates got wrong, while the first wave keeps the number of chunks (each
a checkout and a pytest start) low. ``bench/sharding.py`` measures it; ``simulate``
compares plans. The likely failures of a commit (:mod:`ciq.ordering`), when known, come
before all that, in small chunks of their own: the first ones queued and taken."""

from __future__ import annotations

import json
import statistics
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Seconds assumed for a test when the repository has no durations at all.
UNKNOWN_TEST_SECONDS = 0.5
#: Share of the suite the first wave of chunks (one per worker process) takes.
FIRST_WAVE = 0.75
#: How a suite may be sharded (CIQ_SHARD, a repository's `shard`).
MODES = ("auto", "always", "never")


def estimates(ids: Sequence[str], durations: Mapping[str, float]) -> dict[str, float]:
    """Seconds expected of each test: its last measured duration, else the median of the
    known ones (new tests are like the others), else :data:`UNKNOWN_TEST_SECONDS`."""
    known = [d for d in durations.values() if d >= 0]
    default = statistics.median(known) if known else UNKNOWN_TEST_SECONDS
    return {i: durations.get(i, default) for i in ids}


def plan_chunks(ids: Sequence[str], durations: Mapping[str, float], workers: int,
                min_chunk: float, max_chunks: int = 64,
                likely: Sequence[str] = ()) -> list[list[str]]:
    """Cut ``ids`` into chunks, in the order they should be queued (see the module's
    docstring).

    ``min_chunk`` is the smallest chunk worth its own checkout (seconds); ``workers`` the
    worker processes that may take chunks. Every id is in exactly one chunk. ``likely``:
    the likely failures (:func:`ciq.ordering.likely`, in their order), which go first in
    small chunks of their own (:func:`_likely_chunks`).
    """
    if not ids:
        return []
    est = estimates(ids, durations)
    procs = max(workers, 1)
    unique = list(dict.fromkeys(ids))
    early = _likely_chunks([i for i in dict.fromkeys(likely) if i in est], est, procs,
                           sum(est[i] for i in unique), min_chunk)
    taken = {i for c in early for i in c}
    order = sorted((i for i in unique if i not in taken), key=lambda i: (-est[i], i))
    if not order:
        return early
    total = sum(est[i] for i in order)
    first, rest = _first_wave(order, est, procs, FIRST_WAVE * total / procs, min_chunk)
    rest_chunks = _guided(rest, est, procs, max(min_chunk, total / max_chunks))
    return early + _balance_tail(first + rest_chunks, est, min_chunk)


def _likely_chunks(likely: list[str], est: Mapping[str, float], procs: int, total: float,
                   min_chunk: float) -> list[list[str]]:
    """The first chunks, one per worker process at most, of the likely failures in their
    order: each about a quarter of a process's even share of the suite (never under
    ``min_chunk``), so that they finish, and say whether the commit broke something, long
    before the rest; the likely failures that do not fit go with the rest."""
    size = max(min_chunk, total / (4 * procs))
    chunks: list[list[str]] = []
    seconds = 0.0
    for i in likely:
        if not chunks or (seconds + est[i] > size and chunks[-1]):
            if len(chunks) == procs:
                break
            chunks.append([])
            seconds = 0.0
        chunks[-1].append(i)
        seconds += est[i]
    return chunks


def _first_wave(order: list[str], est: Mapping[str, float], procs: int, cap: float,
                min_chunk: float) -> tuple[list[list[str]], list[str]]:
    """One chunk per worker process, each about ``cap`` seconds, balanced longest first
    (each test into the lightest chunk it fits); returns them and the tests left over."""
    if cap < min_chunk:
        return [], order
    bins: list[list[str]] = [[] for _ in range(procs)]
    loads = [0.0] * procs
    rest = []
    for i in order:
        k = loads.index(min(loads))
        if not bins[k] or loads[k] + est[i] <= cap * 1.02:
            bins[k].append(i)
            loads[k] += est[i]
        else:
            rest.append(i)
    ranked = sorted(zip(loads, bins, strict=True), key=lambda lb: -lb[0])
    return [b for _, b in ranked if b], rest


def _guided(rest: list[str], est: Mapping[str, float], procs: int,
            floor: float) -> list[list[str]]:
    """Guided self-scheduling of what the first wave left: each chunk about the remaining
    seconds ÷ the worker processes, never under ``floor``; so they shrink to the end."""
    order = deque(rest)
    remaining = sum(est[i] for i in rest)
    chunks: list[list[str]] = []
    while order:
        target = max(remaining / procs, floor)
        chunk, seconds = [order[0]], est[order.popleft()]
        # The longest tests that still fit, then the shortest ones to fill the rest: a
        # chunk holds one or two long tests and a tail of short ones.
        for take in (order.popleft, order.pop):
            end = 0 if take == order.popleft else -1
            while order and seconds + est[order[end]] <= target * 1.05:
                seconds += est[order[end]]
                chunk.append(take())
        while order and seconds < target * 0.9:  # not much under: one more short test
            seconds += est[order[-1]]
            chunk.append(order.pop())
        chunks.append(chunk)
        remaining -= seconds
    return chunks


def _balance_tail(chunks: list[list[str]], est: Mapping[str, float],
                  min_chunk: float) -> list[list[str]]:
    """Fold a last chunk smaller than half of ``min_chunk`` into the one before it: its
    own checkout would cost more than its tests."""
    if len(chunks) > 1 and sum(est[i] for i in chunks[-1]) < min_chunk / 2:
        chunks[-2].extend(chunks.pop())
    return chunks


def simulate(chunks: Sequence[Sequence[str]], seconds: Mapping[str, float], workers: int,
             overhead: float) -> float:
    """Wall seconds of running ``chunks`` in order on ``workers`` processes that each take
    the next chunk when free, each chunk costing ``overhead`` more than its tests (for
    comparing plans; the benchmark measures the real thing)."""
    free = [0.0] * max(workers, 1)
    for chunk in chunks:
        first = free.index(min(free))
        free[first] += overhead + sum(seconds[i] for i in chunk)
    return max(free)


def decide(mode: str, durations: Mapping[str, float], processes: int,
           min_seconds: float) -> bool:
    """Whether to shard before collecting (collecting costs a pytest start): ``always``,
    or ``auto`` with two worker processes or more and a suite that took ``min_seconds``
    or more last time."""
    if mode == "never":
        return False
    if mode == "always":
        return True
    return processes >= 2 and sum(durations.values()) >= min_seconds


@dataclass(frozen=True)
class ShardPlan:
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
    def from_json(cls, raw: str) -> ShardPlan:
        data = json.loads(raw)
        return cls(data["repo"], data["sha"], data["branch"], data["chunks"], data["head"],
                   bool(data.get("fail_fast")), data.get("queue", "ciq"),
                   float(data.get("planned_at", 0)))
