"""Fixtures with real parts: a private redis-server, real git repositories, real
``celery -A ciq worker`` and ``ciq observe`` subprocesses configured through ``CIQ_*``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from ciq.processes import stop_process
from ciq.report import Report
from ciq.settings import Settings
from ciq.store import Store

REDIS_MISSING = (
    "redis-server is not installed; install it with `apt-get install -y redis-server` "
    "(scripts/test does this for you)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class RedisServer:
    """A redis-server of our own, on a free port; never one we did not start."""

    directory: Path
    appendonly: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(REDIS_MISSING)
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.directory), "--save", "", "--protected-mode", "yes",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 10, f"redis-server on port {self.port}")
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


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


def ciq_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a ciq process: this one's, less any CIQ_* from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIQ_")}
    env.update(
        CIQ_BROKER_URL=settings.broker_url,
        CIQ_RESULT_BACKEND=settings.result_backend,
        CIQ_DATA_DIR=str(settings.data_dir),
        CIQ_LEASE_TTL=str(settings.lease_ttl),
        CIQ_RECONCILE_INTERVAL=str(settings.reconcile_interval),
        CIQ_ENV_DIR=str(settings.env_root),
    )
    env.update(extra)
    return env


class GitRepo:
    """A real git repository in a temporary folder that tests commit files into."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "dev@example.org")
        self.git("config", "user.name", "Dev")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, check=True, capture_output=True,
                              text=True).stdout.strip()

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., GitRepo]:
    counter = iter(range(1000))

    def make(files: dict[str, str] | None = None, message: str = "initial") -> GitRepo:
        repo = GitRepo(tmp_path / f"repo{next(counter)}")
        if files is not None:
            repo.commit(files, message)
        return repo

    return make


PASSING = {"tests/test_ok.py": "def test_ok():\n    assert True\n"}


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def pool_pids(self) -> list[int]:
        return children(self.pid)


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2 :].split()[1]) == pid:
                found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real `celery -A ciq worker` processes; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(name: str = "w1", concurrency: int = 1, data_dir: Path | None = None,
              python: str = sys.executable, queues: str | None = None,
              **env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{name}-{len(started)}.log"
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


def run_ciq(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ciq", *args], env=ciq_env(settings),
                          capture_output=True, text=True, timeout=timeout)


def wait_report(store: Store, repo: str, sha: str, timeout: float = 60) -> Report:
    found = wait_for(lambda: store.report(repo, sha), timeout, f"report of {sha[:12]}")
    assert isinstance(found, Report)
    return found


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone, with AOF on, that the test may stop and start
    again (same port, same data) to play a Redis restart."""
    server = RedisServer(tmp_path / "own-redis", appendonly=True)
    server.start()
    yield server
    server.stop()


def settings_for(server_url: str, data_dir: Path) -> Settings:
    return Settings(broker_url=server_url, result_backend=server_url, data_dir=data_dir,
                    lease_ttl=2.0, reconcile_interval=0.5)


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


# -- `ciq web` ------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Web:
    """A `ciq web` subprocess and a tiny HTTP client for it."""

    proc: subprocess.Popen
    log: Path
    port: int = 0
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Reply:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return Reply(r.status, {k.lower(): v for k, v in r.headers.items()},
                             r.read().decode())
        except urllib.error.HTTPError as e:
            return Reply(e.code, {k.lower(): v for k, v in e.headers.items()},
                         e.read().decode())

    def json(self, path: str) -> Any:
        reply = self.get(path)
        assert reply.status == 200, (path, reply.status, reply.text)
        return reply.json()


def start_web(settings: Settings, log: Path) -> Web:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ciq", "web", "--port", str(port)],
                                env=ciq_env(settings), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    web = Web(proc, log, port)

    def answers() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"ciq web exited:\n{log.read_text()}")
        try:
            return web.get("/openapi.json").status == 200
        except OSError:
            return False

    try:
        wait_for(answers, 20, "ciq web to answer", interval=0.1)
    except BaseException:
        stop_process(proc)
        raise
    assert f"ciq: web UI on http://127.0.0.1:{port}/" in log.read_text()
    return web


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
