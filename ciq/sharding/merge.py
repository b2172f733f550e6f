"""The merge of a sharded commit's chunk reports into its one report.

One final report from every chunk's: each collected test exactly once (a test that no
chunk reported is an ``error`` saying which chunk lost it), the worst status, and
per-chunk worker, seconds and imbalance (longest ÷ mean). A pure function: the store
calls it when the last result is in (:meth:`ciq.store.shards.Shards.finish`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..report import Report, Summary, TestResult

#: Worst first: the merged report's status is the worst of its chunks'.
_SEVERITY = {"passed": 0, "failed": 1, "error": 2, "timeout": 3}


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
