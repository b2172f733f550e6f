"""`ciq up`: everything on one machine for a first try.

Starts a private ``redis-server`` (data under ``CIQ_DATA_DIR/redis``, append-only file on,
bound to 127.0.0.1; never a Redis it did not start) unless ``CIQ_BROKER_URL`` is set, a
worker, and an observer on the repository (a sample repository when none is given);
prints each report as it lands. Ctrl-C stops everything it started, by pid.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

from ..errors import UpError
from ..processes import stop_process
from ..report import Report
from ..settings import Settings
from ..urls import is_url, redacted

logger = logging.getLogger(__name__)

#: Port tried first for the private Redis, so that `ciq status` finds it next time too.
PREFERRED_PORT = 6389

SAMPLE_FILES = {
    "README.md": "# ciq sample\n\nA tiny project that `ciq up` creates to show a report.\n",
    "sample/__init__.py": "def add(a, b):\n    return a + b\n",
    "tests/test_sample.py": (
        "import pytest\n\nfrom sample import add\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_add_strings():\n    assert add('c', 'i') + 'q' == 'ciq'\n\n\n"
        "@pytest.mark.parametrize('n', [0, 1, 2])\n"
        "def test_add_zero(n):\n    assert add(n, 0) == n\n\n\n"
        "@pytest.mark.skip(reason='shows how a skip looks')\n"
        "def test_later():\n    pass\n"
    ),
}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port(preferred: int = PREFERRED_PORT) -> int:
    """``preferred`` when it is free, else any free port of 127.0.0.1."""
    if _port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(data_dir: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise UpError("redis-server is not installed: `sudo apt-get install redis-server`, "
                      "or set CIQ_BROKER_URL to a Redis of your own")
    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction",
         "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = directory / "redis.log"
                    raise UpError(f"redis-server did not start; see {log}") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        stop_process(proc, grace=20.0)


@contextmanager
def worker_process(settings: Settings, log: Path, concurrency: int) -> Iterator[None]:
    # The worker gets every setting `ciq up` runs with (its queue, time limit, user...),
    # with the URLs of the Redis actually used.
    env = dict(os.environ)
    env.update(CIQ_BROKER_URL=settings.broker_url, CIQ_RESULT_BACKEND=settings.result_backend,
               CIQ_DATA_DIR=str(settings.data_dir))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "ciq", "worker", "--loglevel=INFO",
             f"--concurrency={concurrency}", "--hostname=local@%h",
             "--without-mingle", "--without-gossip"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield
    finally:
        stop_process(proc, grace=20.0)


#: Port tried first for the web UI (`ciq web`'s default); another free one if taken.
WEB_PORT = 8080


@contextmanager
def web_process(settings: Settings, log: Path) -> Iterator[str]:
    """`ciq web` on 127.0.0.1, reading the Redis used here; yields its URL."""
    port = _free_port(WEB_PORT)
    env = dict(os.environ)
    env.update(CIQ_BROKER_URL=settings.broker_url, CIQ_RESULT_BACKEND=settings.result_backend,
               CIQ_DATA_DIR=str(settings.data_dir))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ciq", "web", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop_process(proc, grace=10.0)


def sample_repo(data_dir: Path) -> Path:
    """A small git repository with one commit, made once under the data folder."""
    path = data_dir / "sample"
    if (path / ".git").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    for name, text in SAMPLE_FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    ident = ["-c", "user.name=ciq", "-c", "user.email=ciq@localhost"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 [*ident, "commit", "-q", "-m", "Add the sample project"]):
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return path


def up(settings: Settings, repo: str | None, once: bool, interval: float, concurrency: int,
       echo: Callable[[str], None], show: Callable[[Report], None], hook: bool = False) -> int:
    """Run the local system; returns the exit status (0, or 1 when a report is red).

    With ``hook``, ciq's git hook is also installed in the repository, pointing at the
    Redis used here; it stays when `ciq up` stops (its commits are then only logged).
    """
    from .. import hooks
    from ..dispatch import Sender
    from ..gitrepo import describe, normalise_repo
    from ..observer import Observer, Watch
    from ..store.store import Store

    own_redis = not os.environ.get("CIQ_BROKER_URL")  # empty means unset, as in Settings
    name = normalise_repo(repo) if repo else str(sample_repo(settings.data_dir))
    if not is_url(name):
        describe(name, "HEAD")  # a readable repository with a commit, before starting anything
    target = hooks.locate(name) if hook else None
    if target is not None:
        hooks.check(target, target.default_kind)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    given = nullcontext(settings.broker_url)
    with private_redis(settings.data_dir) if own_redis else given as url:
        if own_redis:
            settings = replace(settings, broker_url=url, result_backend=url)
            echo(f"ciq: private Redis at {url} (data in {settings.data_dir / 'redis'})")
            echo(f"     in another shell: export CIQ_BROKER_URL={url}; ciq status")
        if target is not None:
            _install_hook(target, settings, echo)
        log = settings.data_dir / "logs" / "worker.log"
        web = nullcontext("") if once else web_process(settings, log.with_name("web.log"))
        with worker_process(settings, log, concurrency), web as web_url:
            echo(f"ciq: worker started (log: {log})")
            if web_url:
                echo(f"ciq: reports on the web at {web_url} (log: {log.with_name('web.log')})")
            store = Store.from_url(settings.result_backend)
            observer = Observer([Watch(name)], store, Sender.for_store(settings, store),
                                settings.data_dir)
            echo(f"ciq: watching {name} every {interval:g}s; Ctrl-C stops everything")
            return _follow(store, observer, name, once, interval, stop, echo, show)


def _install_hook(target, settings: Settings, echo: Callable[[str], None]) -> None:
    import shlex

    from .. import hooks

    env = hooks.pinned(settings)
    done = hooks.install(target, target.default_kind, hooks.ciq_command(), env)
    verb = "already" if done.action == "unchanged" else "now"
    echo(f"ciq: {done.path} {verb} enqueues each new commit at once "
         f"(Redis {redacted(settings.broker_url)}; log: {target.log})")
    echo("     the hook stays after Ctrl-C (commits are then only logged); remove it with: "
         f"ciq hook uninstall {shlex.quote(target.repo)}")


def _follow(store, observer, name, once, interval, stop, echo, show) -> int:
    pending: set[str] = set()
    status = 0
    while not stop.is_set():
        result = observer.poll()
        for error in result.errors:
            echo(f"ciq: {error}")
        pending.update(result.enqueued)
        if once and not pending:
            pending.update(row["commit"] for row in store.recent(name, 1)
                           if row["status"] in ("queued", "running"))
            if not pending:  # nothing new: show the latest report there is
                latest = store.recent(name, 1)
                report = store.report(name, latest[0]["commit"]) if latest else None
                if report is not None:
                    show(report)
                    return 0 if report.status == "passed" else 1
                if result.errors:
                    return 1
        deadline = time.monotonic() + interval
        while pending and time.monotonic() < deadline and not stop.is_set():
            for sha in sorted(pending):
                report = store.report(name, sha)
                if report is not None:
                    pending.discard(sha)
                    show(report)
                    status = status or (0 if report.status == "passed" else 1)
            time.sleep(0.1)
        if once and not pending:
            return status
        stop.wait(max(0.0, deadline - time.monotonic()))
    echo("ciq: stopping")
    return status
