"""Faults with real processes and real signals: Redis restarts, shutdowns, hostile
messages and duplicate deliveries."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import time
from pathlib import Path

import pytest

from ciq.message import run_message
from ciq.settings import Settings
from ciq.store import Store

from .helpers import (
    PASSING,
    alive,
    marker_test,
    run_ciq,
    runs_in,
    settings_for,
    wait_for,
    wait_report,
)

pytestmark = pytest.mark.slow


def timed_test(log: Path, seconds: float) -> str:
    """A test that logs "start <sha> <run> <t>" and "end ..." around a sleep; <run> is
    a random number (pids repeat across boxes, each has its own PID namespace)."""
    return f"""\
import os, subprocess, time

SHA = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
RUN = int.from_bytes(os.urandom(6), "big")

def test_takes_a_while():
    with open({str(log)!r}, "a") as fh:
        fh.write(f"start {{SHA}} {{RUN}} {{time.time()}}\\n")
    time.sleep({seconds})
    with open({str(log)!r}, "a") as fh:
        fh.write(f"end {{SHA}} {{RUN}} {{time.time()}}\\n")
"""


def events(log: Path) -> list[tuple[str, str, int, float]]:
    if not log.exists():
        return []
    rows = (line.split() for line in log.read_text().splitlines())
    return [(kind, sha, int(pid), float(t)) for kind, sha, pid, t in rows]


def overlapping_runs(log: Path) -> list[str]:
    """Commits two of whose runs overlapped in time."""
    runs: dict[tuple[str, int], dict[str, float]] = {}
    for kind, sha, pid, t in events(log):
        runs.setdefault((sha, pid), {})[kind] = t
    by_sha: dict[str, list[tuple[float, float]]] = {}
    for (sha, _), span in runs.items():
        by_sha.setdefault(sha, []).append((span["start"], span.get("end", float("inf"))))
    bad = []
    for sha, spans in by_sha.items():
        spans.sort()
        if any(nxt[0] < prev[1] for prev, nxt in zip(spans, spans[1:], strict=False)):
            bad.append(sha)
    return bad


def test_a_report_made_while_redis_is_down_is_delivered_when_it_is_back(
    own_redis, worker, make_repo, tmp_path: Path
):
    # Given a worker on a Redis with AOF, running a 3 s test
    settings = settings_for(own_redis.url, tmp_path / "data")
    log = tmp_path / "shared" / "events"
    repo = make_repo({"tests/test_t.py": timed_test(log, 3)})
    worker(CIQ_BROKER_URL=own_redis.url, CIQ_RESULT_BACKEND=own_redis.url)
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    wait_for(lambda: events(log), 30, "the run to start")

    # When Redis stops while the run goes on, and comes back after the run has ended
    own_redis.stop()
    wait_for(lambda: len(events(log)) == 2, 15, "the run to end")
    time.sleep(2)
    own_redis.start()

    # Then the report is there, from that one run
    store = Store.from_url(own_redis.url)
    report = wait_report(store, str(repo.path), repo.head(), timeout=30)
    assert report.status == "passed" and report.attempts == 1
    assert len(events(log)) == 2
    # And the worker takes new work after reconnecting (it does not sit idle)
    good = repo.commit({"tests/test_t.py": "def test_quick():\n    pass\n"}, "quick")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    assert wait_report(store, str(repo.path), good, timeout=30).status == "passed"


def test_a_redis_restart_mid_burst_loses_no_commit_and_no_report(
    own_redis, worker, make_repo, tmp_path: Path
):
    # Given two workers and ten queued commits of a suite that takes ~0.5 s
    settings = settings_for(own_redis.url, tmp_path / "data")
    log = tmp_path / "shared" / "events"
    repo = make_repo({"tests/test_t.py": timed_test(log, 0.5)})
    env = {"CIQ_BROKER_URL": own_redis.url, "CIQ_RESULT_BACKEND": own_redis.url}
    worker("w1", data_dir=tmp_path / "h1", **env)
    worker("w2", data_dir=tmp_path / "h2", **env)
    shas = []
    for i in range(10):
        shas.append(repo.commit({f"f{i}": "x"}, f"c{i}"))
        assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    store = Store.from_url(own_redis.url)
    wait_for(lambda: store.report(str(repo.path), shas[1]), 30, "the first reports")

    # When Redis is restarted in the middle of the burst
    own_redis.stop()
    time.sleep(1)
    own_redis.start()

    # Then every commit ends with one report, and no commit ran twice at the same time
    reports = [wait_report(store, str(repo.path), s, timeout=60) for s in shas]
    assert all(r.status == "passed" for r in reports), [
        (r.status, r.attempts, r.message[:300]) for r in reports if r.status != "passed"]
    assert overlapping_runs(log) == []


def test_warm_shutdown_finishes_the_run_first(worker, make_repo, store: Store,
                                              settings: Settings, tmp_path: Path):
    # Given a worker running a 3 s test
    log = tmp_path / "shared" / "events"
    repo = make_repo({"tests/test_t.py": timed_test(log, 3)})
    w = worker()
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    wait_for(lambda: events(log), 30, "the run to start")
    # When it gets SIGTERM (a warm shutdown)
    w.proc.send_signal(signal.SIGTERM)
    # Then it finishes the run, stores the report, and exits
    assert w.proc.wait(30) == 0
    report = store.report(str(repo.path), repo.head())
    assert report is not None and report.status == "passed" and report.attempts == 1


def test_cold_shutdown_mid_run_kills_the_tests_and_another_worker_reruns(
    worker, make_repo, store: Store, settings: Settings, tmp_path: Path
):
    # Given a worker in the middle of a long run, and a second worker
    marker = tmp_path / "shared" / "runs.txt"
    repo = make_repo({"tests/test_slow.py": marker_test(marker, 60)})
    first = worker("w1", data_dir=tmp_path / "h1")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    wait_for(lambda: runs_in(marker), 30, "the run to start")
    worker("w2", data_dir=tmp_path / "h2")
    # When the first one gets SIGQUIT (a cold shutdown)
    first.proc.send_signal(signal.SIGQUIT)
    first.proc.wait(30)
    # Then its tests die, and the commit is rerun and reported once
    wait_for(lambda: not alive(runs_in(marker)[0]), 10, "the tests to die")
    report = wait_report(store, str(repo.path), repo.head(), timeout=30)
    assert report.status == "passed" and report.attempts == 2
    assert report.worker.startswith("w2@")


def test_a_pickled_message_is_rejected_and_never_executed(
    worker, make_repo, store: Store, settings: Settings, tmp_path: Path
):
    # Given a message whose pickle would create a file when loaded
    proof = tmp_path / "pwned"
    w = worker()

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {proof}",))

    body = pickle.dumps(Exploit())
    envelope = json.loads(run_message("/r", "a" * 40, None, settings.queue))
    envelope["body"] = base64.b64encode(body).decode()
    envelope["content-type"] = "application/x-python-serialize"
    envelope["content-encoding"] = "binary"
    store.client.lpush(settings.queue, json.dumps(envelope))

    # Then the worker refuses it, says so, and goes on with real work
    wait_for(lambda: "ContentDisallowed" in w.log_text() or "disallowed" in w.log_text(),
             20, "the worker to log the rejection")
    repo = make_repo(PASSING)
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    assert wait_report(store, str(repo.path), repo.head()).status == "passed"
    assert not proof.exists()
    assert store.client.llen(settings.queue) == 0


def test_a_duplicate_delivery_of_a_live_run_stands_down(
    worker, make_repo, store: Store, settings: Settings, tmp_path: Path
):
    # Given two workers, one of them in the middle of a 6 s run
    log = tmp_path / "shared" / "events"
    repo = make_repo({"tests/test_t.py": timed_test(log, 6)})
    worker("w1", data_dir=tmp_path / "h1")
    worker("w2", data_dir=tmp_path / "h2")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    wait_for(lambda: events(log), 30, "the run to start")

    # When the broker delivers the same message again (as its restore sweep does for a
    # run longer than the visibility timeout)
    store.client.lpush(settings.queue, run_message(str(repo.path), repo.head(), "main",
                                                   settings.queue))

    # Then the copy stands down: one run, one report, attempts 1
    report = wait_report(store, str(repo.path), repo.head(), timeout=30)
    assert report.attempts == 1
    time.sleep(1)
    assert [e[0] for e in events(log)] == ["start", "end"]


def test_a_redis_with_a_password(tmp_path: Path, worker, make_repo):
    from .helpers import RedisServer

    server = RedisServer(tmp_path / "secret-redis")
    server.start()
    try:
        import redis

        redis.Redis(port=server.port).config_set("requirepass", "s3cret")
        url = f"redis://:s3cret@127.0.0.1:{server.port}/2"
        settings = settings_for(url, tmp_path / "data")
        worker(CIQ_BROKER_URL=url, CIQ_RESULT_BACKEND=url)
        repo = make_repo(PASSING)
        done = run_ciq(settings, "enqueue", str(repo.path))
        assert done.returncode == 0, done.stderr
        store = Store.from_url(url)
        assert wait_report(store, str(repo.path), repo.head()).status == "passed"
        wrong = settings_for(url.replace("s3cret", "guess"), tmp_path / "data")
        refused = run_ciq(wrong, "enqueue", str(repo.path))
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    finally:
        server.stop()


def test_submodules_are_not_fetched_and_hooks_never_run(
    worker, make_repo, store: Store, settings: Settings, tmp_path: Path
):
    # Given a repository with a submodule pointing elsewhere, whose tests check it
    other = make_repo({"secret.txt": "from elsewhere\n"})
    repo = make_repo(PASSING)
    repo.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(other.path),
             "sub")
    repo.commit({"tests/test_sub.py": (
        "import os\n\ndef test_submodule_is_empty():\n    assert os.listdir('sub') == []\n")},
        "add a submodule")
    worker()
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    first = wait_report(store, str(repo.path), repo.head())
    assert first.status == "passed", first.output

    # When hooks appear in the worker's mirror (as a hostile fetch might plant them)
    proof = tmp_path / "hook-ran"
    for mirror in (settings.data_dir / "mirrors").glob("*.git"):
        for hook in ("post-checkout", "reference-transaction", "post-index-change"):
            path = mirror / "hooks" / hook
            path.write_text(f"#!/bin/sh\necho {hook} $PWD $GIT_DIR >> {proof}\n")
            path.chmod(0o755)
    second = repo.commit({"x": "1"}, "another")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0

    # Then no hook ran
    assert wait_report(store, str(repo.path), second).status == "passed"
    assert not proof.exists()


def test_a_redis_over_tls(tmp_path: Path, worker, make_repo):
    import shutil
    import subprocess

    from .helpers import free_port, stop_process

    # Given a redis-server that speaks only TLS, with a certificate of our own
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
         "--bind", "127.0.0.1", "--tls-cert-file", str(tmp_path / "cert.pem"),
         "--tls-key-file", str(tmp_path / "key.pem"), "--tls-ca-cert-file",
         str(tmp_path / "cert.pem"), "--tls-auth-clients", "no", "--save", "",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        url = (f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required"
               f"&ssl_ca_certs={tmp_path / 'cert.pem'}")
        store = Store.from_url(url)
        wait_for(lambda: _pings(store), 10, "the TLS redis-server")
        # When a worker and `ciq enqueue` use rediss:// URLs
        settings = settings_for(url, tmp_path / "data")
        worker(CIQ_BROKER_URL=url, CIQ_RESULT_BACKEND=url)
        repo = make_repo(PASSING)
        done = run_ciq(settings, "enqueue", str(repo.path))
        assert done.returncode == 0, done.stderr
        # Then the commit is tested and reported over TLS
        assert wait_report(store, str(repo.path), repo.head()).status == "passed"
    finally:
        stop_process(server)


def _pings(store: Store) -> bool:
    try:
        return bool(store.client.ping())
    except Exception:
        return False


HOSTILE = """\
import os, pathlib, shutil

