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

#: Seconds the sandbox gets to kill the test tree after a stop request.
STOP_GRACE = 5.0
#: Seconds between two looks at the free space of the worktree's disk.
DISK_POLL = 0.25
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


def run_sandboxed(cmd: list[str], box: Box, time_limit: float, output_limit: int,
                  run_dir: Path, min_free_bytes: int = 0) -> Completed:
    """Run ``cmd`` in ``box`` under the supervisor of :mod:`.sandbox`, killing the box at
    the time limit or when the free space of the disk under the box's working directory
    falls below ``min_free_bytes``. ``run_dir`` (the worker's, never the box's) holds
    the supervisor's spec, the box's process group and its result."""
    started = time.monotonic()
    spec_file, result_file = run_dir / "box.json", run_dir / "box-result.json"
    result_file.unlink(missing_ok=True)
    limits = box.limits
    fields = {
        "cgroup": f"ciq-{run_dir.name}", "memory": limits.memory_bytes,
        "processes": limits.processes, "user": ":".join(map(str, box.user or ())),
        "pgid_file": run_dir / "pgid", "result_file": result_file,
    }  # fmt: skip
    spec_file.write_text("\0".join([*(str(fields[k]) for k in sandbox.FIELDS),
                                     *box.argv(cmd)]))
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", sandbox.__file__, str(spec_file)],
        cwd=run_dir,
        # The supervisor may be root: it gets a PATH and nothing else, so that no
        # variable a repository sets (LD_PRELOAD=...) reaches it.
        env={"PATH": SYSTEM_PATH},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        close_fds=True,
        # Its own session: a signal to the worker's process group (kill -9 of a whole
        # worker, Ctrl-C) must leave the supervisor alive to kill the box.
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
            st = os.statvfs(box.cwd)
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
        # The supervisor itself was killed: kill the box's group ourselves (bwrap's
        # --die-with-parent ends the box too).
        kill_recorded_group(run_dir / "pgid")
    reader.join(DRAIN_GRACE)
    stream.close()
    return Completed(proc.returncode, timed_out.is_set(), out.text(),
                     time.monotonic() - started, disk_full.is_set(), _limit_hit(result_file))


def _limit_hit(result_file: Path) -> str | None:
    try:
        hit = dict(part.split("=", 1) for part in result_file.read_text().split())
    except (OSError, ValueError):
        return None
    return next((name for name in ("processes", "memory") if hit.get(name) == "1"), None)


def remove_box_cgroups(run_id: str) -> None:
    """Remove the cgroups a killed supervisor left (empty once its box is gone); they are
    made beside the worker's own (see :class:`.sandbox.Cgroups`)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for ctl in controllers.split(",") if controllers else [""]:
            folder = Path(sandbox.CGROUP_ROOT, ctl, path.lstrip("/"), f"ciq-{run_id}")
            try:
                folder.rmdir()
            except OSError:
                pass


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
