"""The memory and pids cgroups of one box, made and removed by the worker.

They are made beside the worker's own cgroups (cgroup v1: one per controller; v2: one
with both), where the host lets the worker make them (a root worker, cgroup
filesystems writable); otherwise :attr:`Cgroups.dirs` is empty and the supervisor falls
back to rlimits. The worker puts the box's supervisor in them while the supervisor's
interpreter starts: moving a process into a v1 cgroup waits for an RCU grace period
(about 9 ms here), which every run would otherwise pay on its way to the tests.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _own() -> dict[str, str]:
    """This process's cgroup path by controller ("" for the v2 hierarchy)."""
    mine = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            mine[c] = path.lstrip("/")
    return mine


class Cgroups:
    """The cgroups of one box, named ``name``, with its limits written."""

    def __init__(self, name: str, memory: int, processes: int) -> None:
        self.dirs: dict[str, Path] = {}
        self.v2 = False
        if not (memory or processes):
            return
        mine = _own()
        try:
            if "memory" in mine or "pids" in mine:
                for ctl, limit, file in (("memory", memory, "memory.limit_in_bytes"),
                                         ("pids", processes, "pids.max")):
                    if limit and ctl in mine:
                        folder = CGROUP_ROOT / ctl / mine[ctl] / name
                        folder.mkdir(exist_ok=True)
                        self.dirs[ctl] = folder
                        (folder / file).write_text(str(limit))
            elif "" in mine and (CGROUP_ROOT / "cgroup.controllers").exists():
                folder = CGROUP_ROOT / mine[""] / name
                folder.mkdir(exist_ok=True)
                self.v2 = True
                self.dirs = {"memory": folder, "pids": folder}
                if memory:
                    (folder / "memory.max").write_text(str(memory))
                    (folder / "memory.swap.max").write_text("0")
                if processes:
                    (folder / "pids.max").write_text(str(processes))
        except OSError:  # not ours to make: rlimits instead
            self.remove()
            self.dirs = {}

    def join(self, pid: int) -> bool:
        """Put process ``pid`` (and what it starts from now on) in the box's cgroups."""
        try:
            for folder in set(self.dirs.values()):
                (folder / "cgroup.procs").write_text(str(pid))
        except OSError:
            return False
        return True

    def processes_hit(self) -> bool:
        folder = self.dirs.get("pids")
        events = _read(folder / "pids.events") if folder else ""
        return any(line.split()[-1] != "0" for line in events.splitlines()
                   if line.startswith("max"))

    def memory_hit(self) -> bool:
        folder = self.dirs.get("memory")
        if folder is None:
            return False
        text = _read(folder / ("memory.events" if self.v2 else "memory.oom_control"))
        return any(line.split()[-1] != "0" for line in text.splitlines()
                   if line.startswith("oom_kill"))

    def kill_all(self) -> None:
        """Kill whatever is still in the cgroups (nothing, when the box died whole)."""
        for _ in range(100):
            pids = set()
            for folder in set(self.dirs.values()):
                pids |= {int(p) for p in _read(folder / "cgroup.procs").split()}
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for folder in set(self.dirs.values()):
            for _ in range(50):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the killed processes are not gone from it yet
                    time.sleep(0.01)


def cgroup_name(run_id: str) -> str:
    """The name of the cgroups of run ``run_id``'s boxes."""
    return f"ciq-{run_id}"


def remove_left(run_id: str) -> None:
    """Remove the cgroups of a run whose worker died before it could (empty by then)."""
    name = cgroup_name(run_id)
    for ctl, path in _own().items():
        folder = CGROUP_ROOT / ctl / path / name if ctl else CGROUP_ROOT / path / name
        try:
            folder.rmdir()
        except OSError:
            pass
