"""A `flaky` commit through the store, its notification events, the web UI and the API."""

from __future__ import annotations

from ciq import flaky
from ciq.report import Attempt, Report, Summary, TestResult
from ciq.store import Store

from .helpers import REPO, RID, Web, claim
from .test_notify import events

FLAKE = "tests/test_a.py::test_flake"


def flaky_report(commit: str) -> Report:
    tests = (TestResult("tests/test_a.py::test_ok", "passed", 0.01),
             TestResult(FLAKE, "failed", 0.2, "AssertionError: sometimes"))
    raw = Report(repo=REPO, commit=commit, branch="main", status="failed", worker="w1@host",
                 summary=Summary.of(list(tests)), tests=tests, exit_code=1,
                 message="1 of 2 tests failed", finished_at="2024-05-01T12:00:01+00:00")
    again = [Attempt("passed", 0.1, "", "w1@host", "alone")] * 3
    return flaky.judge(raw, {FLAKE: again}, info={"tests": 1, "runs": 3, "seconds": 0.9})


def test_a_flaky_commit_is_shown_with_its_attempts_and_keeps_the_branch_green(
    web: Web, store: Store
) -> None:
    # Given a passed commit, then one whose only failure passed when rerun
    first = claim(store, 1)
    tests = (TestResult("tests/test_a.py::test_ok", "passed", 0.01),)
    assert store.finish(Report(repo=REPO, commit=first, branch="main", status="passed",
                               tests=tests, summary=Summary.of(list(tests))))
    commit = claim(store, 2)
    assert store.finish(flaky_report(commit))

    # Then the branch stays green: no "broken" event
    assert [e["kind"] for e in events(store)] == ["passed", "passed"]
    assert events(store)[1]["status"] == "flaky"
    # And the commit page, JSON and JUnit XML show the flake and its runs
    page = web.get(f"/repos/{RID}/commits/{commit}")
    assert page.status == 200
    assert "passed with flakes: 1 flaky test: tests/test_a.py::test_flake" in page.text
    assert 'class="pill s-flaky"' in page.text and "<h2>Flaky" in page.text
    assert page.text.count("<td>alone</td>") == 3
    data = web.json(f"/api/repos/{RID}/commits/{commit}")
    assert data["status"] == "flaky"
    test = {t["id"]: t for t in data["tests"]}[FLAKE]
    assert test["verdict"] == "flaky" and len(test["attempts"]) == 4
    assert data["deflake"]["runs"] == 3
    xml = web.get(f"/repos/{RID}/commits/{commit}/junit.xml").text
    assert "<flakyFailure" in xml
    badge = web.get(f"/badge/{RID}/main.svg").text
    assert ">flaky<" in badge
    # And the test history counts the same-commit flake (one flip is not "unstable")
    history = {t["id"]: t for t in web.json(f"/api/repos/{RID}/tests")["tests"]}
    assert (history[FLAKE]["flakes"], history[FLAKE]["unstable"]) == (1, False)
    assert "flaky ×1" in web.get(f"/repos/{RID}/tests").text
