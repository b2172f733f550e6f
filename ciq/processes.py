"""Stopping a process tree that ciq (or its tests and benchmarks) started."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the main process only — for a worker, a Celery warm shutdown: a signal
    to the whole group would kill its pool processes mid-run and requeue their messages —
    then, after ``grace`` seconds at most, SIGKILL to whatever is left of its session."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
