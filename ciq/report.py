"""The report: one per (repository, commit), JSON only."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STATUSES = ("passed", "failed", "error", "timeout")
OUTCOMES = ("passed", "failed", "error", "skipped")


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class TestResult:
    id: str
    outcome: str
    duration: float = 0.0
    message: str = ""

    __test__ = False  # not a pytest test class

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestResult:
        return cls(
            id=str(data["id"]),
            outcome=str(data["outcome"]),
            duration=float(data.get("duration", 0.0)),
            message=str(data.get("message", "")),
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

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown report status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tests"] = [dataclasses.asdict(t) for t in self.tests]
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

    def replace(self, **changes: Any) -> Report:
        return dataclasses.replace(self, **changes)
