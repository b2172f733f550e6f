"""The merge of a sharded commit's chunk reports into its one report.

One final report from every chunk's: each collected test exactly once, so that its
summary's total is the collection's count (a test its chunk did not report is an
``error`` saying which chunk lost it, and makes the report an ``error`` that names it; a
result of a test the chunk was not given is not counted), the worst status, and
per-chunk worker, seconds and imbalance (longest ÷ mean). A pure function: the store
calls it when the last result is in (:meth:`ciq.store.shards.Shards.finish`).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..flaky import flaked
from ..junit import MAX_MESSAGE_CHARS
from ..report import Report, Summary, TestResult

#: Worst first: the merged report's status is the worst of its chunks'.
_SEVERITY = {"passed": 0, "flaky": 1, "failed": 2, "error": 3, "timeout": 4}
#: The outcome kept of a test reported twice: the worst.
_OUTCOME_RANK = {"skipped": 0, "passed": 1, "failed": 2, "error": 3}


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


def _reconcile(planned: Sequence[str], reported: Sequence[TestResult],
               elsewhere: Container[str]) -> tuple[list[TestResult], list[str], int]:
    """A chunk's results against its planned ids: one result per planned test it
    reported, under the id the collection gave it (in planned order); the planned ids it
    did not report; and how many of its results stood for none of them (dropped).

    A test in the JUnit XML twice (it failed, then its teardown failed too) is one
    result, the worse one. A result whose id was not planned may be a planned test
    spelled differently in JUnit XML than in pytest's collection (odd characters in a
    parametrised id): it stands for a planned one the chunk did not report otherwise, of
    the same test function (the id before its parameters), else, when its function is
    none of the chunk's, of the same file. Any other, and any test of another chunk
    (``elsewhere``: a chunk whose selection failed ran it too), is not one of this
    chunk's tests: counting it would count a test twice, or hide a lost one."""
    wanted = set(planned)
    best: dict[str, TestResult] = {}
    extra: dict[str, TestResult] = {}
    others = 0
    for r in reported:
        if r.id in wanted:
            best[r.id] = _worse(best.get(r.id), r)
        elif r.id in elsewhere:
            others += 1
        else:
            extra[r.id] = _worse(extra.get(r.id), r)
    lost = [i for i in planned if i not in best]
    if lost and extra:
        lost = _pair(lost, extra, _function, best)
        # What is left of a planned test function is a second copy of one of its tests:
        # it stands for nothing else. The same file is the last resort, for ids that
        # JUnit XML mangles beyond their function (items of other plugins).
        functions = {_function(i) for i in planned}
        for spelled in [e for e in extra if _function(e) in functions]:
            del extra[spelled]
            others += 1
    if lost and extra:
        lost = _pair(lost, extra, _file, best)
    return [best[i] for i in planned if i in best], lost, others + len(extra)


def _function(test_id: str) -> str:
    return test_id.split("[", 1)[0]


def _file(test_id: str) -> str:
    return test_id.split("::", 1)[0]


def _pair(lost: list[str], extra: dict[str, TestResult], key: Callable[[str], str],
          best: dict[str, TestResult]) -> list[str]:
    """Let results of ``extra`` stand for the ``lost`` ids of the same ``key``, in sorted
    order (deterministic); returns the ids still lost. Paired results leave ``extra``."""
    by_key: dict[str, list[str]] = {}
    for spelled in sorted(extra):
        by_key.setdefault(key(spelled), []).append(spelled)
    left = []
    for planned_id in sorted(lost):
        candidates = by_key.get(key(planned_id))
        if candidates:
            best[planned_id] = replace(extra.pop(candidates.pop(0)), id=planned_id)
        else:
            left.append(planned_id)
    still = set(left)
    return [i for i in lost if i in still]


def _worse(kept: TestResult | None, other: TestResult) -> TestResult:
    """One result of a test reported twice: the worse outcome, both durations, and the
    other's message too when that one did not pass."""
    if kept is None:
        return other
    if _OUTCOME_RANK.get(other.outcome, 0) > _OUTCOME_RANK.get(kept.outcome, 0):
        kept, other = other, kept
    message = kept.message
    if other.message and other.message != message and other.outcome in ("failed", "error"):
        message = f"{message}\n\n{other.message}" if message else other.message
    return replace(kept, duration=round(kept.duration + other.duration, 6),
                   message=message[:MAX_MESSAGE_CHARS])


def _names(ids: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


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
    seen: set[str] = set()  # a test in two chunks of a plan counts once
    everywhere = {i for chunk in chunks for i in chunk}
    for index, chunk in enumerate(chunks):
        planned = [i for i in dict.fromkeys(chunk) if i not in seen]
        seen.update(planned)
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
        kept, lost, dropped = _reconcile(planned, r.tests, everywhere)
        tests.extend(kept)
        why = r.message or f"its run ended with exit status {r.exit_code}"
        tests.extend(TestResult(i, "error", 0.0, f"collected but not reported by {label} "
                                                 f"({why})") for i in lost)
        # Tests missing make the report an error: its summary would not add up to the
        # collection's.
        status = "error" if lost and r.status in ("passed", "flaky", "failed") else r.status
        worst = max(worst, status, key=_SEVERITY.__getitem__)
        if lost:
            messages.append(f"{label} did not report {len(lost)} of its {len(planned)} "
                            f"tests ({_names(lost)}): {why}")
        elif status in ("error", "timeout"):
            messages.append(f"{label}: {why}")
        part = {"index": index, "tests": len(planned), "status": status, "worker": r.worker,
                "seconds": r.timings.get("test", r.duration), "attempts": r.attempts}
        if dropped:
            part["unplanned"] = dropped  # results of tests not planned in it, not counted
        parts.append(part)
        if r.output:
            outputs.append((_SEVERITY.get(status, 0), f"=== {label} on {r.worker} "
                                                      f"({status}) ===\n{r.output}"))
    summary = Summary.of(tests)
    if not_run_reason is not None and not_run:
        messages.insert(0, f"{not_run_reason}; {len(not_run)} tests did not run")
    if worst == "failed" and not messages:
        messages.append(f"{summary.failed + summary.errors} of {summary.total} tests failed")
    flaked_tests = [t for t in tests if t.flaky]
    if worst == "flaky":
        messages.append(f"passed with flakes: {flaked(flaked_tests)}")
    elif flaked_tests:
        messages.append(flaked(flaked_tests))
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
