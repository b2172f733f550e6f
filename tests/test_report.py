"""The report: one per commit, the same through JSON and back."""

from __future__ import annotations

import pytest

from ciq.report import Report, Summary, TestResult


def test_report_round_trips_through_json_dict() -> None:
    tests = (TestResult("t::a", "passed", 0.1), TestResult("t::b", "failed", 0.2, "no"))
    report = Report(repo="/r", commit="a" * 40, status="failed", branch="main",
                    summary=Summary.of(list(tests)), tests=tests, attempts=2)
    data = report.to_dict()
    assert data["summary"] == {"total": 2, "passed": 1, "failed": 1, "errors": 0, "skipped": 0}
    assert data["tests"][1] == {"id": "t::b", "outcome": "failed", "duration": 0.2,
                                "message": "no"}
    assert Report.from_dict({**data, "added_later": 1}) == report
    with pytest.raises(ValueError):
        Report(repo="/r", commit="a" * 40, status="green")
