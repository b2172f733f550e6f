"""Helpers of the tests that are not fixtures: a private redis-server, real git
repositories, ciq subprocesses and their environment, waiting for things to happen, and a
tiny HTTP client for `ciq web`. The fixtures that use them are in ``conftest.py``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from ciq.processes import stop_process
from ciq.report import Report, Summary, TestResult
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.keys import repo_id

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
    if pid <= 0:  # never kill(0) or kill(-1): that would ask about whole groups
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def run_ciq(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ciq", *args], env=ciq_env(settings),
                          capture_output=True, text=True, timeout=timeout)


def wait_report(store: Store, repo: str, sha: str, timeout: float = 60) -> Report:
    found = wait_for(lambda: store.report(repo, sha), timeout, f"report of {sha[:12]}")
    assert isinstance(found, Report)
    return found


def settings_for(server_url: str, data_dir: Path) -> Settings:
    return Settings(broker_url=server_url, result_backend=server_url, data_dir=data_dir,
                    lease_ttl=2.0, reconcile_interval=0.5)


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


def start_web(settings: Settings, log: Path, **env: str) -> Web:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ciq", "web", "--port", str(port)],
                                env=ciq_env(settings, **env), stdout=out, stderr=subprocess.STDOUT,
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


# -- what the tests check -------------------------------------------------------------

def assert_one_line_error(done, *words: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def marker_test(marker: Path, sleep_first: float) -> str:
    """A test that records each run in ``marker`` (a file of the workers' shared folder,
    CIQ_BOX_SHARED); the first run sleeps. Each line is the test's pid inside its box and
    its working directory, which :func:`runs_in` turns into the pid on this host."""
    return f"""\
import os, pathlib, time

MARK = pathlib.Path({str(marker)!r})

def test_records_its_run():
    runs = MARK.read_text().splitlines() if MARK.exists() else []
    with MARK.open("a") as fh:
        fh.write(f"{{os.getpid()}} {{os.getcwd()}}\\n")
    if not runs:
        time.sleep({sleep_first})
"""


def runs_in(marker: Path) -> list[int]:
    """The host pids of the runs ``marker`` recorded (0 for a process already gone)."""
    if not marker.exists():
        return []
    return [host_pid(int(nspid), cwd) for nspid, cwd in
            (line.split(" ", 1) for line in marker.read_text().splitlines() if line)]


def host_pid(box_pid: int, cwd: str) -> int:
    """The pid on this host of process ``box_pid`` of a box, found by its pid in its own
    namespace (``NSpid``) and its working directory; 0 when no such process lives."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
            nspids = next(x for x in status.splitlines() if x.startswith("NSpid:")).split()
            if len(nspids) > 2 and int(nspids[-1]) == box_pid and \
                    os.readlink(f"/proc/{name}/cwd") == cwd:
                return int(name)
        except (OSError, StopIteration, ValueError):
            continue
    return 0


# -- reports written the way workers write them (claim, then finish) --------------------

REPO = "/srv/git/project"
RID = repo_id(REPO)
XSS = "<script>alert(1)</script>"


def as_json(data: Any) -> Any:
    return json.loads(json.dumps(data))


def sha(n: int | str) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def claim(store: Store, n: int | str, branch: str | None = "main", subject: str = "",
          author: str = "Ada", repo: str = REPO) -> str:
    commit = sha(n)
    assert store.claim(repo, commit, branch, {"subject": subject or f"commit {n}",
                                              "author": author})
    return commit


def finish(store: Store, commit: str, outcomes: dict[str, str] | None = None,
           branch: str | None = "main", repo: str = REPO, status: str | None = None,
           **fields: Any) -> Report:
    """Store a final report as a worker does; status from the outcomes unless given."""
    tests = tuple(TestResult(name, outcome, 0.5 if outcome == "failed" else 0.01,
                             f"AssertionError: {name} broke" if outcome == "failed" else "")
                  for name, outcome in (outcomes or {"tests/test_a.py::test_ok": "passed"}
                                        ).items())
    summary = Summary.of(list(tests))
    report = Report(repo=repo, commit=commit, branch=branch,
                    status=status or ("failed" if summary.failed else "passed"),
                    summary=summary, tests=tests, duration=1.25, worker="w1@host",
                    started_at="2024-05-01T12:00:00.000+00:00",
                    finished_at="2024-05-01T12:00:01.250+00:00",
                    command="python -m pytest", exit_code=0, run_id=f"run-{commit[:6]}",
                    **fields)
    assert store.finish(report)
    return report
