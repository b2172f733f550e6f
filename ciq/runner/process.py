"""Running a command of the code under test: the one place where ciq starts an untrusted
process. Every such process (a setup step, an environment build, the tests, their
collection, the probe of an interpreter a commit names) runs in a :class:`.box.Box`
under the supervisor of :mod:`.sandbox`, with a time limit, an output cap, a disk
reserve and the box's memory and process limits; ciq reads its output through a pipe
and keeps its head and tail only.
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
from .box import SYSTEM_PATH, Box, run_env
from .cgroups import Cgroups, cgroup_name

#: Seconds the sandbox gets to kill the test tree after a stop request.
STOP_GRACE = 5.0
#: Seconds between two looks at the free space of the worktree's disk and at the box's
#: process count.
WATCH = 0.1
#: Seconds to wait for the output pipe to close once the sandbox is gone.
DRAIN_GRACE = 5.0
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


def run_environment(environ: dict[str, str], home: Path) -> dict[str, str]:
    """The environment every box starts from (:func:`.box.run_env`), with git told to run
    no hooks in the checkout either. Built from an allow-list: nothing of the worker's
    environment but its locale reaches the code under test."""
    return {**run_env(environ, home), **SAFE_GIT_ENV}


@dataclass
class Completed:
    exit_code: int
    timed_out: bool
    output: str
    seconds: float
    disk_full: bool = False
    #: The box's limit that stopped it: "memory", "processes"; None: none.
    limit: str | None = None
    #: Stopped because its run lost its lease.
    cancelled: bool = False


def run_sandboxed(cmd: list[str], box: Box, time_limit: float, output_limit: int,
                  run_dir: Path, min_free_bytes: int = 0) -> Completed:
    """Run ``cmd`` in ``box`` under the supervisor of :mod:`.sandbox`, killing the box at
    the time limit, at its process limit, or when the free space of the disk under the
    box's working directory falls below ``min_free_bytes``. ``run_dir`` (the worker's,
    never the box's) holds the supervisor's spec and the box's process group."""
    started = time.monotonic()
    cgroups = Cgroups(cgroup_name(run_dir.name), box.limits.memory_bytes, box.limits.processes)
    try:
        proc = _start(cmd, box, run_dir, cgroups)
        if proc is None:  # the supervisor could not be put in the cgroups: rlimits
            cgroups.remove()
            cgroups = Cgroups("", 0, 0)
            proc = cast(subprocess.Popen, _start(cmd, box, run_dir, cgroups))
        done = _supervise(proc, box, time_limit, output_limit, run_dir, min_free_bytes,
                          cgroups)
    finally:
        cgroups.kill_all()
        cgroups.remove()
    done.seconds = time.monotonic() - started
    return done


def _start(cmd: list[str], box: Box, run_dir: Path,
           cgroups: Cgroups) -> subprocess.Popen | None:
    """Start the supervisor, put it in ``cgroups`` while its interpreter starts, and let
    it go on; None (the supervisor gone) when it cannot be put there."""
    limits, spec_file = box.limits, run_dir / "box.spec"
    fields = {  # rlimits for what no cgroup holds
        "memory": 0 if "memory" in cgroups.dirs else limits.memory_bytes,
        "processes": 0 if "pids" in cgroups.dirs else limits.processes,
        "user": ":".join(map(str, box.user or ())), "pgid_file": run_dir / "pgid",
    }  # fmt: skip
    spec_file.write_text("\0".join([*(str(fields[k]) for k in sandbox.FIELDS),
                                     *box.argv(cmd)]))
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", sandbox.__file__, str(spec_file)],
        cwd=run_dir,
        # The supervisor may be root: it gets a PATH and nothing else, so that no
        # variable a repository sets (LD_PRELOAD=...) reaches it.
        env={"PATH": SYSTEM_PATH},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        close_fds=True,
        # Its own session: a signal to the worker's process group (kill -9 of a whole
        # worker, Ctrl-C) must leave the supervisor alive to kill the box.
        start_new_session=True,
    )
    go = cgroups.join(proc.pid) if cgroups.dirs else True
    stdin = cast(io.BufferedWriter, proc.stdin)
    try:
        stdin.write(b"1" if go else b"0")
        stdin.close()
    except BrokenPipeError:
        pass
    if not go:
        proc.wait()
        return None
    return proc


def _supervise(proc: subprocess.Popen, box: Box, time_limit: float, output_limit: int,
               run_dir: Path, min_free_bytes: int, cgroups: Cgroups) -> Completed:
    out = OutputTail(output_limit)
    stream = cast(io.BufferedReader, proc.stdout)

    def drain() -> None:
        while chunk := stream.read1(65536):
            out.feed(chunk)

    reader = threading.Thread(target=drain, name="ciq-output", daemon=True)
    reader.start()
    timed_out, exited = threading.Event(), threading.Event()
    disk_full, processes_hit, cancelled = threading.Event(), threading.Event(), threading.Event()

    def time_is_up() -> None:
        # A timer rather than Popen.wait(timeout): that one polls with sleeps of up to
        # 50 ms, which every run would pay after its tests finish.
        timed_out.set()
        proc.send_signal(sandbox.STOP)
        if not exited.wait(STOP_GRACE):
            proc.kill()

    def watch() -> None:
        while not exited.wait(WATCH):
            if box.cancelled is not None and box.cancelled():
                cancelled.set()
                proc.send_signal(sandbox.STOP)
                return
            if min_free_bytes:
                st = os.statvfs(box.cwd)
                if st.f_bavail * st.f_frsize < min_free_bytes:
                    disk_full.set()
                    proc.send_signal(sandbox.STOP)
                    return
            if cgroups.processes_hit():  # a fork bomb: stop it now, not at the time limit
                processes_hit.set()
                proc.send_signal(sandbox.STOP)
                return

    timer = threading.Timer(time_limit, time_is_up)
    timer.daemon = True
    timer.start()
    if min_free_bytes or "pids" in cgroups.dirs or box.cancelled is not None:
        threading.Thread(target=watch, name="ciq-watch", daemon=True).start()
    try:
        proc.wait()
    finally:
        exited.set()
        timer.cancel()
        if proc.returncode is None:  # interrupted (e.g. Celery's soft time limit)
            proc.send_signal(sandbox.STOP)
            proc.wait()
    if proc.returncode == -signal.SIGKILL:
        # The supervisor itself was killed: kill the box's group ourselves (bwrap's
        # --die-with-parent ends the box too).
        kill_recorded_group(run_dir / "pgid")
    reader.join(DRAIN_GRACE)
    stream.close()
    limit = "processes" if processes_hit.is_set() else (
        "memory" if cgroups.memory_hit() else None)
    return Completed(proc.returncode, timed_out.is_set(), out.text(), 0.0,
                     disk_full.is_set(), limit, cancelled.is_set())


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
