"""The verdict of a failing test's reruns (ciq.flaky), its report and its JUnit export."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET

import pytest

from ciq import flaky
from ciq.junit import to_junit
from ciq.notify.events import kind_of
from ciq.quarantine import Entry, apply
from ciq.report import Attempt, Report, Summary, TestResult
from ciq.web.badge import BADGES

OK, BAD, OTHER = "tests/test_a.py::test_ok", "tests/test_a.py::test_bad", "tests/test_b.py::test_x"


def failed_report(*failing: str, exit_code: int = 1, **more: object) -> Report:
    tests = (TestResult(OK, "passed", 0.1),
             *(TestResult(t, "failed", 0.2, "AssertionError: nope\nassert 0") for t in failing))
    return Report(repo="r", commit="c" * 40, status="failed", worker="w1", exit_code=exit_code,
                  tests=tests, summary=Summary.of(list(tests)),
                  message=f"{len(failing)} of {len(tests)} tests failed",
                  **more)  # type: ignore[arg-type]


def attempts(alone: list[str], in_order: str | None = None) -> list[Attempt]:
    got = [Attempt(o, 0.1, "" if o == "passed" else "boom", "w1", "alone") for o in alone]
    if in_order is not None:
        got.append(Attempt(in_order, 0.3, "" if in_order == "passed" else "boom", "w1",
                           "in order"))
    return got


@pytest.mark.parametrize(("alone", "in_order", "verdict"), [
    (["failed", "failed", "failed"], "failed", "confirmed"),
    (["error", "failed", "error"], None, "confirmed"),
    (["failed", "passed", "failed"], "failed", "flaky"),
    (["failed", "failed", "failed"], "passed", "flaky"),
    (["passed", "passed", "passed"], "failed", "order-dependent"),
    (["passed", "passed", "passed"], ["failed", "failed"], "order-dependent"),
    (["passed", "passed", "passed"], ["failed", "passed"], "flaky"),
    (["passed", "passed", "passed"], "passed", "flaky"),
    (["passed", "passed", "passed"], None, "flaky"),
    ([], None, "not rerun"),
    (["skipped"], None, "not rerun"),
])
def test_classify(alone, in_order, verdict):
    assert flaky.classify(alone, in_order) == verdict


def test_only_a_sound_failed_run_is_rerun():
    assert flaky.to_rerun(failed_report(BAD, OTHER)) == [BAD, OTHER]
    assert flaky.to_rerun(failed_report(BAD), muted={BAD}) == []
    # infrastructure is never flaky evidence: a time limit, a limit hit, lost tests
    assert flaky.to_rerun(failed_report(BAD).replace(status="timeout")) == []
    assert flaky.to_rerun(failed_report(BAD).replace(status="error")) == []
    assert flaky.to_rerun(failed_report(BAD, exit_code=137)) == []
    assert flaky.to_rerun(failed_report(BAD, not_run=("t",))) == []
    assert flaky.to_rerun(failed_report(BAD, shards={"count": 2})) == []


def test_only_flaky_failures_give_the_flaky_status_naming_them():
    report = failed_report(BAD, OTHER)
    judged = flaky.judge(report, {BAD: attempts(["failed", "passed", "failed"], "failed"),
                                  OTHER: attempts(["passed"] * 3, "failed")},
                         info={"seconds": 1.5})
    assert judged.status == "flaky"
    assert judged.message == (f"passed with flakes: 2 flaky tests: {BAD}, {OTHER} "
                              "(order-dependent)")
    assert [t.verdict for t in judged.flaky] == ["flaky", "order-dependent"]
    bad = judged.flaky[0]
    assert bad.outcome == "passed" and len(bad.attempts) == 5
    assert bad.attempts[0] == Attempt("failed", 0.2, "AssertionError: nope\nassert 0", "w1",
                                      "run")
    assert judged.summary.failed == 0 and judged.summary.passed == 3
    assert judged.deflake == {"seconds": 1.5}
    # a flaky commit keeps its branch green: no "broken" event for it
    assert kind_of("passed", "flaky") == "passed"
    assert kind_of("failed", "flaky") == "fixed"
    assert kind_of("flaky", "failed") == "broken"
    assert "flaky" in BADGES and BADGES["flaky"][1] != BADGES["passed"][1]


def test_a_confirmed_failure_keeps_the_commit_failed():
    report = failed_report(BAD, OTHER)
    judged = flaky.judge(report, {BAD: attempts(["failed"] * 3, "failed"),
                                  OTHER: attempts(["failed", "passed", "passed"])})
    assert judged.status == "failed"
    assert judged.message == f"1 of 3 tests failed; 1 flaky test: {OTHER}"
    assert {t.id: t.verdict for t in judged.tests if t.verdict} == {BAD: "confirmed",
                                                                    OTHER: "flaky"}
    # and tests left without reruns count as failures
    unrerun = flaky.judge(failed_report(BAD), {})
    assert unrerun.status == "failed" and unrerun.tests[1].verdict == "not rerun"


def test_flaky_and_quarantined_failures_give_flaky_and_quarantine_keeps_it():
    report = failed_report(BAD, OTHER)
    judged = flaky.judge(report, {BAD: attempts(["passed"] * 3)}, muted={OTHER})
    assert judged.status == "flaky"
    assert judged.message == f"passed with flakes: 1 flaky test: {BAD}, 1 quarantined failure"
    entry = Entry(OTHER, "a@b.c", "flaky", "2026-01-01T00:00:00", "2999-01-01T00:00:00")
    muted = apply(judged, {OTHER: entry})
    assert muted.status == "flaky" and OTHER in muted.quarantined


def test_reports_without_the_rerun_fields_load_and_the_fields_round_trip():
    old = {"repo": "r", "commit": "c", "status": "failed",
           "tests": [{"id": BAD, "outcome": "failed", "duration": 0.2, "message": "m"}]}
    loaded = Report.from_dict(old)
    assert loaded.tests[0].attempts == () and loaded.tests[0].verdict == ""
    assert loaded.to_dict()["tests"] == old["tests"]  # unchanged when never rerun
    judged = flaky.judge(failed_report(BAD), {BAD: attempts(["passed"] * 3, "failed")},
                         info={"runs": 4})
    again = Report.from_dict(judged.to_dict())
    assert again == judged
    assert again.to_dict()["tests"][1]["attempts"][1] == {
        "outcome": "passed", "duration": 0.1, "message": "", "worker": "w1", "kind": "alone"}


def test_junit_export_carries_the_failed_attempts():
    judged = flaky.judge(failed_report(BAD, OTHER),
                         {BAD: attempts(["error", "passed", "passed"]),
                          OTHER: attempts(["failed"] * 3)})
    root = ET.fromstring(to_junit(judged))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    bad = cases["test_bad"]
    assert bad.find("failure") is None  # it passed in the end
    assert [c.tag for c in bad] == ["flakyFailure", "flakyError"]
    first = bad.find("flakyFailure")
    assert first is not None
    assert first.get("message") == "AssertionError: nope"
    assert first.get("type") == "AssertionError"
    assert first.findtext("stackTrace") == "AssertionError: nope\nassert 0"
    other = cases["test_x"]
    assert [c.tag for c in other] == ["failure", "rerunFailure", "rerunFailure",
                                      "rerunFailure"]


# -- the detector over many commits -----------------------------------------------------------


def _commit(rng: random.Random, fails: float) -> str | None:
    """The verdict on one commit of a test that fails with probability ``fails`` in any
    run (1.0: deterministic), the way ciq.runner.deflake reruns it; None: it passed."""
    def run() -> str:
        return "failed" if rng.random() < fails else "passed"

    if run() == "passed":
        return None
    alone, in_order = [run() for _ in range(flaky.ALONE_RUNS)], [run()]
    while flaky.confirm_order(alone, in_order):
        in_order.append(run())
    return flaky.classify(alone, in_order)


def test_a_test_failing_one_run_in_five_is_found_flaky_within_14_commits():
    histories, found = 2000, 0
    for seed in range(histories):
        rng = random.Random(seed)
        verdicts = [_commit(rng, 0.2) for _ in range(14)]
        found += any(v in ("flaky", "order-dependent") for v in verdicts)
    # 1 - (1 - 0.2 * (1 - 0.2**4))**14 = 0.956 in theory
    assert found / histories >= 0.95


def test_a_random_flake_is_seldom_taken_for_an_order_dependence():
    # A test failing one run in five, whatever the order: of its flaky verdicts, about
    # 0.8**3 * 0.2**2 / (1 - 0.2**5) = 2 % say order-dependent (10 % with one run in order)
    rng = random.Random(7)
    verdicts = [v for v in (_commit(rng, 0.2) for _ in range(50_000)) if v]
    flaky_ones = [v for v in verdicts if v in ("flaky", "order-dependent")]
    share = flaky_ones.count("order-dependent") / len(flaky_ones)
    assert 0.01 < share < 0.035, share


def test_regressions_and_break_then_fix_are_never_flaky():
    for seed in range(500):
        rng = random.Random(seed)
        start = rng.randrange(14)
        # a deterministic regression at commit `start`, and one fixed 3 commits later
        regression = [_commit(rng, 1.0 if i >= start else 0.0) for i in range(14)]
        fixed = [_commit(rng, 1.0 if start <= i < start + 3 else 0.0) for i in range(14)]
        for verdicts in (regression, fixed):
            assert set(verdicts) <= {None, "confirmed"}
            assert "confirmed" in verdicts


def test_metrics_count_the_flaky_status_and_each_verdict():
    from ciq.store.metrics import COUNTERS, finish_args

    judged = flaky.judge(failed_report(BAD, OTHER), {BAD: attempts(["passed"] * 3),
                                                     OTHER: attempts(["failed"] * 3)})
    counted = json.loads(finish_args(judged))["count"]
    assert "outcome:failed" in counted
    assert sorted(c for c in counted if c.startswith("deflaked:")) == [
        "deflaked:confirmed", "deflaked:flaky"]
    assert "flaky" in COUNTERS["outcome"][1]  # type: ignore[index]


def test_more_failing_tests_than_the_cap_are_a_break_confirmed_without_reruns():
    from types import SimpleNamespace

    from ciq.runner.deflake import deflake

    many = [f"tests/test_m.py::test_{i}" for i in range(flaky.MAX_TESTS + 1)]
    ready = SimpleNamespace(custom_command=None, spec=SimpleNamespace(run_id="r", sha="c" * 40))
    got = deflake(ready, failed_report(*many))  # type: ignore[arg-type]  # never runs
    assert got.status == "failed"
    assert got.deflake["runs"] == 0 and "confirmed without reruns" in got.deflake["note"]
    assert {t.verdict for t in got.tests if t.outcome == "failed"} == {"not rerun"}
