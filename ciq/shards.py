"""Sharding one commit's tests: the plan, and the merge of the chunks' reports.

Plain functions, no Redis, no Celery (:mod:`ciq.sharding` runs them against Redis).

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
compares plans.

**Merge.** One final report from every chunk's: each collected test exactly once (a
test that no chunk reported is an ``error`` saying which chunk lost it), the worst
status, and per-chunk worker, seconds and imbalance (longest ÷ mean).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .report import Report, Summary, TestResult

#: Seconds assumed for a test when the repository has no durations at all.
UNKNOWN_TEST_SECONDS = 0.5
#: Share of the suite the first wave of chunks (one per worker process) takes.
FIRST_WAVE = 0.75
#: Worst first: the merged report's status is the worst of its chunks'.
_SEVERITY = {"passed": 0, "failed": 1, "error": 2, "timeout": 3}


def estimates(ids: Sequence[str], durations: Mapping[str, float]) -> dict[str, float]:
    """Seconds expected of each test: its last measured duration, else the median of the
    known ones (new tests are like the others), else :data:`UNKNOWN_TEST_SECONDS`."""
    known = [d for d in durations.values() if d >= 0]
    default = statistics.median(known) if known else UNKNOWN_TEST_SECONDS
    return {i: durations.get(i, default) for i in ids}


def plan_chunks(ids: Sequence[str], durations: Mapping[str, float], workers: int,
                min_chunk: float, max_chunks: int = 64) -> list[list[str]]:
    """Cut ``ids`` into chunks, in the order they should be queued (see the module's
    docstring).

    ``min_chunk`` is the smallest chunk worth its own checkout (seconds); ``workers`` the
    worker processes that may take chunks. Every id is in exactly one chunk.
    """
    if not ids:
        return []
    est = estimates(ids, durations)
    order = sorted(dict.fromkeys(ids), key=lambda i: (-est[i], i))
    total = sum(est[i] for i in order)
    procs = max(workers, 1)
    first, rest = _first_wave(order, est, procs, FIRST_WAVE * total / procs, min_chunk)
    rest_chunks = _guided(rest, est, procs, max(min_chunk, total / max_chunks))
    return _balance_tail(first + rest_chunks, est, min_chunk)


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


@dataclass(frozen=True)
class ChunkResult:
    """What one chunk's run reported, as kept until the merge."""

    index: int
    report: Report

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "report": self.report.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChunkResult:
        return cls(int(data["index"]), Report.from_dict(data["report"]))


def _missing(planned: Sequence[str], reported: Sequence[TestResult]) -> list[str]:
    """Planned tests a chunk did not report. A chunk that reported as many tests as it
    was given, or more, is complete even if an id is spelled differently in its JUnit
    XML than in pytest's collection (a parametrised id with odd characters)."""
    seen = {t.id for t in reported}
    lost = [i for i in planned if i not in seen]
    return [] if lost and len(seen) >= len(planned) else lost


def merge(head: Report, chunks: Sequence[Sequence[str]], results: Sequence[ChunkResult],
          finished_at: str, duration: float, output_limit: int,
          not_run_reason: str | None = None) -> Report:
    """The commit's report from its chunks' reports.

    ``head`` carries what the whole run shares (repo, commit, branch, start, worker and
    attempts of the run that planned it, command, environment, timings). A chunk without
    a result has its tests as errors, or, with ``not_run_reason`` (fail fast), lists them
    as not run. Deterministic: merging the same results twice gives the same report.
    """
    by_index = {r.index: r for r in results}
    tests: list[TestResult] = []
    not_run: list[str] = []
    parts: list[dict[str, Any]] = []
    outputs: list[tuple[int, str]] = []
    worst = "passed"
    messages: list[str] = []
    for index, planned in enumerate(chunks):
        found = by_index.get(index)
        label = f"chunk {index + 1} of {len(chunks)}"
        if found is None:
            if not_run_reason is not None:
                not_run.extend(planned)
            else:
                worst = max(worst, "error", key=_SEVERITY.__getitem__)
                messages.append(f"{label} never reported")
                tests.extend(TestResult(i, "error", 0.0, f"{label} never reported")
                             for i in planned)
            parts.append({"index": index, "tests": len(planned), "status": "not run"})
            continue
        r = found.report
        tests.extend(r.tests)
        lost = _missing(planned, r.tests)
        why = r.message or f"its run ended with exit status {r.exit_code}"
        tests.extend(TestResult(i, "error", 0.0, f"collected but not reported by {label} "
                                                 f"({why})") for i in lost)
        status = r.status if not lost or r.status != "passed" else "error"
        worst = max(worst, status, key=_SEVERITY.__getitem__)
        if status in ("error", "timeout"):
            messages.append(f"{label}: {r.message or why}")
        parts.append({"index": index, "tests": len(planned), "status": status,
                      "worker": r.worker, "seconds": r.timings.get("test", r.duration),
                      "attempts": r.attempts})
        if r.output:
            outputs.append((_SEVERITY.get(status, 0), f"=== {label} on {r.worker} "
                                                      f"({status}) ===\n{r.output}"))
    summary = Summary.of(tests)
    if not_run_reason is not None and not_run:
        messages.insert(0, f"{not_run_reason}; {len(not_run)} tests did not run")
    if worst == "failed" and not messages:
        messages.append(f"{summary.failed + summary.errors} of {summary.total} tests failed")
    ran = [p["seconds"] for p in parts if "seconds" in p]
    mean = sum(ran) / len(ran) if ran else 0.0
    shards = {
        "count": len(chunks), "chunks": parts,
        "imbalance": round(max(ran) / mean, 3) if mean > 0 else None,
    }  # fmt: skip
    # Failing chunks' output first: that is what a reader scrolls for.
    outputs.sort(key=lambda p: -p[0])
    output = "\n".join(text for _, text in outputs)
    if len(output) > output_limit:
        half = output_limit // 2
        output = f"{output[:half]}\n[... output of the chunks cut ...]\n{output[-half:]}"
    # The head's timings (checkout, setup, collect) and the chunks' phase, planned to
    # merged, as "test".
    timings = {**head.timings, "test": round(max(duration - head.duration, 0.0), 3)}
    return head.replace(
        status=worst, summary=summary, tests=tuple(tests), finished_at=finished_at,
        duration=round(duration, 3), output=output, message="; ".join(messages),
        exit_code=None, shards=shards, not_run=tuple(not_run), timings=timings,
    )  # fmt: skip
