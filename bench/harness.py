"""What the benchmarks share: stopping what they started, finding what they left, and
writing their results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from ciq.processes import stop_process
from ciq.store import Store

__all__ = ["GIT_ENV", "Cluster", "cluster", "commit", "free_port", "git", "kill_leftovers",
           "processes_under", "save_results", "show_worker_logs", "start_redis",
           "start_worker", "stop_process", "wait_for", "wait_until_served"]

T = TypeVar("T")

#: Who the benchmarks' commits are by (no global git identity needed).
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.org"}


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; its output."""
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    """Write ``files`` into ``repo`` and commit them; the new SHA."""
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def free_port() -> int:
    """A free TCP port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """The first true value of ``predicate``, polled every ``interval`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return value


def wait_until_served(url: str, timeout: float = 20) -> None:
    """Return once ``url`` answers (a server a benchmark started)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def start_redis(folder: Path, port: int, client: redis.Redis) -> subprocess.Popen:
    """A private redis-server on 127.0.0.1:``port`` (no persistence), once ``client``
    gets an answer from it. The caller stops it by pid."""
    folder.mkdir(parents=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, start_new_session=True)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(up, 10, f"redis-server on port {port}")
    except BaseException:
        stop_process(proc)
        raise
    return proc

RESULTS = Path(__file__).resolve().parent / "results"


def processes_under(root: Path) -> dict[int, str]:
    """Live processes that run in (or name) ``root``: only a benchmark's own can."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone, or a zombie
            continue
        if cwd.startswith(str(root)) or str(root) in cmd:
            found[int(pid)] = cmd[:120]
    return found


def kill_leftovers(root: Path, grace: float) -> dict[int, str]:
    """Give dying pool processes and test trees ``grace`` seconds, then SIGKILL whatever
    still runs under ``root``; returns what had to be killed."""
    deadline = time.monotonic() + grace
    while (leaks := processes_under(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in leaks:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leaks


def show_worker_logs(root: Path) -> None:
    """The last lines of every worker log, on stderr (the logs go with the temp dir)."""
    for log in sorted(root.glob("worker-*.log")):
        print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(
            errors="replace").splitlines()[-15:]), file=sys.stderr)


def save_results(name: str, results: dict[str, Any], leaks: dict[int, str]) -> Path:
    """Write ``bench/results/NAME.json``, reporting processes that were left running."""
    results["leaked_processes"] = [f"{pid} {cmd}" for pid, cmd in leaks.items()]
    for pid, cmd in leaks.items():
        print(f"warning: process left running, killed: {pid} {cmd}")
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out


def start_worker(root: Path, env: dict[str, str], name: str = "w1") -> subprocess.Popen:
    """A real ``celery -A ciq worker`` of one process, ``NAME@host``, configured by ``env``
    (its log: ``root/worker-NAME.log``), once it says it is ready."""
    log = root / f"worker-{name}.log"
    cmd = [sys.executable, "-m", "celery", "-A", "ciq", "worker", "--loglevel=INFO",
           "--concurrency=1", "--without-mingle", "--without-gossip", f"--hostname={name}@%h"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    wait_for(lambda: " ready." in log.read_text(errors="replace") or proc.poll() is not None,
             60, f"worker {name} to start", 0.02)
    if proc.poll() is not None:
        stop_process(proc)
        raise RuntimeError(f"worker {name} died:\n{log.read_text()[-3000:]}")
    return proc


@dataclass
class Cluster:
    """A benchmark's private redis-server and the workers it starts, under ``root``."""

    root: Path
    url: str
    store: Store
    #: What the workers run with: this environment without CIQ_/CELERY_ variables, then
    #: the private Redis and data folder (and what the benchmark adds).
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    #: Processes found running under ``root`` after everything was stopped (killed).
    leaks: dict[int, str] = field(default_factory=dict)

    def worker(self, name: str = "w1") -> subprocess.Popen:
        proc = start_worker(self.root, self.env, name)
        self.procs.append(proc)
        return proc


@contextmanager
def cluster(prefix: str, **env: str) -> Iterator[Cluster]:
    """A :class:`Cluster` in a temporary folder; everything it started is stopped by pid
    on the way out, leftovers killed (``leaks``), the folder removed, and the workers'
    logs shown when the block failed."""
    root = Path(tempfile.mkdtemp(prefix=f"ciq-bench-{prefix}-")).resolve()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = Store.from_url(url)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CIQ_", "CELERY_"))}
    found = Cluster(root, url, store, {**clean, "CIQ_BROKER_URL": url,
                                       "CIQ_RESULT_BACKEND": url,
                                       "CIQ_DATA_DIR": str(root / "data"), **env})
    ok = False
    try:
        found.procs.append(start_redis(root / "redis", port, store.client))
        yield found
        ok = True
    finally:
        if not ok:
            show_worker_logs(root)
        for proc in reversed(found.procs):
            stop_process(proc)
        store.client.close()
        found.leaks = kill_leftovers(root, 5)
        shutil.rmtree(root, ignore_errors=True)
