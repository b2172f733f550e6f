"""A seeded synthetic history, run by real workers: a test failing one run in five, an
order-dependent pair, a deterministic regression and a break fixed the next commit. Only
the first is ever called flaky, the pair is order-dependent, the others are confirmed.
(The statistics over many histories are simulated in tests/test_flaky.py.)"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ciq.quarantine import Policy
from ciq.settings import Settings
from ciq.stats import per_test, suggestions
from ciq.store import Store

from .helpers import run_ciq, wait_report

pytestmark = pytest.mark.slow

#: The chance that the flaky test fails on a run.
P_FAIL = 0.2


def fails(seed: int, n: int) -> bool:
    """Whether run ``n`` of the flaky test fails: seeded, one run in five."""
    return random.Random(seed * 100_003 + n).random() < P_FAIL


def _seed() -> int:
    """A seed whose first run fails and whose next four runs (its reruns) do not all."""
    return next(s for s in range(1000)
                if fails(s, 0) and not all(fails(s, n) for n in range(1, 5)))


def _suite(shared: Path, seed: int) -> dict[str, str]:
    runs = shared / "flaky-runs.txt"
    return {
        "tests/test_p.py": f"""\
import pathlib, random

RUNS = pathlib.Path({str(runs)!r})

def test_sometimes():
    n = len(RUNS.read_text().splitlines()) if RUNS.exists() else 0
    with RUNS.open("a") as fh:
        fh.write("run\\n")
    assert random.Random({seed} * 100_003 + n).random() >= {P_FAIL}, f"unlucky run {{n}}"
""",
        "tests/test_order.py": """\
import os

def test_a():
    os.environ["CIQ_POLLUTED"] = "1"

def test_b():
    assert "CIQ_POLLUTED" not in os.environ
""",
        "tests/test_bf.py": "def test_bf():\n    pass\n",
        "tests/test_reg.py": "def test_reg():\n    pass\n",
    }


def test_a_seeded_history_labels_only_the_flake_flaky(make_repo, worker, store: Store,
                                                       settings: Settings, tmp_path: Path):
    # Given two workers and a seeded suite
    worker("w1")
    worker("w2")
    seed = _seed()
    repo = make_repo(_suite(tmp_path / "shared", seed))
    name = str(repo.path)
    shas = [repo.head()]
    # commit 2: a change; 3: test_bf breaks; 4: it is fixed and test_reg regresses; 5, 6
    shas.append(repo.commit({"README": "2\n"}, "two"))
    shas.append(repo.commit({"tests/test_bf.py": "def test_bf():\n    assert 0, 'bf'\n"},
                            "break"))
    shas.append(repo.commit({"tests/test_bf.py": "def test_bf():\n    pass\n",
                             "tests/test_reg.py": "def test_reg():\n    assert 0, 'reg'\n"},
                            "fix and regress"))
    shas.append(repo.commit({"README": "5\n"}, "five"))
    shas.append(repo.commit({"README": "6\n"}, "six"))

    # When each commit is tested in turn
    reports = []
    for sha in shas:
        assert run_ciq(settings, "enqueue", name, sha).returncode == 0
        reports.append(wait_report(store, name, sha, timeout=120))

    # Then the order-dependent pair is told so on every commit
    verdicts = [{t.id: t.verdict for t in r.tests if t.verdict} for r in reports]
    for v in verdicts:
        assert v.get("tests/test_order.py::test_b") == "order-dependent", v
        assert "tests/test_order.py::test_a" not in v
    # And the break and the regression are confirmed where they fail, never flaky
    assert [v.get("tests/test_bf.py::test_bf") for v in verdicts] == [
        None, None, "confirmed", None, None, None]
    assert [v.get("tests/test_reg.py::test_reg") for v in verdicts] == [
        None, None, None, "confirmed", "confirmed", "confirmed"]
    # And the flake is flaky on the first commit (its first run failed, a rerun passed),
    # and wherever its first run failed, its verdict follows its reruns
    assert verdicts[0].get("tests/test_p.py::test_sometimes") == "flaky"
    for r in reports:
        p = next(t for t in r.tests if t.id == "tests/test_p.py::test_sometimes")
        if p.attempts:
            passed = any(a.outcome == "passed" for a in p.attempts[1:])
            # (order-dependent, a flake's other name, only if it failed twice in order)
            expected = {"flaky", "order-dependent"} if passed else {"confirmed"}
            assert p.verdict in expected, p
            if p.verdict == "order-dependent":
                assert [a.outcome for a in p.attempts if a.kind == "in order"] == [
                    "failed", "failed"], p
        else:
            assert p.outcome == "passed" and not p.verdict
    # And the statuses follow: flakes alone give `flaky`, a confirmed failure `failed`
    assert [r.status for r in reports[:2]] == ["flaky", "flaky"]
    assert [r.status for r in reports[2:]] == ["failed"] * 4
    # And the per-test statistics count only same-commit flakes as flakes, and would
    # suggest no test but the flake for quarantine
    newest_first = reports[::-1]
    stats = {s.id: s for s in per_test(newest_first)}
    assert stats["tests/test_reg.py::test_reg"].flakes == 0
    assert stats["tests/test_reg.py::test_reg"].failures == 3
    assert stats["tests/test_bf.py::test_bf"].flakes == 0
    assert stats["tests/test_p.py::test_sometimes"].flakes >= 1
    assert stats["tests/test_order.py::test_b"].flakes == 6
    suggested = {s.test for s in suggestions(newest_first, Policy(flaky_commits=1))}
    assert suggested <= {"tests/test_p.py::test_sometimes", "tests/test_order.py::test_b"}
