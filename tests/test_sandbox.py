"""The sandbox around the code under test, with real processes and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ciq.runner.process import run_environment, run_sandboxed

from .helpers import alive, wait_for


def _script(tmp_path: Path, code: str) -> list[str]:
    path = tmp_path / "under_test.py"
    path.write_text(textwrap.dedent(code))
    return [sys.executable, str(path)]


def _pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_exit_status_and_output_come_back(tmp_path: Path) -> None:
    cmd = _script(tmp_path, "import sys; print('hello'); sys.exit(3)")
    done = run_sandboxed(cmd, tmp_path, dict(os.environ), 30, 4096, tmp_path / "pgid")
    assert (done.exit_code, done.timed_out) == (3, False)
    assert done.output.strip() == "hello"


def test_time_limit_kills_children_and_escaped_grandchildren(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    cmd = _script(tmp_path, f"""
        import os, subprocess, sys, time
        kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        escaper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                   start_new_session=True)  # leaves the process group
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{kid.pid}} {{escaper.pid}}")
        time.sleep(600)
    """)
    started = time.monotonic()
    done = run_sandboxed(cmd, tmp_path, dict(os.environ), 2, 4096, tmp_path / "pgid")
    assert done.timed_out and time.monotonic() - started < 8
    assert len(_pids(pids)) == 3
    wait_for(lambda: not any(alive(p) for p in _pids(pids)), 5, "the whole tree to die")


def test_children_that_outlive_the_command_are_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    cmd = _script(tmp_path, f"""
        import os, subprocess, sys
        kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                               start_new_session=True, stdout=subprocess.DEVNULL)
        open({str(pids)!r}, "w").write(str(kid.pid))
    """)
    done = run_sandboxed(cmd, tmp_path, dict(os.environ), 30, 4096, tmp_path / "pgid")
    assert done.exit_code == 0 and not done.timed_out
    wait_for(lambda: not alive(_pids(pids)[0]), 5, "the left-behind child to die")


def test_a_flood_of_output_is_capped(tmp_path: Path) -> None:
    cmd = _script(tmp_path, """
        import sys
        sys.stdout.write("FIRST\\n")
        for _ in range(2000):
            sys.stdout.write("x" * 9999 + "\\n")
        sys.stdout.write("LAST\\n")
    """)
    done = run_sandboxed(cmd, tmp_path, dict(os.environ), 60, 8192, tmp_path / "pgid")
    assert done.exit_code == 0
    assert done.output.startswith("FIRST") and done.output.rstrip().endswith("LAST")
    assert len(done.output) < 9000 and "bytes of output omitted" in done.output


def test_killing_the_worker_process_kills_the_tests(tmp_path: Path) -> None:
    # Given a process standing in for a pool process, running a test that sleeps
    pids = tmp_path / "pids"
    cmd = _script(tmp_path, f"""
        import os, subprocess, sys, time
        kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{kid.pid}}")
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, pathlib
        from ciq.runner.process import run_sandboxed
        run_sandboxed({cmd!r}, pathlib.Path({str(tmp_path)!r}), dict(os.environ), 600, 4096,
                      pathlib.Path({str(tmp_path / "pgid")!r}))
    """)])
    try:
        wait_for(lambda: len(_pids(pids)) == 2, 20, "the test to start")
        # When that process is killed with SIGKILL
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        # Then the test and its child die too
        wait_for(lambda: not any(alive(p) for p in _pids(pids)), 5, "the tests to die")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_test_that_kills_its_supervisor_leaves_nothing_running(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    cmd = _script(tmp_path, f"""
        import os, signal, time
        open({str(pids)!r}, "w").write(str(os.getpid()))
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(600)
    """)
    done = run_sandboxed(cmd, tmp_path, dict(os.environ), 60, 4096, tmp_path / "pgid")
    assert done.exit_code == -signal.SIGKILL
    wait_for(lambda: not alive(_pids(pids)[0]), 5, "the test to die")


def test_the_code_under_test_sees_no_ciq_secrets(tmp_path: Path) -> None:
    cmd = _script(tmp_path, """
        import os
        print(sorted(k for k in os.environ if k.startswith(("CIQ_", "CELERY_"))))
    """)
    env = run_environment({**os.environ, "CIQ_BROKER_URL": "redis://:pw@h/0",
                           "CELERY_RESULT_BACKEND": "redis://:pw@h/1"})
    done = run_sandboxed(cmd, tmp_path, env, 30, 4096, tmp_path / "pgid")
    assert done.output.strip() == "[]"


def test_a_run_that_fills_the_disk_is_stopped(tmp_path: Path) -> None:
    # Given a reserve just under what is free now, and a test writing past it
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    reserve = free - (64 << 20)
    cmd = _script(tmp_path, """
        import time
        with open("big", "wb") as fh:
            for _ in range(1024):          # up to 1 GiB, 1 MiB at a time
                fh.write(b"x" * (1 << 20))
                fh.flush()
                time.sleep(0.002)
        time.sleep(600)
    """)
    done = run_sandboxed(cmd, tmp_path, dict(os.environ), 120, 4096, tmp_path / "pgid",
                         min_free_bytes=reserve)
    # Then it is stopped long before its time limit, and says why
    assert done.disk_full and not done.timed_out
    assert done.seconds < 30
    assert (tmp_path / "big").stat().st_size < (512 << 20)
