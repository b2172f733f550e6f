"""Redis Sentinel: ``sentinel://...?master_name=NAME`` URLs, against a real redis-server
master (and replica) watched by a real ``redis-server --sentinel``, with real workers,
``ciq enqueue``, ``ciq status`` and ``ciq report`` that know only the sentinel's port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from ciq.celery import create_app
from ciq.errors import ConfigError
from ciq.processes import stop_process
from ciq.settings import Settings
from ciq.store import Store, keys
from ciq.urls import SentinelURL

from .helpers import (
    PASSING,
    REDIS_MISSING,
    RedisServer,
    free_port,
    marker_test,
    run_ciq,
    runs_in,
    wait_for,
    wait_report,
)

MASTER = "ciqmaster"


@dataclass
class SentinelServer:
    """A ``redis-server --sentinel`` of our own watching ``MASTER`` at ``master_port``."""

    directory: Path
    master_port: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"sentinel://127.0.0.1:{self.port}/{db}?master_name={MASTER}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(REDIS_MISSING)
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"  # the sentinel rewrites it: its own copy
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
        )
        log = open(self.directory / "sentinel.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([exe, str(conf), "--sentinel"], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.master_addr() is not None, 10, f"sentinel on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)

    def master_addr(self) -> tuple[str, int] | None:
        try:
            with self.client() as c:
                addr = c.sentinel_get_master_addr_by_name(MASTER)
        except redis.ConnectionError:
            return None
        return (addr[0], int(addr[1])) if addr else None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@dataclass
class SentinelSetup:
    master: RedisServer
    sentinel: SentinelServer
    replica: RedisServer | None = None

    @property
    def url(self) -> str:
        return self.sentinel.url()


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[Callable[..., SentinelSetup]]:
    """Start a master (and, when asked, a replica of it) and a sentinel that watches it;
    every process is stopped by its pid after the test."""
    servers: list[RedisServer | SentinelServer] = []

    def start(replica: bool = False) -> SentinelSetup:
        master = RedisServer(tmp_path / "master")
        master.start()
        servers.append(master)
        copy = None
        if replica:
            copy = ReplicaServer(tmp_path / "replica", master_port=master.port)
            copy.start()
            servers.append(copy)
        # Started after the replica is in sync: its first look at the master finds it.
        sentinel = SentinelServer(tmp_path / "sentinel", master.port)
        sentinel.start()
        servers.append(sentinel)
        return SentinelSetup(master, sentinel, copy)

    yield start
    for server in reversed(servers):
        server.stop()


@dataclass
class ReplicaServer(RedisServer):
    """A redis-server that replicates ``master_port`` (waited for until in sync)."""

    master_port: int = 0

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(REDIS_MISSING)
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.directory), "--save", "", "--appendonly", "no",
                "--replicaof", "127.0.0.1", str(self.master_port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)

        def in_sync() -> bool:
            try:
                with redis.Redis(port=self.port, decode_responses=True) as c:
                    return c.info("replication").get("master_link_status") == "up"
            except redis.ConnectionError:
                return False

        wait_for(in_sync, 15, f"replica on port {self.port} to sync")


def sentinel_settings(url: str, base: Settings) -> Settings:
    return Settings(broker_url=url, result_backend=url, data_dir=base.data_dir,
                    lease_ttl=base.lease_ttl, reconcile_interval=base.reconcile_interval,
                    env_dir=base.env_dir)


# -- The URL --------------------------------------------------------------------------------

def test_a_sentinel_url_names_its_sentinels_database_password_and_master():
    url = ("sentinel://:s%40cret@10.0.0.1:26380/2;sentinel://:s%40cret@10.0.0.2/2;"
           "sentinel://10.0.0.3:26381/2?master_name=ciqmaster")
    found = SentinelURL.parse(url)
    assert found.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("10.0.0.3", 26381))
    assert (found.master_name, found.db, found.password) == ("ciqmaster", 2, "s@cret")
    assert found.celery_url == url.removesuffix("?master_name=ciqmaster")
    assert "s@cret" not in repr(found)


@pytest.mark.parametrize(("url", "says"), [
    ("sentinel://10.0.0.1:26379/0", "?master_name=NAME"),
    ("sentinel://a?master_name=x;sentinel://b?master_name=y", "?master_name=NAME"),
    ("sentinel://a/0?master_name=x&socket_timeout=3", "socket_timeout"),
    ("sentinel://a/zero?master_name=x", "database number"),
    ("sentinel://a?master_name=x;redis://b", "sentinel://HOST"),
])
def test_a_bad_sentinel_url_is_refused_naming_the_variable(url: str, says: str):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CIQ_BROKER_URL": url})
    assert "CIQ_BROKER_URL" in str(caught.value) and says in str(caught.value)


def test_celery_gets_the_url_without_the_master_name_and_the_name_as_transport_option():
    url = "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.2:26379/0?master_name=ciqmaster"
    settings = Settings(broker_url=url, result_backend=url)
    app = create_app(settings)
    plain = "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.2:26379/0"
    assert app.conf.broker_url == plain and app.conf.result_backend == plain
    for options in (app.conf.broker_transport_options,
                    app.conf.result_backend_transport_options):
        assert options["master_name"] == "ciqmaster"
        assert options["visibility_timeout"] == settings.visibility_timeout


# -- Against a real sentinel ------------------------------------------------------------------

def test_the_store_reaches_the_master_through_the_sentinel(sentinel_setup):
    setup = sentinel_setup()
    store = Store.from_url(setup.sentinel.url(db=3))
    store.ping()
    store.client.set("ciq:probe", "1")
    with redis.Redis(port=setup.master.port, db=3) as direct:
        assert direct.get("ciq:probe") == b"1"
    store.client.close()


@pytest.mark.slow
def test_enqueue_status_and_report_through_sentinel(
    sentinel_setup, worker, make_repo, settings: Settings
):
    # Given a worker and a CLI that know only the sentinel's address
    setup = sentinel_setup()
    url = setup.url
    s = sentinel_settings(url, settings)
    w = worker(CIQ_BROKER_URL=url, CIQ_RESULT_BACKEND=url)
    repo = make_repo(PASSING)
    name = str(repo.path)

    # When a commit is enqueued
    done = run_ciq(s, "enqueue", name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repo.head()

    # Then it is run, and status and report read it through the sentinel
    store = Store.from_url(url)
    assert wait_report(store, name, repo.head()).status == "passed"
    status = run_ciq(s, "status", "--json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert (row["commit"], row["status"], row["branch"]) == (repo.head(), "passed", "main")
    report = run_ciq(s, "report", name, repo.head()[:8], "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["summary"]["passed"] == 1
    junit = run_ciq(s, "report", name, repo.head()[:8], "--junit")
    assert junit.returncode == 0 and "<testsuite" in junit.stdout
    # And everything is in the master the sentinel named, the queue drained
    with redis.Redis(port=setup.master.port) as direct:
        assert direct.exists(keys.report(name, repo.head()))
        assert direct.llen(s.queue) == 0
    assert "sentinel://" in w.log_text()
    store.client.close()


@pytest.mark.slow
def test_a_failover_loses_no_report_and_the_worker_follows_the_new_master(
    sentinel_setup, worker, make_repo, settings: Settings
):
    # Given a master, its replica and a sentinel, a worker, and a commit reported
    setup = sentinel_setup(replica=True)
    assert setup.replica is not None
    url = setup.url
    s = sentinel_settings(url, settings)
    worker(CIQ_BROKER_URL=url, CIQ_RESULT_BACKEND=url)
    repo = make_repo(PASSING)
    name = str(repo.path)
    first = repo.head()
    assert run_ciq(s, "enqueue", name).returncode == 0
    store = Store.from_url(url)
    assert wait_report(store, name, first).status == "passed"
    store.client.wait(1, 5000)  # the replica has the report too

    # When the master dies and the sentinel promotes the replica
    setup.master.stop()
    promoted = ("127.0.0.1", setup.replica.port)
    wait_for(lambda: setup.sentinel.master_addr() == promoted, 30, "the failover")

    # Then a new commit is enqueued, run and reported through the new master
    second = repo.commit({"tests/test_more.py": "def test_more():\n    pass\n"}, "more")
    # (the promoted replica may still call itself a replica for a moment after the
    # sentinel names it: a client then finds no master and is told so in one line)
    wait_for(lambda: run_ciq(s, "enqueue", name).returncode == 0, 30,
             "an enqueue through the new master")
    assert wait_report(store, name, second, timeout=90).status == "passed"
    # And the first report survived, readable by `ciq report`
    report = run_ciq(s, "report", name, first, "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["status"] == "passed"
    store.client.close()


@pytest.mark.slow
def test_a_killed_worker_is_rerun_at_once_through_sentinel(
    sentinel_setup, worker, make_repo, settings: Settings, tmp_path: Path
):
    # Given two workers that know only the sentinel, a 10 s lease, and a commit whose
    # first run sleeps a minute
    url = sentinel_setup().url
    s = sentinel_settings(url, settings)
    env = {"CIQ_BROKER_URL": url, "CIQ_RESULT_BACKEND": url, "CIQ_LEASE_TTL": "10"}
    marker = tmp_path / "shared" / "marker"
    repo = make_repo({"tests/test_slow.py": marker_test(marker, sleep_first=60)})
    first = worker("w1", data_dir=tmp_path / "h1", **env)
    assert run_ciq(s, "enqueue", str(repo.path)).returncode == 0
    sha = repo.head()
    wait_for(lambda: runs_in(marker), 60, "the first run")
    worker("w2", data_dir=tmp_path / "h2", **env)
    store = Store.from_url(url)
    # When the first worker dies whole
    killed = time.monotonic()
    os.killpg(first.pid, signal.SIGKILL)
    # Then the rerun takes the lease within a second or two, not when it expires
    wait_for(lambda: store.commit(str(repo.path), sha).get("attempts") == "2", 10,
             "the rerun's lease")
    took = time.monotonic() - killed
    assert took < 2.0, f"the rerun took the lease {took:.2f} s after the kill"
    assert wait_report(store, str(repo.path), sha, timeout=60).status == "passed"
    store.client.close()