import pytest


def test_runs_as_another_user():
    assert os.geteuid() != 0


def test_cannot_delete_the_mirrors():
    with pytest.raises(OSError):  # read-only in the box
        shutil.rmtree("../../../mirrors")


def test_cannot_see_other_runs():
    assert os.listdir("../..") == [os.path.basename(os.path.dirname(os.getcwd()))]


def test_cannot_enter_the_outbox():
    with pytest.raises(FileNotFoundError):  # not in the box at all
        os.listdir("../../../outbox")


def test_cannot_see_its_run_record():
    assert not pathlib.Path("../run.json").exists()  # the worker's, outside the box
"""


def test_tests_run_as_another_user_cannot_reach_the_workers_files(
    system_venv: Path, worker, make_repo, store: Store, settings: Settings
):
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.fail("this test needs root, as CIQ_RUN_AS does")
    # Given a worker (root) whose tests run as `nobody`, in a data folder others can pass
    data = Path(tempfile.mkdtemp(prefix="ciq-runas-"))
    data.chmod(0o711)
    try:
        repo = make_repo({"tests/test_hostile.py": HOSTILE})
        worker(python=str(system_venv / "bin" / "python"), data_dir=data,
               CIQ_RUN_AS="nobody", CIQ_ENV_DIR=str(data / "envs"))
        # When a commit whose tests try to delete what they can reach is run
        assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
        report = wait_report(store, str(repo.path), repo.head(), timeout=60)
        # Then every attempt failed for lack of permission, and the worker is unharmed
        assert report.status == "passed", report.output
        assert report.summary.passed == 5
        mirrors = list((data / "mirrors").glob("*.git"))
        assert mirrors and (mirrors[0] / "objects").is_dir()
        second = repo.commit({"tests/test_more.py": "def test_more():\n    pass\n"}, "more")
        assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
        assert wait_report(store, str(repo.path), second, timeout=60).summary.passed == 6
    finally:
        shutil.rmtree(data, ignore_errors=True)


ALIVE_TEST = """\
import os, time

