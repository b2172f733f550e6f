"""What the benchmarks share: stopping what they started, and finding what they left."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the main process only (a Celery warm shutdown: SIGTERM to the whole
    group would kill the pool process mid-run and requeue its message), then SIGKILL to
    the whole session."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


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
