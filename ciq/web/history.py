"""Per-test history: each test's outcome over a repository's last reported commits.

A test is *unstable* when its outcome flips between passing and failing at least twice
in the window (pass → fail → pass, or fail → pass → fail): once is a change, twice is a
pattern. That is for ranking only: a break fixed a few commits later flips twice too.
Only same-commit evidence says *flaky* (:mod:`ciq.flaky`): ``flakes`` counts the
commits of the window on which the test failed and then passed when rerun. It is
*newly broken* when it fails (or errors) in the newest commit and passed in the commit
reported just before. Skipped and missing outcomes are not flips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..report import Report
from ..stats import flips

#: Flips between passing and failing that make a test unstable.
UNSTABLE_FLIPS = 2

_BAD = ("failed", "error")


@dataclass(frozen=True)
class TestHistory:
    id: str
    #: One per commit of the window, newest first; None where the test did not run.
    outcomes: tuple[str | None, ...]
    flips: int
    newly_broken: bool
    #: Commits of the window on which it flaked (failed, then passed when rerun).
    flakes: int = 0

    __test__ = False  # not a pytest test class

    @property
    def unstable(self) -> bool:
        return self.flips >= UNSTABLE_FLIPS

    @property
    def failing(self) -> bool:
        return bool(self.outcomes) and self.outcomes[0] in _BAD

    @property
    def ever_failed(self) -> bool:
        return any(o in _BAD for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "outcomes": list(self.outcomes), "unstable": self.unstable,
                "newly_broken": self.newly_broken, "failing": self.failing,
                "flips": self.flips, "flakes": self.flakes}


@dataclass(frozen=True)
class History:
    #: Listing rows of the commits, newest first.
    commits: tuple[dict[str, Any], ...]
    #: Newly broken first, then flaky, then unstable, then failing now, then failed in the
    #: window, then the rest; by id within each.
    tests: tuple[TestHistory, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"commits": list(self.commits), "tests": [t.to_dict() for t in self.tests]}


def history(reported: list[tuple[dict[str, Any], Report]]) -> History:
    """The history of every test in ``reported`` (rows and reports, newest first)."""
    by_commit = [{t.id: t.outcome for t in report.tests} for _, report in reported]
    flaked = [{t.id for t in report.flaky} for _, report in reported]
    ids = {test_id for outcomes in by_commit for test_id in outcomes}
    tests = []
    for test_id in ids:
        outcomes = tuple(o.get(test_id) for o in by_commit)
        newly = len(outcomes) > 1 and outcomes[0] in _BAD and outcomes[1] == "passed"
        flakes = sum(test_id in f for f in flaked)
        tests.append(TestHistory(test_id, outcomes, flips(outcomes), newly, flakes))
    tests.sort(key=lambda t: (not t.newly_broken, not t.flakes, not t.unstable, not t.failing,
                              not t.ever_failed, t.id))
    return History(tuple(r for r, _ in reported), tuple(tests))
