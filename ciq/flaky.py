"""Flaky or broken: what the reruns of a commit's failing tests say.

Pure functions, no Redis and no processes; the reruns themselves are made by
:mod:`ciq.runner.deflake`, in the failing run's own checkout and environment.

A failing test is rerun a few times by itself ("alone") and once after the tests that ran
before it in the commit's run ("in order"). Same-commit evidence only: the code did not
change between the runs, so a rerun that passes means the test's outcome does not follow
from the code alone.

* any rerun passes: **flaky**; **order-dependent** when every run alone passed and the run
  in order failed again, twice (it fails because of what ran before it);
* every rerun fails: **confirmed**;
* no rerun could be made (too many failing tests, no time left, the reruns themselves
  broke down): **not rerun**, which counts as a failure.

A commit whose only failures (quarantined ones aside) are flaky gets the status `flaky`,
"passed with flakes": not silently green, and not a broken branch either.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .quarantine import plural
from .report import Attempt, Report, Summary, TestResult

VERDICTS = ("flaky", "order-dependent", "confirmed", "not rerun")
#: Runs of each failing test by itself.
ALONE_RUNS = 3
#: Runs in order at most: a second one only to confirm an order dependence.
IN_ORDER_RUNS = 2
#: Failing tests rerun at most: more failing at once is a break, not a flake.
MAX_TESTS = 20
#: Test ids a message names at most.
NAMED = 5

_FAILING = ("failed", "error")
_EVIDENCE = ("passed", "failed", "error")


@dataclass(frozen=True)
class RerunPlan:
    """What to rerun: the failing ``tests``, the ``order`` the commit's run ran its tests
    in (up to the last failing one: the run in order needs no more) and their
    ``durations``. It travels through Redis when another worker makes the reruns."""

    tests: tuple[str, ...]
    order: tuple[str, ...]
    durations: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, report: Report, failing: Sequence[str]) -> RerunPlan:
        order = [t.id for t in report.tests]
        last = max(order.index(t) for t in failing)
        kept = order[: last + 1]
        durations = {t.id: t.duration for t in report.tests}
        return cls(tuple(failing), tuple(kept), {i: durations[i] for i in kept})

    def to_json(self) -> str:
        return json.dumps({"tests": self.tests, "order": self.order,
                           "durations": dict(self.durations)})

    @classmethod
    def from_json(cls, raw: str) -> RerunPlan:
        """The plan written by :meth:`to_json`; ValueError when it is not one."""
        data = json.loads(raw)
        try:
            tests, order = tuple(map(str, data["tests"])), tuple(map(str, data["order"]))
            durations = {str(k): float(v) for k, v in data["durations"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a rerun plan: {exc}") from exc
        if not set(tests) <= set(order) or set(durations) != set(order):
            raise ValueError("a rerun plan whose tests are not in its order")
        return cls(tests, order, durations)


@dataclass(frozen=True)
class Reruns:
    """What the reruns found: each rerun test's ``attempts`` (a test left out was not
    rerun), the pytest ``runs`` made and why some were not (``notes``)."""

    attempts: Mapping[str, tuple[Attempt, ...]] = field(default_factory=dict)
    runs: int = 0
    notes: frozenset[str] = frozenset()

    def to_json(self) -> str:
        return json.dumps({"attempts": {t: [vars(a) for a in runs]
                                        for t, runs in self.attempts.items()},
                           "runs": self.runs, "notes": sorted(self.notes)})

    @classmethod
    def from_json(cls, raw: str) -> Reruns:
        """The reruns written by :meth:`to_json`; ValueError when they are not."""
        data = json.loads(raw)
        try:
            attempts = {str(t): tuple(Attempt.from_dict(a) for a in runs)
                        for t, runs in data["attempts"].items()}
            return cls(attempts, int(data["runs"]), frozenset(map(str, data["notes"])))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not reruns: {exc}") from exc


def classify(alone: Sequence[str], in_order: str | Sequence[str] | None) -> str:
    """The verdict of a failing test from the outcomes of its reruns by itself
    (``alone``) and after the tests before it (``in_order``: one outcome or several;
    None: not made). Outcomes other than passed, failed and error (skipped, not run)
    are no evidence."""
    alone = [o for o in alone if o in _EVIDENCE]
    runs = [in_order] if isinstance(in_order, str) else list(in_order or ())
    order = [o for o in runs if o in _EVIDENCE]
    if not alone and not order:
        return "not rerun"
    if alone and all(o == "passed" for o in alone) and order and all(
            o in _FAILING for o in order):
        return "order-dependent"
    if "passed" in alone or "passed" in order:
        return "flaky"
    return "confirmed"


def confirm_order(alone: Sequence[str], in_order: Sequence[str]) -> bool:
    """Whether to make the run in order once more: it failed while every run alone
    passed. A random flake (one run in five) fails one run in order in five too, and
    would be called order-dependent one time in ten; failing twice in order, one in
    fifty."""
    return (0 < len(in_order) < IN_ORDER_RUNS and bool(alone)
            and all(o == "passed" for o in alone) and all(o in _FAILING for o in in_order))


def to_rerun(report: Report, muted: Collection[str] = ()) -> list[str]:
    """The ids of the tests of ``report`` to rerun: none unless the run is sound
    evidence (`failed` because tests failed, every test ran, pytest's exit status 1:
    never a timeout, a run stopped at a limit, an environment that did not build); then
    its failing tests, quarantined ones (``muted``) aside."""
    if report.status != "failed" or report.not_run or report.exit_code != 1 or report.shards:
        return []
    return [t.id for t in report.tests if t.outcome in _FAILING and t.id not in muted]


def judge(report: Report, reruns: Mapping[str, Sequence[Attempt]], muted: Collection[str] = (),
          info: Mapping[str, Any] | None = None) -> Report:
    """``report`` with the verdicts of its failing tests: ``reruns`` holds each rerun
    test's attempts (a test left out was not rerun). A flaky test's outcome becomes
    `passed` (the run that passed), its failed runs kept in ``attempts``; the status is
    `flaky` when the only failures left are quarantined ones, else `failed` with the
    flaky tests named in its message. ``info`` goes to ``report.deflake``."""
    failing = set(to_rerun(report, muted))
    if not failing:
        return report
    tests: list[TestResult] = []
    for t in report.tests:
        if t.id not in failing:
            tests.append(t)
            continue
        first = Attempt(t.outcome, t.duration, t.message, report.worker, "run")
        runs = tuple(reruns.get(t.id, ()))
        verdict = classify([a.outcome for a in runs if a.kind == "alone"],
                           [a.outcome for a in runs if a.kind == "in order"])
        if verdict in ("flaky", "order-dependent"):
            passed = next(a for a in runs if a.outcome == "passed")
            bad = 1 + sum(a.outcome in _FAILING for a in runs)
            tests.append(TestResult(t.id, "passed", passed.duration,
                                    f"{verdict}: failed {bad} of {1 + len(runs)} runs",
                                    (first, *runs), verdict))
        else:
            tests.append(TestResult(t.id, t.outcome, t.duration, t.message, (first, *runs),
                                    verdict))
    flaky = [t for t in tests if t.flaky]
    muted_failing = sum(1 for t in tests if t.outcome in _FAILING and t.id in muted)
    real = sum(1 for t in tests if t.outcome in _FAILING and t.id not in muted)
    quarantined = f", {plural(muted_failing)}" if muted_failing else ""
    if flaky and not real:
        status, message = "flaky", f"passed with flakes: {flaked(flaky)}{quarantined}"
    else:
        status = "failed"
        message = f"{real} of {len(tests)} tests failed" + (
            f", and {plural(muted_failing)}" if muted_failing else "")
        if flaky:
            message += f"; {flaked(flaky)}"
    return report.replace(status=status, message=message, tests=tuple(tests),
                          summary=Summary.of(tests), deflake=dict(info or {}))


def flaked(tests: Sequence[TestResult]) -> str:
    """"2 flaky tests: a (order-dependent), b"."""
    names = [t.id + (" (order-dependent)" if t.verdict == "order-dependent" else "")
             for t in tests[:NAMED]]
    more = f" and {len(tests) - NAMED} more" if len(tests) > NAMED else ""
    word = "test" if len(tests) == 1 else "tests"
    return f"{len(tests)} flaky {word}: {', '.join(names)}{more}"


def runs_line(t: TestResult) -> str:
    """A rerun test's runs in one line: "run failed 0.20s on w1, alone passed 0.01s on w1"."""
    return ", ".join(f"{a.kind} {a.outcome} {a.duration:.2f}s on {a.worker or '-'}"
                     for a in t.attempts)
