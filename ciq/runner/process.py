"""Running a command of the code under test: the one place where ciq starts an untrusted
process. Every such process (a setup step, an environment build, the tests, their
collection) runs under the supervisor of :mod:`.sandbox`, in a session of its own, with
a time limit, an output cap and a disk reserve; ciq reads its output through a pipe and
keeps its head and tail only.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ..gitrepo import SAFE_GIT_ENV
from . import sandbox

#: Seconds the sandbox gets to kill the test tree after a stop request.
STOP_GRACE = 5.0
#: Seconds between two looks at the free space of the worktree's disk.
DISK_POLL = 0.25
#: Seconds to wait for the output pipe to close once the sandbox is gone.
DRAIN_GRACE = 5.0
#: Environment variables the code under test never sees (broker and backend credentials).
HIDDEN_ENV_PREFIXES = ("CIQ_", "CELERY_")


class OutputTail:
    """Keeps the first and last ``limit / 2`` bytes of a stream of any size."""

    def __init__(self, limit: int) -> None:
        self.half = limit // 2
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail.append(chunk)
            self.tail_len += len(chunk)
            while self.tail_len - len(self.tail[0]) >= self.half:
                self.tail_len -= len(self.tail.popleft())

    def text(self) -> str:
        tail = b"".join(self.tail)[-self.half :] if self.tail else b""
        omitted = self.total - len(self.head) - len(tail)
        middle = f"\n[... {omitted} bytes of output omitted ...]\n".encode() if omitted else b""
        return (bytes(self.head) + middle + tail).decode("utf-8", errors="replace")


def run_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment of the code under test: the worker's, less ciq's and Celery's."""
    env = {k: v for k, v in environ.items() if not k.startswith(HIDDEN_ENV_PREFIXES)}
    env.update(SAFE_GIT_ENV)  # git run by the tests in their checkout runs no hooks either
    env["PYTHONUNBUFFERED"] = "1"
    env["CI"] = "true"
    return env


@dataclass
class Completed:
    exit_code: int
    timed_out: bool
    output: str
    seconds: float
    disk_full: bool = False


def run_sandboxed(
    cmd: list[str], cwd: Path, env: dict[str, str], time_limit: float, output_limit: int,
    pgid_file: Path, min_free_bytes: int = 0, user: tuple[int, int] | None = None,
) -> Completed:
    """Run ``cmd`` under the sandbox supervisor, killing its whole tree at the time limit
    or when the free space of the disk under ``cwd`` falls below ``min_free_bytes``."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", sandbox.__file__,
         *(["--user", f"{user[0]}:{user[1]}"] if user else []), str(pgid_file), "--", *cmd],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        close_fds=True,
        # Its own session: a signal to the worker's process group (kill -9 of a whole
        # worker, Ctrl-C) must leave the supervisor alive to kill the test tree.
        start_new_session=True,
    )
    out = OutputTail(output_limit)
    stream = cast(io.BufferedReader, proc.stdout)

    def drain() -> None:
        while chunk := stream.read1(65536):
            out.feed(chunk)

    reader = threading.Thread(target=drain, name="ciq-output", daemon=True)
    reader.start()
    timed_out = threading.Event()
    exited = threading.Event()

    def time_is_up() -> None:
        # A timer rather than Popen.wait(timeout): that one polls with sleeps of up to
        # 50 ms, which every run would pay after its tests finish.
        timed_out.set()
        proc.send_signal(sandbox.STOP)
        if not exited.wait(STOP_GRACE):
            proc.kill()

    disk_full = threading.Event()

    def watch_disk() -> None:
        while not exited.wait(DISK_POLL):
            st = os.statvfs(cwd)
            if st.f_bavail * st.f_frsize < min_free_bytes:
                disk_full.set()
                proc.send_signal(sandbox.STOP)
                return

    timer = threading.Timer(time_limit, time_is_up)
    timer.daemon = True
    timer.start()
    if min_free_bytes:
        threading.Thread(target=watch_disk, name="ciq-disk", daemon=True).start()
    try:
        proc.wait()
    finally:
        exited.set()
        timer.cancel()
        if proc.returncode is None:  # interrupted (e.g. Celery's soft time limit)
            proc.send_signal(sandbox.STOP)
            proc.wait()
    if proc.returncode == -signal.SIGKILL:
        # The supervisor itself was killed (by the tests?): kill its group ourselves.
        kill_recorded_group(pgid_file)
    reader.join(DRAIN_GRACE)
    stream.close()
    return Completed(proc.returncode, timed_out.is_set(), out.text(),
                     time.monotonic() - started, disk_full.is_set())


def kill_recorded_group(pgid_file: Path) -> None:
    try:
        pgid = int(pgid_file.read_text())
    except (OSError, ValueError):
        return
    if pgid > 1:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def proc_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot): with the pid, what tells a
    live process from a new one that reuses a dead one's pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()[19].decode()
