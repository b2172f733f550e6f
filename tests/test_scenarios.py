"""End-to-end scenarios: real redis-server, real workers, real observers, real git."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciq.settings import Settings
from ciq.store import Store
from ciq.store.keys import task_id

from .helpers import (
    PASSING,
    alive,
    ciq_env,
    marker_test,
    run_ciq,
    runs_in,
    wait_for,
    wait_report,
)

pytestmark = pytest.mark.slow


def test_three_commits_in_one_poll_interval_give_three_ordered_reports(
    make_repo, worker, observer, store: Store, settings: Settings
):
    # Given a repository the observer watches (its first look tests the head) and a worker
    repo = make_repo(PASSING)
    name = str(repo.path)
    worker()
    observer(name, "--interval", "1.5")
    first = wait_report(store, name, repo.head())
    assert first.status == "passed"

    # When three commits land within one poll interval, the second one red
    shas = [
        repo.commit({"tests/test_a.py": "def test_a():\n    assert 1\n"}, "add a"),
        repo.commit({"tests/test_b.py": "def test_b():\n    assert 1 == 2\n"}, "add red b"),
        repo.commit({"tests/test_b.py": "def test_b():\n    assert 2 == 2\n"}, "fix b"),
    ]

    # Then each gets its own report, with the right outcomes, the newest first (main is
    # deprioritised: older unstarted commits wait in the backfill), the others in order
    reports = [wait_report(store, name, sha) for sha in shas]
    assert [r.status for r in reports] == ["passed", "failed", "passed"]
    assert {t.id: t.outcome for t in reports[1].tests} == {
        "tests/test_ok.py::test_ok": "passed",
        "tests/test_a.py::test_a": "passed",
        "tests/test_b.py::test_b": "failed",
    }
    assert "assert 1 == 2" in reports[1].tests[-1].message or any(
        "assert 1 == 2" in t.message for t in reports[1].tests
    )
    assert [r.summary.total for r in reports] == [2, 3, 3]
    starts = [r.started_at for r in reports]
    # (the worker may take the first before the observer claimed the newest)
    assert starts[2] < starts[1] and starts[0] < starts[1]
    assert all(r.attempts == 1 and r.branch == "main" for r in reports)

    # And `ciq status --json` lists them newest first
    listed = json.loads(run_ciq(settings, "status", name, "--json").stdout)
    assert [row["commit"] for row in listed] == [*reversed(shas), first.commit]
    assert [row["status"] for row in listed] == ["passed", "failed", "passed", "passed"]


def test_pool_child_killed_mid_run_is_rerun_and_reported_once(
    make_repo, worker, store: Store, settings: Settings, tmp_path: Path
):
    # Given a worker running a commit whose first run takes a minute
    marker = tmp_path / "shared" / "runs.txt"
    repo = make_repo({"tests/test_slow.py": marker_test(marker, 60)})
    w = worker()
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    wait_for(lambda: runs_in(marker), 30, "the first run to start")
    first_test_pid = runs_in(marker)[0]

    # When its pool process is killed with SIGKILL
    (child,) = w.pool_pids()
    os.kill(child, signal.SIGKILL)

    # Then the commit is run again and reported once, with attempts = 2
    report = wait_report(store, str(repo.path), repo.head(), timeout=60)
    assert report.status == "passed"
    assert report.attempts == 2
    assert len(runs_in(marker)) == 2
    # And the test process of the killed run did not outlive it
    wait_for(lambda: not alive(first_test_pid), 10, "the killed run's tests to die")
    assert store.finish(report.replace(status="failed")) is False  # never overwritten
    assert store.report(str(repo.path), repo.head()).status == "passed"


def test_whole_worker_killed_mid_run_is_rerun_on_another_worker(
    make_repo, worker, store: Store, settings: Settings, tmp_path: Path
):
    # Given two workers on two "hosts" (their own data folders), the first one busy
    marker = tmp_path / "shared" / "runs.txt"
    repo = make_repo({"tests/test_slow.py": marker_test(marker, 60)})
    first = worker("w1", data_dir=tmp_path / "host1")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    wait_for(lambda: runs_in(marker), 30, "the first run to start")
    worker("w2", data_dir=tmp_path / "host2")
    doomed_test = runs_in(marker)[0]

    # When the first worker (main process and pool) is killed with SIGKILL
    killed_at = time.monotonic()
    os.killpg(first.pid, signal.SIGKILL)
    first.proc.wait()

    # Then its test processes die with it
    wait_for(lambda: not alive(doomed_test), 5, "the killed worker's tests to die")
    # And the commit starts again on the second worker within seconds
    wait_for(lambda: len(runs_in(marker)) == 2, 15, "the rerun to start")
    recovery = time.monotonic() - killed_at
    report = wait_report(store, str(repo.path), repo.head())
    assert report.status == "passed" and report.attempts == 2
    assert report.worker.startswith("w2@")
    assert recovery < 10, f"rerun started {recovery:.1f}s after the kill"

    # And the worktree the killed run left behind is cleaned when its host restarts
    leftovers = list((tmp_path / "host1" / "runs").iterdir())
    assert leftovers, "the killed run should have left its folder behind"
    worker("w1b", data_dir=tmp_path / "host1")
    wait_for(lambda: not list((tmp_path / "host1" / "runs").iterdir()), 10,
             "the stale run folder to be swept")


def test_hanging_test_times_out_and_the_worker_goes_on(
    make_repo, worker, store: Store, settings: Settings, tmp_path: Path
):
    # Given a worker with a 3 s time limit and a commit whose test hangs
    marker = tmp_path / "shared" / "runs.txt"
    repo = make_repo({"tests/test_hang.py": marker_test(marker, 3600)})
    hanging = repo.head()
    worker(CIQ_TIME_LIMIT="3")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0

    # When a good commit follows it
    good = repo.commit({"tests/test_hang.py": "def test_quick():\n    pass\n"}, "unhang")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0

    # Then the hanging one is a `timeout` report within the limit, its tests killed
    report = wait_report(store, str(repo.path), hanging, timeout=30)
    assert report.status == "timeout"
    assert 3 <= report.duration < 8
    assert "time limit" in report.message
    wait_for(lambda: not alive(runs_in(marker)[0]), 5, "the hung test to be killed")
    # And the worker goes on with the next commit
    assert wait_report(store, str(repo.path), good, timeout=30).status == "passed"


def _queued_task_ids(store: Store, queue: str) -> list[str]:
    ids = []
    for raw in store.client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        assert json.loads(base64.b64decode(envelope["body"]))[0][1]  # a SHA argument
        ids.append(envelope["headers"]["id"])
    return ids


def test_observers_killed_and_doubled_skip_nothing_and_enqueue_nothing_twice(
    make_repo, observer, store: Store, settings: Settings
):
    # Given two observers polling one repository every 0.1 s (no worker: messages stay)
    repo = make_repo(PASSING)
    name = str(repo.path)
    shas = [repo.head()]
    observers = [observer(name, "--interval", "0.1"), observer(name, "--interval", "0.1")]
    wait_for(lambda: store.position(name, "main") == shas[0], 20, "the first poll")
    rng = random.Random(7)

    # When commits keep landing while observers are killed with SIGKILL at random
    # moments (between and during polls) and restarted
    for i in range(15):
        shas.append(repo.commit({f"tests/test_{i}.py": "def test_x():\n    pass\n"}, f"c{i}"))
        time.sleep(rng.uniform(0.0, 0.25))
        if i % 3 == 2:
            victim = observers.pop(rng.randrange(len(observers)))
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            observers.append(observer(name, "--interval", "0.1"))

    # Then every commit is enqueued exactly once, oldest first
    wait_for(lambda: store.position(name, "main") == shas[-1], 20, "observers to catch up")
    ids = _queued_task_ids(store, settings.queue)
    assert len(ids) == len(set(ids)), "a commit was enqueued twice"
    assert set(ids) == {task_id(name, s) for s in shas}
    # LPUSH + BRPOP: the list's tail is the oldest message
    assert list(reversed(ids)) == [task_id(name, s) for s in shas]


def test_bad_commits_get_error_reports_and_nothing_is_lost(
    make_repo, worker, store: Store, settings: Settings
):
    # Given a worker, a commit without tests/ and a commit the repository does not have
    repo = make_repo({"README": "no tests here\n"})
    worker()
    no_tests = repo.head()
    url = f"file://{repo.path}"
    unknown = "0123456789abcdef0123456789abcdef01234567"
    good = repo.commit(PASSING, "add tests")

    # When all three are enqueued (the unknown one through the URL form)
    for args in (["enqueue", str(repo.path), no_tests], ["enqueue", url, unknown],
                 ["enqueue", str(repo.path), good]):
        done = run_ciq(settings, *args)
        assert done.returncode == 0, done.stderr

    # Then each ends with exactly one report saying what went wrong
    missing = wait_report(store, str(repo.path), no_tests)
    assert missing.status == "error" and "no tests were collected" in missing.message
    absent = wait_report(store, url, unknown)
    assert absent.status == "error" and "could not check out" in absent.message
    assert wait_report(store, str(repo.path), good).status == "passed"
    shown = run_ciq(settings, "report", url, unknown[:8])
    assert shown.returncode == 0 and "ERROR" in shown.stdout


def test_report_is_stored_through_the_celery_results_backend(
    make_repo, worker, store: Store, settings: Settings
):
    # Given a commit tested by a real worker
    repo = make_repo(PASSING)
    worker()
    sha = run_ciq(settings, "enqueue", str(repo.path)).stdout.strip()
    report = wait_report(store, str(repo.path), sha)

    # Then Celery's own result API returns the same report for the run's task id
    from ciq.celery import create_app

    app = create_app(settings)
    result = app.AsyncResult(task_id(str(repo.path), sha))
    assert result.state == "SUCCESS"
    assert result.get(timeout=5) == report.to_dict()
    app.backend.client.close()

    # And `ciq report --wait` on a commit not yet made waits, then prints it as JUnit
    shown = run_ciq(settings, "report", str(repo.path), sha[:10], "--junit")
    assert shown.returncode == 0
    assert 'name="test_ok"' in shown.stdout and shown.stdout.startswith("<?xml")


def test_report_wait_follows_a_queued_commit(make_repo, worker, store, settings: Settings):
    repo = make_repo(PASSING)
    sha = run_ciq(settings, "enqueue", str(repo.path)).stdout.strip()
    # Given no worker yet: the report is not there
    early = run_ciq(settings, "report", str(repo.path), sha)
    assert early.returncode == 1 and "no report yet (queued)" in early.stderr
    # When a worker starts while `ciq report --wait` waits, the report comes
    waiting = subprocess.Popen(
        [sys.executable, "-m", "ciq", "report", str(repo.path), sha, "--wait", "60", "--json"],
        env=ciq_env(settings), stdout=subprocess.PIPE, text=True)
    worker()
    out, _ = waiting.communicate(timeout=90)
    assert waiting.returncode == 0
    assert json.loads(out)["status"] == "passed"


def test_report_watch_follows_a_commit_to_its_final_report(
    make_repo, worker, store, settings: Settings, tmp_path
):
    # Given a failing commit whose tests take a moment, queued with no worker yet
    repo = make_repo({"tests/test_slow.py": "import time\n\ndef test_slow():\n"
                                            "    time.sleep(2)\n    assert False\n"})
    sha = run_ciq(settings, "enqueue", str(repo.path)).stdout.strip()
    # When `ciq report --watch` follows it (piped: a line per change, on stderr)
    watching = subprocess.Popen(
        [sys.executable, "-m", "ciq", "report", str(repo.path), sha[:10], "--watch"],
        env=ciq_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    worker()
    out, err = watching.communicate(timeout=90)
    # Then it showed each state once, printed the report, and exits 1 (not passed)
    assert err.splitlines()[:2] == [f"{sha[:12]} queued",
                                    f"{sha[:12]} running on w1@{os.uname().nodename} "
                                    "(attempt 1)"], err
    assert out.startswith(f"FAILED  {sha}") and "tests/test_slow.py::test_slow" in out
    assert watching.returncode == 1
    # And a commit already reported is printed at once, exit 0 when it passed
    ok = repo.commit({"tests/test_slow.py": "def test_slow():\n    pass\n"}, "fix")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    wait_report(store, str(repo.path), ok)
    done = run_ciq(settings, "report", str(repo.path), ok, "--watch", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "passed"


def test_a_commit_whose_runs_keep_killing_their_worker_gets_an_error_report(
    make_repo, worker, store: Store, settings: Settings, tmp_path: Path
):
    # A commit's tests cannot reach their worker from their box any more; what they can
    # still do is make it die (a kernel OOM kill of the pool, a crash in a C extension
    # the worker shares): played here by killing the pool process at each run's start.
    marker = tmp_path / "shared" / "runs.txt"
    repo = make_repo({"tests/test_poison.py": marker_test(marker, 600).replace(
        "if not runs:", "if True:")})
    poison = repo.head()
    w = worker(CIQ_MAX_ATTEMPTS="2")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    good = repo.commit({"tests/test_poison.py": "def test_fine():\n    pass\n"}, "cure")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    for n in (1, 2):
        wait_for(lambda n=n: len(runs_in(marker)) >= n, 60, f"run {n} to start")
        for pid in w.pool_pids():
            os.kill(pid, signal.SIGKILL)

    # Then the poison commit stops after 2 runs with an error report that says why
    report = wait_report(store, str(repo.path), poison, timeout=60)
    assert report.status == "error"
    assert report.attempts == 2 and "gave up after 2 attempts" in report.message
    # And the commit behind it is not starved
    assert wait_report(store, str(repo.path), good, timeout=60).status == "passed"


@pytest.mark.slow
def test_flower_shows_runs_with_readable_names_and_arguments(
    settings: Settings, tmp_path: Path, make_repo, worker, store: Store
):
    import urllib.request

    from ciq.message import args_repr

    from .helpers import free_port, stop_process

    port = free_port()
    # Flower's JSON API answers only behind authentication (or when told it need not)
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "ciq", "flower", f"--port={port}",
         "--address=127.0.0.1"], env=ciq_env(settings, FLOWER_BASIC_AUTH="ops:secret"),
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        def get(path: str) -> bytes | None:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={
                "Authorization": "Basic " + base64.b64encode(b"ops:secret").decode()})
            try:
                with urllib.request.urlopen(request) as r:
                    return r.read()
            except OSError:
                return None

        wait_for(lambda: get("/healthcheck") == b"OK", 30, "flower to answer")
        # Given a worker (task events are on by default) and a commit run while Flower
        # listens
        worker()
        repo = make_repo(PASSING)
        assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
        wait_report(store, str(repo.path), repo.head())

        # Then Flower lists the run as ciq.run with the repository and the short SHA
        def listed() -> dict | None:
            tasks = json.loads(get("/api/tasks") or b"{}")
            return tasks.get(task_id(str(repo.path), repo.head()))

        task = wait_for(lambda: (t := listed()) and t.get("state") == "SUCCESS" and t, 30,
                        "flower to see the run")
        assert task["name"] == "ciq.run"
        assert task["args"] == args_repr(str(repo.path), repo.head(), "main")
        assert repo.head()[:12] in task["args"] and repo.head() not in task["args"]
    finally:
        stop_process(proc)