LOG = {log!r}
RUN = int.from_bytes(os.urandom(6), "big")

def test_lives_a_while():
    until = time.time() + {seconds}
    while time.time() < until:
        with open(LOG, "a") as fh:
            fh.write(f"{{RUN}} {{time.time()}}\\n")
        time.sleep(0.1)
"""


def test_a_redis_stall_longer_than_the_lease_never_gives_two_live_runs(
    own_redis, worker, make_repo, tmp_path: Path
):
    # Given two workers with a 2 s lease, and a commit whose test lives 16 s, logging
    # that it is alive every 0.1 s
    settings = settings_for(own_redis.url, tmp_path / "data")
    log = tmp_path / "shared" / "alive"
    repo = make_repo({"tests/test_alive.py": ALIVE_TEST.format(log=str(log), seconds=16)})
    # (one attempt allowed: a run that lost its lease to a stall is no death, so a stall
    # must never end in "gave up after 1 attempts")
    env = {"CIQ_BROKER_URL": own_redis.url, "CIQ_RESULT_BACKEND": own_redis.url,
           "CIQ_LEASE_TTL": "2", "CIQ_RECONCILE_INTERVAL": "0.5", "CIQ_MAX_ATTEMPTS": "1"}
    worker("w1", data_dir=tmp_path / "h1", **env)
    worker("w2", data_dir=tmp_path / "h2", **env)
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    wait_for(lambda: log.exists() and log.read_text().count("\n") >= 5, 60, "the run")
    # When Redis stalls twice for twice the lease's lifetime in the middle of the run
    assert own_redis.proc is not None
    for _ in range(2):
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        time.sleep(4)
        os.kill(own_redis.proc.pid, signal.SIGCONT)
        time.sleep(1)
    # Then the commit gets one passed report, and no two runs were ever alive at once
    store = Store.from_url(own_redis.url)
    report = wait_report(store, str(repo.path), repo.head(), timeout=90)
    assert report.status == "passed", report.message
    lives: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        run, at = line.split()
        lives.setdefault(run, []).append(float(at))
    # (the stalled run takes its lease back when nobody else took it, and goes on;
    # a run that finds it in other hands stops at once)
    spans = sorted((min(ts), max(ts)) for ts in lives.values())
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start > end, f"two live runs: one until {end}, the next from {start}"
    store.client.close()
