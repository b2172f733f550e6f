"""Reruns of failing tests by a real worker: flaky, order-dependent and confirmed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ciq.junit import to_junit
from ciq.settings import Settings
from ciq.store import Store

from .helpers import run_ciq, wait_report

pytestmark = pytest.mark.slow


def _files(shared: Path) -> dict[str, str]:
    flag, ran = shared / "flaked-once", shared / "marker-runs.txt"
    return {
        # fails on its first run only: the first run leaves the flag behind
        "tests/test_flaky.py": f"""\
import pathlib

FLAG = pathlib.Path({str(flag)!r})

def test_first_run_fails():
    first = not FLAG.exists()
    FLAG.touch()
    assert not first, "first run"
""",
        # test_b fails only after test_a in the same process
        "tests/test_order.py": """\
import os

def test_a():
    os.environ["CIQ_TEST_POLLUTED"] = "1"

def test_b():
    assert "CIQ_TEST_POLLUTED" not in os.environ
""",
        # passes, and says each time it runs: reruns must never run it
        "tests/test_zz_marker.py": f"""\
import pathlib

def test_marks():
    with pathlib.Path({str(ran)!r}).open("a") as fh:
        fh.write("ran\\n")
""",
    }


def test_failing_tests_are_rerun_and_told_flaky_order_dependent_or_confirmed(
    make_repo, worker, store: Store, settings: Settings, tmp_path: Path
):
    # Given a worker and a repository with a test failing on its first run only and an
    # order-dependent pair
    shared = tmp_path / "shared"
    worker()
    repo = make_repo(_files(shared))
    name = str(repo.path)

    # When its head is tested
    assert run_ciq(settings, "enqueue", name).returncode == 0
    report = wait_report(store, name, repo.head(), timeout=180)

    # Then the commit passed with flakes, naming the tests that flaked
    verdicts = {t.id: t.verdict for t in report.tests if t.verdict}
    assert verdicts == {"tests/test_flaky.py::test_first_run_fails": "flaky",
                        "tests/test_order.py::test_b": "order-dependent"}
    assert report.status == "flaky", report.message
    assert report.message.startswith("passed with flakes: 2 flaky tests")
    flaked = next(t for t in report.tests if t.id.endswith("test_first_run_fails"))
    assert flaked.outcome == "passed"
    # (the first test: nothing ran before it, so no run in order)
    assert [(a.kind, a.outcome) for a in flaked.attempts] == [
        ("run", "failed"), ("alone", "passed"), ("alone", "passed"), ("alone", "passed")]
    assert all(a.worker == report.worker for a in flaked.attempts)
    assert "first run" in flaked.attempts[0].message
    order = next(t for t in report.tests if t.id.endswith("test_b"))
    # (failing in order while passing alone: made twice in order, so that a random flake
    # is not taken for an order dependence)
    assert [(a.kind, a.outcome) for a in order.attempts] == [
        ("run", "failed"), ("alone", "passed"), ("alone", "passed"), ("alone", "passed"),
        ("in order", "failed"), ("in order", "failed")]
    # And the reruns ran only the failing ids (and those before them, in order): the
    # test after them ran once
    assert (shared / "marker-runs.txt").read_text() == "ran\n"
    assert report.deflake["tests"] == 2 and report.deflake["runs"] == 8
    # And the JUnit export carries the failed attempts
    cases = {c.get("name"): c for c in ET.fromstring(to_junit(report)).iter("testcase")}
    flaky_case = cases["test_first_run_fails"]
    assert flaky_case.find("failure") is None
    assert [c.tag for c in flaky_case] == ["flakyFailure"]
    assert [c.tag for c in cases["test_b"]] == ["flakyFailure"] * 3
    shown = run_ciq(settings, "report", name, repo.head()).stdout
    assert "flaky" in shown and "test_first_run_fails" in shown

    # When a commit adds a deterministic failure
    # (in the suite's own order: a new failing test would otherwise run first, with
    # nothing before it to rerun in order)
    sha = repo.commit({"tests/test_red.py": "def test_red():\n    assert 1 == 2\n",
                       "ciq.toml": 'order = "none"\n'}, "red")
    assert run_ciq(settings, "enqueue", name, sha).returncode == 0
    red = wait_report(store, name, sha, timeout=180)

    # Then it failed: the failure is confirmed, not flaky
    assert red.status == "failed"
    broken = next(t for t in red.tests if t.id == "tests/test_red.py::test_red")
    assert broken.verdict == "confirmed" and broken.outcome == "failed"
    assert [(a.kind, a.outcome) for a in broken.attempts] == [
        ("run", "failed"), ("alone", "failed"), ("alone", "failed"), ("alone", "failed"),
        ("in order", "failed")]
    assert red.message.startswith("1 of 5 tests failed; 1 flaky test: tests/test_order.py")
    assert (shared / "marker-runs.txt").read_text() == "ran\n" * 2
    print(f"rerun cost: flaky commit {report.deflake['seconds']}s in "
          f"{report.deflake['runs']} runs; red commit {red.deflake['seconds']}s in "
          f"{red.deflake['runs']} runs; test run {report.timings.get('test')}s")
