"""Reruns of failing tests on another worker when one is free, by real workers: the free
worker makes them; when it dies mid-rerun, the run that asked makes them itself."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ciq.settings import Settings
from ciq.store import Store
from ciq.store.shards import Shards

from .helpers import run_ciq, wait_for, wait_report

pytestmark = pytest.mark.slow


def _flaky(shared: Path, hang_on_rerun: bool = False) -> dict[str, str]:
    """A test failing on its first run only; with ``hang_on_rerun``, its first rerun hangs
    (for a minute: far beyond the test) and later ones pass."""
    first, second = shared / "ran-once", shared / "ran-twice"
    return {
        "tests/test_flaky.py": f"""\
import pathlib, time

FIRST, SECOND = pathlib.Path({str(first)!r}), pathlib.Path({str(second)!r})

def test_first_run_fails():
    if not FIRST.exists():
        FIRST.touch()
        raise AssertionError("first run")
    if {hang_on_rerun!r} and not SECOND.exists():
        SECOND.touch()
        time.sleep(60)
""",
        "tests/test_other.py": "def test_other():\n    pass\n",
    }


def _workers(worker) -> dict[str, object]:
    return {w.name: w for w in (worker("w1"), worker("w2"))}


def test_a_free_worker_makes_the_reruns(make_repo, worker, store: Store, settings: Settings,
                                        tmp_path: Path):
    # Given two free workers
    workers = _workers(worker)
    repo = make_repo(_flaky(tmp_path / "shared"))
    name = str(repo.path)

    # When a commit with a flaky test is tested
    assert run_ciq(settings, "enqueue", name).returncode == 0
    report = wait_report(store, name, repo.head(), timeout=120)

    # Then the other worker, free, made its reruns, and they found it flaky
    assert report.status == "flaky", report.message
    ran = report.worker.split("@")[0]
    other = next(n for n in workers if n != ran)
    flaked = next(t for t in report.tests if t.id.endswith("test_first_run_fails"))
    assert flaked.verdict == "flaky"
    assert flaked.attempts[0].kind == "run" and flaked.attempts[0].worker == report.worker
    reran_on = {a.worker.split("@")[0] for a in flaked.attempts[1:]}
    assert reran_on == {other}, flaked.attempts
    assert [w.split("@")[0] for w in report.deflake["workers"]] == [other]
    assert report.deflake["runs"] == 3  # alone three times; nothing ran before it


def test_a_rerun_whose_worker_dies_is_made_by_the_run_that_asked(
        make_repo, worker, store: Store, settings: Settings, tmp_path: Path):
    # Given two free workers and a flaky test whose first rerun hangs
    workers = _workers(worker)
    repo = make_repo(_flaky(tmp_path / "shared", hang_on_rerun=True))
    name = str(repo.path)
    assert run_ciq(settings, "enqueue", name).returncode == 0

    # When the worker making the reruns is killed mid-rerun
    def taker() -> str | None:
        for key in store.client.scan_iter("ciq:rerun:*"):
            who = store.client.hget(key, "taker")
            if who and (tmp_path / "shared" / "ran-twice").exists():
                return who.split("@")[0]
        return None

    name_of_taker = wait_for(taker, 60, "another worker to take the reruns")
    killed = workers[name_of_taker]
    t0 = time.monotonic()
    os.killpg(killed.pid, signal.SIGKILL)

    # Then the run that asked reruns the test itself, a lease lifetime or so later, and
    # the commit is still told flaky (the hung rerun is no evidence)
    report = wait_report(store, name, repo.head(), timeout=60)
    waited = time.monotonic() - t0
    assert report.status == "flaky", report.message
    assert not report.worker.startswith(name_of_taker)
    flaked = next(t for t in report.tests if t.id.endswith("test_first_run_fails"))
    assert {a.worker for a in flaked.attempts} == {report.worker}, flaked.attempts
    assert [a.outcome for a in flaked.attempts] == ["failed", "passed", "passed", "passed"]
    assert waited < 30, f"the report came {waited:.1f}s after the taker died"


def test_with_every_worker_busy_the_run_reruns_its_tests_itself(
        make_repo, worker, store: Store, settings: Settings, tmp_path: Path):
    # Given one worker only
    w = worker("w1")
    repo = make_repo(_flaky(tmp_path / "shared"))
    name = str(repo.path)

    # When a commit with a flaky test is tested
    assert run_ciq(settings, "enqueue", name).returncode == 0
    report = wait_report(store, name, repo.head(), timeout=120)

    # Then it made the reruns itself, after the short wait for a free worker
    assert report.status == "flaky", report.message
    flaked = next(t for t in report.tests if t.id.endswith("test_first_run_fails"))
    assert {a.worker for a in flaked.attempts} == {report.worker}
    # And the message asking for a free worker, taken once it was free, did nothing
    wait_for(lambda: "reruns taken elsewhere, or no longer wanted" in w.log_text(), 30,
             "the late rerun message to be dropped")
    assert not list(store.client.scan_iter("ciq:rerun:*"))


def test_a_sharded_run_tells_its_flaky_tests_too(make_repo, worker, store: Store,
                                                  settings: Settings, tmp_path: Path):
    # Given two workers and a sharded suite with a flaky test and a deterministic failure
    worker("w1")
    worker("w2")
    files = {**_flaky(tmp_path / "shared"), "ciq.toml": 'shard = "always"\n',
             **{f"tests/test_s{i}.py": f"import time\n\ndef test_{i}():\n    time.sleep(0.2)\n"
                for i in range(4)}}
    repo = make_repo(files)
    name = str(repo.path)
    wait_for(lambda: Shards(store, 2, 60, 1000).processes("ciq") >= 2, 10, "two workers")

    # When its head is tested
    assert run_ciq(settings, "enqueue", name).returncode == 0
    report = wait_report(store, name, repo.head(), timeout=120)

    # Then its chunks reran their failing test: the merged report passed with flakes
    assert report.shards["count"] >= 2
    assert report.status == "flaky", report.message
    assert report.message.startswith("passed with flakes: 1 flaky test: tests/test_flaky.py")
    flaked = next(t for t in report.tests if t.id.endswith("test_first_run_fails"))
    assert flaked.verdict == "flaky" and flaked.outcome == "passed"
    assert len(report.tests) == 6 and report.summary.failed == 0

    # When a commit adds a deterministic failure
    sha = repo.commit({"tests/test_red.py": "def test_red():\n    assert 1 == 2\n"}, "red")
    assert run_ciq(settings, "enqueue", name, sha).returncode == 0
    red = wait_report(store, name, sha, timeout=120)

    # Then it is confirmed and the commit failed
    assert red.status == "failed", red.message
    broken = next(t for t in red.tests if t.id == "tests/test_red.py::test_red")
    assert broken.verdict == "confirmed"
