"""Sharded runs end to end: real redis-server, real `celery -A ciq worker` processes, real
git and real pytest, one commit's tests spread over several workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciq.runner.commit import Checkout, collect, prepare, run_tests
from ciq.runner.runs import RunSpec
from ciq.settings import Settings
from ciq.store import Store, keys
from ciq.store.keys import SHARDED, repo_id
from ciq.store.shards import Shards

from .helpers import run_ciq, wait_for, wait_report

pytestmark = pytest.mark.slow


def sleepy_suite(n: int, seconds: float, name: str = "test_s") -> dict[str, str]:
    """``n`` test files of one test each sleeping ``seconds``, which say where they ran."""
    body = ("import os, time\n\ndef test_{i}():\n    time.sleep({s})\n"
            "    print('ran-on', os.getpid())\n")
    return {f"tests/{name}{i}.py": body.format(i=i, s=seconds) for i in range(n)}


def enqueue(settings: Settings, path: str) -> str:
    done = run_ciq(settings, "enqueue", path)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_commit_is_split_over_two_workers_and_merged_into_one_report(
    make_repo, worker, store: Store, settings: Settings
):
    # Given two workers and a repository that always shards its 8 tests of 0.5 s
    repo = make_repo({**sleepy_suite(8, 0.5), "ciq.toml": 'shard = "always"\n'})
    w1, w2 = worker("w1"), worker("w2")
    wait_for(lambda: Shards(store, 2, 60, 1000).processes("ciq") >= 2, 10, "two workers")

    # When the commit is enqueued
    report = wait_report(store, str(repo.path), enqueue(settings, str(repo.path)))

    # Then one passed report holds every test exactly once, run in several chunks on both
    assert report.status == "passed", report.message
    ids = [t.id for t in report.tests]
    assert sorted(ids) == sorted(f"tests/test_s{i}.py::test_{i}" for i in range(8))
    assert len(ids) == len(set(ids))
    assert report.shards["count"] >= 2
    chunks = report.shards["chunks"]
    assert sum(c["tests"] for c in chunks) == 8
    assert {c["worker"].split("@")[0] for c in chunks} == {"w1", "w2"}
    assert report.shards["imbalance"] >= 1.0
    assert "sharded" not in report.message
    # Timings: the planning run's checkout, setup and collect, then the chunks' phase
    assert set(report.timings) == {"checkout", "setup", "collect", "test"}
    assert 1.0 <= report.timings["test"] <= report.duration
    # And the plan is gone, the durations are kept for the next plan
    assert not store.client.sismember(SHARDED, f"{repo_id(str(repo.path))}:{repo.head()}")
    kept = store.client.hgetall(keys.durations(repo_id(str(repo.path))))
    assert len(kept) == 8 and all(float(v) >= 0.5 for v in kept.values())
    # And `ciq report` says how it was split
    shown = run_ciq(settings, "report", str(repo.path), repo.head()).stdout
    assert f"sharded: {report.shards['count']} chunks" in shown
    del w1, w2


def test_a_failing_chunk_fails_the_commit_and_a_test_that_kills_pytest_is_an_error(
    make_repo, worker, store: Store, settings: Settings
):
    files = {
        **sleepy_suite(4, 0.2),
        "tests/test_red.py": "def test_red():\n    assert 1 == 2, 'red on purpose'\n",
        # pytest dies here without writing its JUnit XML: its chunk's tests vanish.
        "tests/test_exit.py": "import os\n\ndef test_exit():\n    os._exit(0)\n",
        "ciq.toml": 'shard = "always"\n',
    }
    repo = make_repo(files)
    path = str(repo.path)
    # As measured before: the two are the longest, each a chunk of its own.
    store.client.hset(keys.durations(repo_id(path)), mapping={
        "tests/test_exit.py::test_exit": 10, "tests/test_red.py::test_red": 9})
    worker("w1", concurrency=2)
    report = wait_report(store, path, enqueue(settings, path))
    assert report.shards["count"] >= 2
    outcomes = {t.id: t.outcome for t in report.tests}
    assert len(outcomes) == len(report.tests) == 6  # every test once, none dropped
    assert outcomes["tests/test_red.py::test_red"] == "failed"
    assert outcomes["tests/test_exit.py::test_exit"] == "error"
    lost = next(t for t in report.tests if t.id == "tests/test_exit.py::test_exit")
    assert "not reported by chunk" in lost.message
    assert report.status == "error"  # a chunk lost tests: worse than a failure


def test_fail_fast_reports_at_the_first_failing_chunk_and_names_what_did_not_run(
    make_repo, worker, store: Store, settings: Settings
):
    files = {
        # The longest test runs first, in the first chunk, and fails.
        "tests/test_red.py": "import time\n\ndef test_red():\n    time.sleep(0.5)\n"
                             "    assert False\n",
        **sleepy_suite(6, 3.0, "test_slow"),
        "ciq.toml": 'shard = "always"\nfail_fast = true\n',
    }
    repo = make_repo(files)
    path = str(repo.path)
    # Durations as if measured before: the red test is the longest, so it goes first.
    store.client.hset(keys.durations(repo_id(path)), mapping={
        "tests/test_red.py::test_red": 30, **{f"tests/test_slow{i}.py::test_{i}": 3
                                              for i in range(6)}})
    worker("w1")  # one process: the chunks run one after the other
    t0 = time.monotonic()
    report = wait_report(store, path, enqueue(settings, path))
    took = time.monotonic() - t0
    assert report.status == "failed"
    assert [t.id for t in report.tests] == ["tests/test_red.py::test_red"]
    assert len(report.not_run) == 6 and "tests did not run" in report.message
    assert took < 6 * 3.0  # it did not wait for the slow chunks


def test_a_chunk_whose_worker_dies_runs_again_elsewhere_and_the_merge_waits_for_it(
    make_repo, worker, store: Store, settings: Settings, tmp_path: Path
):
    marker = tmp_path / "shared" / "marker"
    victim = (f"import os, pathlib, time\n\nMARK = pathlib.Path({str(marker)!r})\n\n"
              "def test_victim():\n    first = not MARK.exists()\n"
              "    MARK.open('a').write(f'{os.getpid()}\\n')\n"
              "    if first:\n        time.sleep(60)\n")
    repo = make_repo({**sleepy_suite(3, 0.3), "tests/test_victim.py": victim,
                      "ciq.toml": 'shard = "always"\n'})
    path = str(repo.path)
    # The victim is the longest test by far: the planning run keeps it as its own chunk.
    store.client.hset(keys.durations(repo_id(path)), mapping={
        "tests/test_victim.py::test_victim": 50,
        **{f"tests/test_s{i}.py::test_{i}": 1.5 for i in range(3)}})
    # (a 10 s lease: the chunk is rerun long before it would expire, since the watcher
    # sees its holder's connections go)
    w1 = worker("w1", data_dir=tmp_path / "host1", CIQ_LEASE_TTL="10")
    sha = enqueue(settings, path)
    wait_for(marker.exists, 60, "the victim's first run")
    w2 = worker("w2", data_dir=tmp_path / "host2", CIQ_LEASE_TTL="10")
    killed = time.monotonic()
    os.killpg(w1.pid, signal.SIGKILL)  # the whole first host goes
    wait_for(lambda: len(marker.read_text().split()) == 2, 30, "the victim's rerun")
    assert time.monotonic() - killed < 6, "the chunk waited for its lease to expire"
    report = wait_report(store, path, sha, timeout=90)
    assert report.status == "passed", report.message
    assert sorted(t.id for t in report.tests) == sorted(
        ["tests/test_victim.py::test_victim", *(f"tests/test_s{i}.py::test_{i}"
                                                for i in range(3))])
    runs = marker.read_text().split()
    assert len(runs) == 2
    victim_chunk = next(c for c in report.shards["chunks"] if c["attempts"] == 2)
    assert victim_chunk["worker"].startswith("w2@")
    del w2


def test_auto_does_not_shard_a_short_suite_or_for_a_single_worker_process(
    make_repo, worker, store: Store, settings: Settings
):
    repo = make_repo(sleepy_suite(4, 0.1))
    w1 = worker("w1")
    report = wait_report(store, str(repo.path), enqueue(settings, str(repo.path)))
    assert report.status == "passed" and report.shards == {}
    assert report.summary.total == 4
    # A worker announces its pool for the plans, and signs off when it stops
    shards = Shards(store, 2, 60, 1000)
    assert shards.processes("ciq") == 1
    w1.proc.terminate()
    assert w1.proc.wait(timeout=30) is not None
    assert shards.processes("ciq") == 0


def test_a_large_suite_is_sharded_whole_and_its_durations_kept(
    make_repo, worker, store: Store, settings: Settings
):
    # Given 3,000 trivial tests in 30 files, always sharded, on one worker of two
    # processes whose output limit is far below the collection's list of ids
    body = "".join(f"def test_{i}():\n    pass\n\n" for i in range(100))
    repo = make_repo({**{f"tests/test_m{f}.py": body for f in range(30)},
                      "ciq.toml": 'shard = "always"\n'})
    worker("w1", concurrency=2, CIQ_OUTPUT_LIMIT="4096")
    wait_for(lambda: Shards(store, 2, 60, 1000).processes("ciq") >= 2, 10, "two processes")
    report = wait_report(store, str(repo.path), enqueue(settings, str(repo.path)),
                         timeout=120)
    # Then every collected test ran, once, and the report says so
    assert report.status == "passed", report.message
    assert report.summary.passed == 3000 and len({t.id for t in report.tests}) == 3000
    assert report.shards["count"] >= 2
    # And all their durations are kept for the next plan
    assert store.client.hlen(keys.durations(repo_id(str(repo.path)))) == 3000


ODD_IDS = '''import pytest

ODD = ["a b", "[x]", "\\u00e9t\\u00e9", "\\u96ea", "a::b.c", "x\\ny", "$(touch /tmp/pwn) `id`",
       "'q\\"", "-k", "--collect-only", "*", "a;b|c&d", "tab\\there"]


@pytest.mark.parametrize("value", ODD)
def test_odd(value):
    pass


class TestNested:
    @pytest.mark.parametrize("n", range(4))
    def test_n(self, n):
        pass
'''
#: A file that says when it is imported: no chunk without its tests may collect it.
TATTLER = ('import pathlib\n\npathlib.Path(__file__).with_name("imported").touch()\n\n'
           'def test_elsewhere():\n    pass\n')


def direct_run(settings: Settings, repo, sha: str, name: str) -> RunSpec:
    """A run of the runner alone, as a worker makes it: no Redis, no Celery."""
    return RunSpec(repo=str(repo.path), sha=sha, branch="main", run_id=f"{name}-{sha[:8]}",
                   worker="test@host", attempts=1, data_dir=settings.data_dir,
                   time_limit=300, output_limit=100_000, env_root=settings.env_root)


@pytest.mark.parametrize("pytest_pin", ["pytest==7.4.4", None], ids=["pytest7", "newest"])
def test_a_chunk_runs_exactly_its_ids_whatever_characters_they_hold(
    make_repo, settings: Settings, pytest_pin: str | None
):
    # Given a suite with parametrised ids of spaces, brackets, unicode, shell and option
    # characters, in a commit whose environment has an old or the newest pytest
    files = {"tests/test_odd.py": ODD_IDS, "tests/sub/test_deep.py": "def test_deep():\n"
             "    pass\n", "tests/test_tattler.py": TATTLER,
             "tests/requirements.txt": f"{pytest_pin or 'pytest'}\n"}
    repo = make_repo(files)
    with prepare(direct_run(settings, repo, repo.head(), "chunk")) as ready:
        assert isinstance(ready, Checkout), ready
        # When its tests are collected
        ids = collect(ready)
        assert ids is not None and len(ids) == 13 + 4 + 2
        assert "tests/test_odd.py::test_odd[x\\ny]" in ids  # pytest's own (escaped) id
        assert len(set(ids)) == len(ids)
        assert ready.timings["collect"] > 0
        version = subprocess.run([str(ready.overlay / "bin" / "python"), "-c",
                                  "import pytest; print(pytest.__version__)"],
                                 capture_output=True, text=True).stdout
        assert version.startswith("7.4.4" if pytest_pin else ("8", "9"))
        tattled = ready.worktree / "tests" / "imported"
        assert tattled.exists()
        tattled.unlink()
        # And a chunk of them is run: every other odd id, one nested and the deep test
        chunk = [i for i in ids if "test_odd[" in i][::2] + [
            "tests/test_odd.py::TestNested::test_n[2]", "tests/sub/test_deep.py::test_deep"]
        report = run_tests(ready, chunk)
    # Then exactly those tests ran, under the ids the collection gave them
    assert report.status == "passed", f"{report.message}\n{report.output}"
    assert sorted(t.id for t in report.tests) == sorted(chunk)
    assert report.summary.total == len(chunk) == 9
    assert f"({len(chunk)} tests of a sharded run)" in report.command
    # And its pytest was pointed at the files of its ids only (the ids went in a file)
    assert not tattled.exists()


def test_a_collection_pytest_counts_differently_is_not_sharded(make_repo, settings: Settings,
                                                               caplog):
    # Given a suite where something (a plugin, a conftest) makes the ids and pytest's
    # own count disagree: here a summary line of its own after pytest's
    conftest = ("def pytest_unconfigure(config):\n"
                "    print('\\n99 tests collected in 0.01s')\n")
    repo = make_repo({"tests/test_a.py": "def test_a():\n    pass\n\ndef test_b():\n"
                      "    pass\n", "tests/conftest.py": conftest})
    with prepare(direct_run(settings, repo, repo.head(), "count")) as ready:
        assert isinstance(ready, Checkout), ready
        # When it is collected, it is not planned (the whole suite runs: always right)
        with caplog.at_level("WARNING"):
            assert collect(ready) is None
    assert "pytest counted 99 tests but listed 2" in caplog.text
    # Nor is one with collection errors, even where pytest's exit status hides them
    hide = ("import pytest\n\n@pytest.hookimpl(trylast=True)\n"
            "def pytest_sessionfinish(session):\n    session.exitstatus = 0\n")
    sha = repo.commit({"tests/test_broken.py": "import no_such_module\n",
                       "pytest.ini": "[pytest]\naddopts = --continue-on-collection-errors\n",
                       "tests/conftest.py": hide})
    caplog.clear()
    with prepare(direct_run(settings, repo, sha, "errors")) as ready:
        assert isinstance(ready, Checkout), ready
        with caplog.at_level("WARNING"):
            assert collect(ready) is None
    assert "pytest counted 1 collection errors" in caplog.text


def test_a_sharded_run_reports_every_collected_test_once_under_its_collected_id(
    make_repo, worker, store: Store, settings: Settings
):
    # Given a suite of odd parametrised ids and sleepy tests, always sharded, on two
    # worker processes
    repo = make_repo({"tests/test_odd.py": ODD_IDS, **sleepy_suite(4, 0.3),
                      "ciq.toml": 'shard = "always"\n'})
    listing = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                              "no:cacheprovider"], cwd=repo.path, capture_output=True,
                             text=True).stdout
    collected = [line for line in listing.splitlines() if "::" in line]
    assert len(collected) == 13 + 4 + 4
    worker("w1", concurrency=2)
    wait_for(lambda: Shards(store, 2, 60, 1000).processes("ciq") >= 2, 10, "two processes")

    # When the commit is run
    report = wait_report(store, str(repo.path), enqueue(settings, str(repo.path)))

    # Then its report has every collected test once, as collected, and nothing else
    assert report.status == "passed", report.message
    assert report.shards["count"] >= 2
    assert sorted(t.id for t in report.tests) == sorted(collected)
    assert report.summary.total == len(collected)
    assert sum(c["tests"] for c in report.shards["chunks"]) == len(collected)
    assert not any("unplanned" in c for c in report.shards["chunks"])


def test_chunks_run_as_another_user_find_their_selection(
    system_venv: Path, make_repo, worker, store: Store, settings: Settings
):
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.fail("this test needs root, as CIQ_RUN_AS does")
    # Given a root worker of two processes whose tests run as `nobody`
    data = Path(tempfile.mkdtemp(prefix="ciq-runas-"))
    data.chmod(0o711)
    try:
        repo = make_repo({"tests/test_odd.py": ODD_IDS, **sleepy_suite(3, 0.2),
                          "ciq.toml": 'shard = "always"\n'})
        worker(python=str(system_venv / "bin" / "python"), data_dir=data, concurrency=2,
               CIQ_RUN_AS="nobody", CIQ_ENV_DIR=str(data / "envs"))
        wait_for(lambda: Shards(store, 2, 60, 1000).processes("ciq") >= 2, 10, "processes")
        # When a commit is sharded, its chunks read their ids and the plugin as `nobody`
        report = wait_report(store, str(repo.path), enqueue(settings, str(repo.path)),
                             timeout=120)
        # Then every collected test ran once
        assert report.status == "passed", f"{report.message}\n{report.output}"
        assert report.shards["count"] >= 2
        assert report.summary.total == len({t.id for t in report.tests}) == 13 + 4 + 3
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_a_chunk_message_lost_from_the_queue_is_sent_again(
    make_repo, worker, store: Store, settings: Settings
):
    # Given one worker process running chunk 1 of a sharded commit (4 s), the other
    # chunks waiting on the queue
    repo = make_repo({**sleepy_suite(4, 1.0), "ciq.toml": 'shard = "always"\n'})
    path = str(repo.path)
    store.client.hset(keys.durations(repo_id(path)), mapping={
        f"tests/test_s{i}.py::test_{i}": 1.0 for i in range(4)})
    worker("w1")
    sha = enqueue(settings, path)
    wait_for(lambda: store.client.sismember(SHARDED, f"{repo_id(path)}:{sha}"), 60, "the plan")
    wait_for(lambda: store.client.llen(settings.queue) > 0, 10, "the other chunks queued")
    # When their messages are taken off the broker's list by hand
    store.client.delete(settings.queue)
    # Then the reconciler sends them again (they were never taken, nor queued any more),
    # and the commit gets its whole report, not an error at the plan's time limit
    report = wait_report(store, path, sha, timeout=60)
    assert report.status == "passed", report.message
    assert report.summary.total == 4 and report.shards["count"] >= 2
