"""Live results: each test's outcome reaches Redis as it happens, and the first failure
is seen (in the stream, the commit's hash and `ciq report --watch`) long before the
report. Real worker, real box, real pytest; and the worker's tail of the box's file
against what a hostile box may leave there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciq.runner.live import tail
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.live import first_failure, outcomes

from .helpers import ciq_env, run_ciq, wait_for, wait_report

EARLY_FAILURE = {
    "tests/test_a.py": "def test_fails():\n    assert 1 == 2, 'early on purpose'\n",
    "tests/test_b.py": "".join(f"import time\n\ndef test_slow_{i}():\n    time.sleep(1)\n\n"
                               for i in range(5)),
}


@pytest.mark.slow
def test_the_first_failure_is_seen_long_before_the_report(
    make_repo, worker, store: Store, settings: Settings
):
    # Given a suite whose first test fails and whose other tests take 5 s
    repo = make_repo(EARLY_FAILURE)
    path, sha = str(repo.path), repo.head()
    worker()
    watch = subprocess.Popen([sys.executable, "-m", "ciq", "report", path, sha, "--watch"],
                             env=ciq_env(settings), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        # When it runs
        assert run_ciq(settings, "enqueue", path).returncode == 0
        # Then its first failure is in the commit's hash and the stream while the report
        # does not exist yet
        failure = wait_for(lambda: first_failure(store, path, sha), 60, "the first failure")
        assert store.report(path, sha) is None
        assert failure["id"] == "tests/test_a.py::test_fails"
        assert "early on purpose" in failure["message"]
        seen = [o for _, o in outcomes(store, path, sha)]
        assert seen[0]["id"] == "tests/test_a.py::test_fails"
        report = wait_report(store, path, sha, timeout=60)
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    # And `--watch` said it before the report, whose timings keep when it came
    assert "first failure: tests/test_a.py::test_fails: " in err
    assert report.status == "failed" and "test_fails" in out
    # (seconds from the run's start, like the report's duration)
    assert 0 < report.timings["first_failure"] < report.duration - 3
    assert len([o for _, o in outcomes(store, path, sha) if o["run_id"] == report.run_id]) == 6


def test_the_tail_reads_only_a_plain_file_and_well_formed_lines(tmp_path: Path):
    # Given what a hostile box may leave where the live file goes: junk, a huge line,
    # a link to a worker's file, and one good outcome
    secret = tmp_path / "secret"
    secret.write_text(json.dumps({"id": "t.py::stolen", "outcome": "failed"}) + "\n")
    live = tmp_path / "live.jsonl"
    os.symlink(secret, live)
    got: list[dict] = []
    with tail(live, got.extend, time.monotonic()):
        time.sleep(1.2)
        assert got == []  # never through the link
        live.unlink()
        good = {"id": "t.py::test_x", "outcome": "failed", "duration": 0.1,
                "when": time.time(), "message": "boom"}
        live.write_text("not json\n" + "x" * 100_000 + "\n" + json.dumps([1, 2]) + "\n"
                        + json.dumps({"id": 5, "outcome": "passed"}) + "\n"
                        + json.dumps(good) + "\n")
        wait_for(lambda: got, 5, "the good line")
    assert [g["id"] for g in got] == ["t.py::test_x"]
