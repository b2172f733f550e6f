"""A lease tied to its holder's life: a worker process that dies is rerun within a
fraction of a second (its Redis connections close), a frozen one at the lease's expiry
(and its run then stops), and a commit whose message no run ever took is sent again.
Real workers, real redis-servers, real SIGKILL and SIGSTOP."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from ciq.dispatch import Sender
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.keys import HOLDERS

from .helpers import (
    PASSING,
    marker_test,
    run_ciq,
    runs_in,
    wait_for,
    wait_report,
)

pytestmark = pytest.mark.slow


def attempts(store: Store, repo: str, sha: str) -> int:
    return int(store.commit(repo, sha).get("attempts") or 0)


def test_a_killed_worker_is_rerun_long_before_its_lease_expires(
    worker, make_repo, store: Store, settings: Settings, tmp_path: Path
):
    # Given two workers with a 10 s lease, and a commit whose first run sleeps a minute
    marker = tmp_path / "shared" / "marker"
    repo = make_repo({"tests/test_slow.py": marker_test(marker, sleep_first=60)})
    env = {"CIQ_LEASE_TTL": "10"}
    first = worker("w1", data_dir=tmp_path / "h1", **env)
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    sha = repo.head()
    wait_for(lambda: runs_in(marker), 60, "the first run")
    worker("w2", data_dir=tmp_path / "h2", **env)
    assert store.client.hlen(HOLDERS) == 1  # the run's holder is known by its connection
    # When the first worker dies whole (main process, pool process, tests)
    killed = time.monotonic()
    os.killpg(first.pid, signal.SIGKILL)
    # Then the second worker's run takes the lease within a second, not 10 s later
    wait_for(lambda: attempts(store, str(repo.path), sha) == 2, 10, "the rerun's lease")
    took = time.monotonic() - killed
    assert took < 2.0, f"the rerun took the lease {took:.2f} s after the kill"
    report = wait_report(store, str(repo.path), sha, timeout=60)
    assert report.status == "passed" and report.attempts == 2, report.message
    assert report.worker.startswith("w2@")
    assert store.client.hlen(HOLDERS) == 0  # the report removed the holder's entry
    assert store.commit(str(repo.path), sha)["deaths"] == "1"  # the watcher counted it


def test_a_frozen_worker_is_replaced_when_its_lease_expires_and_its_run_stops(
    worker, make_repo, store: Store, settings: Settings, tmp_path: Path
):
    # Given two workers with a 2 s lease and a commit whose first run sleeps a minute
    marker = tmp_path / "shared" / "marker"
    repo = make_repo({"tests/test_slow.py": marker_test(marker, sleep_first=60)})
    first = worker("w1", data_dir=tmp_path / "h1")
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    sha = repo.head()
    wait_for(lambda: runs_in(marker), 60, "the first run")
    worker("w2", data_dir=tmp_path / "h2")
    # When the first worker freezes (a host that vanished: its connections stay open)
    frozen = time.monotonic()
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        # Then the second takes the commit once the lease expired, within seconds
        wait_for(lambda: attempts(store, str(repo.path), sha) == 2, 15, "the rerun's lease")
        took = time.monotonic() - frozen
        # (the last renewal was up to a third of the lease before the freeze)
        assert 1.0 < took < 6.0, f"the rerun took the lease {took:.2f} s after the freeze"
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    # And when the frozen worker wakes, its run finds the lease in other hands, stops its
    # tests and makes no report: the stored one is the rerun's
    report = wait_report(store, str(repo.path), sha, timeout=60)
    assert report.status == "passed" and report.worker.startswith("w2@"), report.message
    wait_for(lambda: "lease lost" in first.log_text(), 20, "the stale run to stop")
    assert "deaths" not in store.commit(str(repo.path), sha)  # it lost its lease, alive


def test_a_message_lost_from_the_queue_is_sent_again(
    worker, make_repo, store: Store, settings: Settings
):
    # Given a commit sent to the queue while no worker runs
    repo = make_repo(PASSING)
    sha = repo.head()
    assert Sender.for_store(settings, store).submit(str(repo.path), sha, "main")
    # When its message is taken off the broker's list by hand, and a worker starts
    assert store.client.delete(settings.queue) == 1
    worker("w1")
    # Then the reconciler sends it again (two lease lifetimes later: 4 s here)
    report = wait_report(store, str(repo.path), sha, timeout=30)
    assert report.status == "passed", report.message
    assert store.client.zcard("ciq:sent") == 0


def test_a_commit_queued_behind_others_is_not_sent_twice(
    worker, make_repo, store: Store, settings: Settings
):
    # Given a commit that waits on the queue longer than the resend delay (4 s here)
    repo = make_repo(PASSING)
    sha = repo.head()
    sender = Sender.for_store(settings, store)
    assert sender.submit(str(repo.path), sha, "main")
    w = worker("w1", queues="elsewhere")  # a worker that reconciles but takes other work
    time.sleep(6)
    # Then its queue explains the wait: nothing was sent again
    assert store.client.llen(settings.queue) == 1
    assert "sending it again" not in w.log_text()


def test_a_worker_killed_between_taking_the_message_and_the_lease(
    own_redis, worker, make_repo, tmp_path: Path, redis_url: str
):
    # Given a broker and a results backend on two Redis servers, and a commit sent
    settings = Settings(broker_url=redis_url, result_backend=own_redis.url,
                        data_dir=tmp_path / "data", lease_ttl=2.0, reconcile_interval=0.5)
    env = {"CIQ_BROKER_URL": redis_url, "CIQ_RESULT_BACKEND": own_redis.url}
    store = Store.from_url(own_redis.url)
    broker = redis.Redis.from_url(redis_url)
    repo = make_repo(PASSING)
    sha = repo.head()
    assert Sender.for_store(settings, store).submit(str(repo.path), sha, "main")
    # and a worker that takes the message while the backend is frozen, so that its run
    # cannot take the lease
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        first = worker("w1", data_dir=tmp_path / "h1", **env)
        wait_for(lambda: broker.llen("ciq") == 0, 30, "the worker to take the message")
        time.sleep(0.5)
        # When the worker dies before its run reached the lease
        os.killpg(first.pid, signal.SIGKILL)
        first.proc.wait()
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    assert attempts(store, str(repo.path), sha) == 0
    # Then another worker runs the commit within seconds, not after the visibility
    # timeout (the message sits in the dead worker's unacknowledged set)
    worker("w2", data_dir=tmp_path / "h2", **env)
    report = wait_report(store, str(repo.path), sha, timeout=40)
    assert report.status == "passed" and report.worker.startswith("w2@"), report.message
    store.client.close()
    broker.close()


def test_the_watcher_trusts_nobody_gone_right_after_a_restart(own_redis, tmp_path: Path):
    # Given a lease whose holder has no connection, on a Redis the watcher knows
    from ciq.store.liveness import Liveness

    store = Store.from_url(own_redis.url)
    assert store.acquire("r", "a" * 40, "run1", 30, "w") == 1
    store.client.hset(HOLDERS, "ciq:lease:x", "run1 ciq-run-gone-1-abcd")
    liveness = Liveness(store, lease_ttl=2.0)
    assert liveness.free_dead() == []  # no such lease: only its stale entry goes
    assert not store.client.hexists(HOLDERS, "ciq:lease:x")
    store.client.hset(HOLDERS, "ciq:lease:y", "run2 ciq-run-gone-2-abcd")
    # When Redis restarts with its data (another run_id, the same keys)
    own_redis.stop()
    own_redis.start()
    store.client.set("ciq:lease:y", "run2")
    # Then the watcher judges nobody for a lease lifetime: the holders reconnect meanwhile
    assert liveness.free_dead() == []
    start = time.monotonic()
    while not (freed := liveness.free_dead()):  # ten looks a second, as the watcher's
        assert time.monotonic() - start < 5, "the dead holder was never judged"
        time.sleep(0.1)
    assert freed == ["ciq:lease:y"] and time.monotonic() - start > 1.5
    assert store.client.get("ciq:lease:y") is None
    store.client.close()


def test_the_watcher_trusts_nobody_gone_right_after_a_stall(own_redis):
    # Given a watcher that looks ten times a second, and a lease whose holder has no
    # connection (its command timed out while Redis stalled)
    from ciq.store.liveness import Liveness

    store = Store.from_url(own_redis.url)
    liveness = Liveness(store, lease_ttl=1.5)
    assert liveness.free_dead() == []
    store.client.set("ciq:lease:z", "run3")
    store.client.hset(HOLDERS, "ciq:lease:z", "run3 ciq-run-gone-3-abcd")
    # When Redis stalls for longer than a third of the lease
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(own_redis.proc.pid, signal.SIGCONT)
    # Then nobody is judged for a lease lifetime after it, and then the dead one is
    start = time.monotonic()
    while liveness.free_dead() == []:
        assert time.monotonic() - start < 5, "the dead holder was never judged"
        time.sleep(0.1)
    assert time.monotonic() - start > 1.3
    store.client.close()
