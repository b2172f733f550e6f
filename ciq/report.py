"""The report: one per (repository, commit), JSON only."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: `flaky`: "passed with flakes", every failing test passed when rerun (:mod:`ciq.flaky`).
#: `cancelled`: a newer commit of its branch superseded it (:mod:`ciq.supersede`): not a
#: verdict on the commit, so no failure anywhere and no notification.
STATUSES = ("passed", "failed", "error", "timeout", "flaky", "cancelled")
OUTCOMES = ("passed", "failed", "error", "skipped")


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Attempt:
    """One run of one test: the commit's run, or a rerun of a failing test to tell a
    flake from a break (:mod:`ciq.flaky`)."""

    outcome: str
    duration: float = 0.0
    message: str = ""
    worker: str | None = None
    #: "run" (the commit's run), "alone" (the test by itself), "in order" (after the
    #: tests that ran before it in the commit's run).
    kind: str = "run"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        worker = data.get("worker")
        return cls(outcome=str(data.get("outcome", "")),
                   duration=float(data.get("duration", 0.0)),
                   message=str(data.get("message", "")),
                   worker=str(worker) if worker is not None else None,
                   kind=str(data.get("kind", "run")))


@dataclass(frozen=True)
class TestResult:
    id: str
    outcome: str
    duration: float = 0.0
    message: str = ""
    #: Every run of the test when it was rerun (the commit's run first); empty otherwise.
    attempts: tuple[Attempt, ...] = ()
    #: What its reruns said (:data:`ciq.flaky.VERDICTS`): "flaky", "order-dependent",
    #: "confirmed", "not rerun"; empty when it was not rerun.
    verdict: str = ""

    __test__ = False  # not a pytest test class

    @property
    def flaky(self) -> bool:
        return self.verdict in ("flaky", "order-dependent")

    def to_dict(self) -> dict[str, Any]:
        """The test as JSON; the rerun fields only when it was rerun (reports of large
        suites stay as they were)."""
        data: dict[str, Any] = {"id": self.id, "outcome": self.outcome,
                                "duration": self.duration, "message": self.message}
        if self.attempts:
            data["attempts"] = [dataclasses.asdict(a) for a in self.attempts]
        if self.verdict:
            data["verdict"] = self.verdict
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestResult:
        return cls(
            id=str(data["id"]),
            outcome=str(data["outcome"]),
            duration=float(data.get("duration", 0.0)),
            message=str(data.get("message", "")),
            attempts=tuple(Attempt.from_dict(a) for a in data.get("attempts", ())),
            verdict=str(data.get("verdict", "")),
        )


@dataclass(frozen=True)
class Summary:
    total: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, tests: list[TestResult]) -> Summary:
        count = {o: 0 for o in OUTCOMES}
        for t in tests:
            count[t.outcome] = count.get(t.outcome, 0) + 1
        return cls(
            total=len(tests),
            passed=count["passed"],
            failed=count["failed"],
            errors=count["error"],
            skipped=count["skipped"],
        )


@dataclass(frozen=True)
class Report:
    repo: str
    commit: str
    status: str
    branch: str | None = None
    summary: Summary = field(default_factory=Summary)
    tests: tuple[TestResult, ...] = ()
    started_at: str | None = None
    finished_at: str | None = None
    duration: float = 0.0
    worker: str | None = None
    attempts: int = 1
    output: str = ""
    #: One line saying why a run is `error` or `timeout`; empty otherwise.
    message: str = ""
    command: str | None = None
    exit_code: int | None = None
    run_id: str | None = None
    #: Seconds per phase of the run: "checkout" (fetch + worktree), "setup" (the
    #: environment: cached, or built now), "test".
    timings: dict[str, float] = field(default_factory=dict)
    #: The run's environment: "key" (hash of the dependency files, setup steps and
    #: Python), "cache_hit", "python" (version) and, when built now, "build_seconds".
    environment: dict[str, Any] = field(default_factory=dict)
    #: A sharded run's chunks (see ciq.shards): "count", "chunks" (index, tests, status,
    #: worker, seconds, attempts each) and "imbalance" (longest chunk ÷ mean); empty when
    #: the commit ran in one piece.
    shards: dict[str, Any] = field(default_factory=dict)
    #: Tests that never ran because the run stopped early (fail fast).
    not_run: tuple[str, ...] = ()
    #: Tests of this report that were quarantined when it was stored (ciq.quarantine):
    #: test id -> {owner, reason, expires_at}. Their outcomes are real; their failures
    #: did not decide the status.
    quarantined: dict[str, dict[str, str]] = field(default_factory=dict)
    #: The reruns of its failing tests (:mod:`ciq.flaky`): "tests" (how many were
    #: rerun), "runs" (pytest processes), "seconds" (their time), "note" (why some or all
    #: were not rerun); empty when nothing was rerun.
    deflake: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown report status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tests"] = [t.to_dict() for t in self.tests]
        data["not_run"] = list(self.not_run)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["summary"] = Summary(**data.get("summary", {}))
        values["tests"] = tuple(TestResult.from_dict(t) for t in data.get("tests", ()))
        values["not_run"] = tuple(str(i) for i in data.get("not_run", ()))
        return cls(**values)

    @property
    def flaky(self) -> tuple[TestResult, ...]:
        """Its tests that failed and then passed when rerun."""
        return tuple(t for t in self.tests if t.flaky)

    def replace(self, **changes: Any) -> Report:
        return dataclasses.replace(self, **changes)
