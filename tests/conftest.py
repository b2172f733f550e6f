"""Fixtures with real parts: a private redis-server, real git repositories, real
``celery -A ciq worker`` and ``ciq observe`` subprocesses configured through ``CIQ_*``.
What they are made of is in ``helpers.py``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ciq.processes import stop_process
from ciq.settings import Settings
from ciq.store import Store

from .helpers import (
    GitRepo,
    RedisServer,
    Web,
    WorkerProcess,
    ciq_env,
    start_web,
    wait_for,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private server's URL, with every database emptied for this test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def env_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of run environments for the session, as the workers of one host share
    theirs: only the first test of a kind of repository pays for building one."""
    return tmp_path_factory.mktemp("envs")


@pytest.fixture
def settings(redis_url: str, data_dir: Path, env_dir: Path) -> Settings:
    return Settings(broker_url=redis_url, result_backend=redis_url, data_dir=data_dir,
                    lease_ttl=2.0, reconcile_interval=0.5, env_dir=env_dir)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store.from_url(settings.result_backend)
    yield s
    s.client.close()


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., GitRepo]:
    counter = iter(range(1000))

    def make(files: dict[str, str] | None = None, message: str = "initial") -> GitRepo:
        repo = GitRepo(tmp_path / f"repo{next(counter)}")
        if files is not None:
            repo.commit(files, message)
        return repo

    return make


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real `celery -A ciq worker` processes; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(name: str = "w1", concurrency: int = 1, data_dir: Path | None = None,
              python: str = sys.executable, queues: str | None = None,
              **env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{name}-{len(started)}.log"
        # The folder the tests of a commit may write and this test read (their markers);
        # not for tests run as another user, who could not reach it under tmp_path.
        shared = tmp_path / "shared"
        shared.mkdir(exist_ok=True)
        if "CIQ_RUN_AS" not in env:
            env = {"CIQ_BOX_SHARED": str(shared), **env}
        environ = ciq_env(settings, **env)
        if data_dir is not None:
            environ["CIQ_DATA_DIR"] = str(data_dir)
        cmd = [python, "-m", "celery", "-A", "ciq", "worker", "--loglevel=INFO",
               f"--concurrency={concurrency}", f"--hostname={name}@%h",
               "--without-mingle", "--without-gossip", *(["-Q", queues] if queues else [])]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=environ, cwd=tmp_path, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        w = WorkerProcess(name, proc, log)
        started.append(w)
        try:
            wait_for(lambda: " ready." in w.log_text() or proc.poll() is not None, 30,
                     f"worker {name} to start")
        except AssertionError:
            pass
        if proc.poll() is not None or " ready." not in w.log_text():
            pytest.fail(f"worker {name} did not start:\n{w.log_text()[-3000:]}")
        return w

    yield start
    for w in started:
        stop_process(w.proc)


@pytest.fixture
def observer(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start real `ciq observe` daemons; all are stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(repo: str, *args: str) -> subprocess.Popen:
        log = open(tmp_path / f"observer-{len(started)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "ciq", "observe", repo, *args],
            env=ciq_env(settings), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process(proc)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone, with AOF on, that the test may stop and start
    again (same port, same data) to play a Redis restart."""
    server = RedisServer(tmp_path / "own-redis", appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def system_venv() -> Iterator[Path]:
    """A virtual environment with ciq, made from Debian's /usr/bin/python3 in a folder
    any user can read: a test run as another user needs an interpreter it may execute
    (pyenv's lives under /root, 0700)."""
    import tempfile

    base = Path("/usr/bin/python3")
    if not base.exists():
        pytest.fail("/usr/bin/python3 is missing: apt-get install -y python3 python3-venv")
    folder = Path(tempfile.mkdtemp(prefix="ciq-sysvenv-"))
    folder.chmod(0o755)
    try:
        venv = folder / "venv"
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True, capture_output=True)
        root = Path(__file__).resolve().parent.parent
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                               "--disable-pip-version-check", "-e", str(root)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot install ciq into a venv of /usr/bin/python3:\n{done.stderr}")
        yield venv
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def web(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """One `ciq web` for the module, on the session's private Redis (each test empties
    that Redis through the `store` fixture and fills it again)."""
    folder = tmp_path_factory.mktemp("web")
    settings = Settings(broker_url=redis_server.url, result_backend=redis_server.url,
                        data_dir=folder / "data")
    web = start_web(settings, folder / "web.log")
    yield web
    stop_process(web.proc)
