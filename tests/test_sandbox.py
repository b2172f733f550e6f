"""The box and its supervisor, with real bwrap boxes, processes and signals: what runs
inside ends with the run, sees only its own folders and processes, reaches no service of
the host, and meets its limits. (test_box.py tries the same from a commit's tests, run
by real workers.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from ciq.runner.box import Box, Limits, own_interpreter, run_env
from ciq.runner.process import run_sandboxed

from .helpers import wait_for

PYTHON = str(own_interpreter() / "bin" / "python3")


class Sandbox:
    """A folder the box may write (``inside``) and the worker's folder of the run."""

    def __init__(self, tmp_path: Path) -> None:
        self.inside = tmp_path / "box"
        self.run_dir = tmp_path / "run"
        (self.inside / "home").mkdir(parents=True)
        self.run_dir.mkdir()
        self.marker = f"ciq-test-{uuid.uuid4().hex}"

    def box(self, limits: Limits | None = None, **env: str) -> Box:
        box = Box(self.inside, {**run_env({}, self.inside / "home"), **env},
                  limits or Limits(1 << 30, 128, 16 << 20))
        return box.allow_read(own_interpreter()).allow_write(self.inside)

    def script(self, code: str) -> list[str]:
        path = self.inside / "under_test.py"
        path.write_text(textwrap.dedent(code).replace("MARKER", self.marker))
        return [PYTHON, str(path)]

    def run(self, code: str, time_limit: float = 30, box: Box | None = None, **kw):
        return run_sandboxed(self.script(code), box or self.box(), time_limit, 8192,
                             self.run_dir, **kw)

    def left_running(self) -> list[int]:
        """Host pids of the processes the test started (they carry the marker)."""
        found = []
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    if self.marker.encode() in fh.read():
                        found.append(int(name))
            except (OSError, ValueError):
                continue
        return found


#: A child that sleeps for ten minutes, found again by the marker in its command line.
SLEEPER = 'subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "MARKER"]'


@pytest.fixture
def sb(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def test_exit_status_and_output_come_back(sb: Sandbox) -> None:
    done = sb.run("import sys; print('hello'); sys.exit(3)")
    assert (done.exit_code, done.timed_out, done.limit) == (3, False, None)
    assert done.output.strip() == "hello"


def test_time_limit_kills_children_and_escaped_grandchildren(sb: Sandbox) -> None:
    started = time.monotonic()
    done = sb.run(f"""
        import os, subprocess, sys, time
        kid = {SLEEPER})
        escaper = {SLEEPER}, start_new_session=True)
        os.fork() or time.sleep(600)
        time.sleep(600)
    """, time_limit=2)
    assert done.timed_out and time.monotonic() - started < 8
    assert not sb.left_running()


def test_children_that_outlive_the_command_are_killed(sb: Sandbox) -> None:
    done = sb.run(f"""
        import os, subprocess, sys
        {SLEEPER}, start_new_session=True, stdout=subprocess.DEVNULL)
        if os.fork() == 0:  # a daemon: double fork, new session
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)",
                                          "MARKER"])
            os._exit(0)
    """)
    assert done.exit_code == 0 and not done.timed_out
    wait_for(lambda: not sb.left_running(), 5, "what the tests left behind to die")


def test_a_flood_of_output_is_capped(sb: Sandbox) -> None:
    done = sb.run("""
        import sys
        sys.stdout.write("FIRST\\n")
        for _ in range(2000):
            sys.stdout.write("x" * 9999 + "\\n")
        sys.stdout.write("LAST\\n")
    """, time_limit=60)
    assert done.exit_code == 0
    assert done.output.startswith("FIRST") and done.output.rstrip().endswith("LAST")
    assert len(done.output) < 9000 and "bytes of output omitted" in done.output


def test_killing_the_worker_process_kills_the_tests(sb: Sandbox) -> None:
    # Given a process standing in for a pool process, running a test that sleeps
    cmd = sb.script(f"""
        import subprocess, sys, time
        {SLEEPER})
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib
        from ciq.runner.box import Box, Limits, own_interpreter, run_env
        from ciq.runner.process import run_sandboxed
        inside = pathlib.Path({str(sb.inside)!r})
        box = Box(inside, run_env({{}}, inside), Limits()).allow_read(own_interpreter())
        run_sandboxed({cmd!r}, box.allow_write(inside), 600, 4096,
                      pathlib.Path({str(sb.run_dir)!r}))
    """)])
    try:
        wait_for(lambda: sb.left_running(), 20, "the test to start")
        # When that process is killed with SIGKILL
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        # Then the test and its child die too
        wait_for(lambda: not sb.left_running(), 5, "the tests to die")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_test_cannot_reach_its_supervisor_and_a_killed_supervisor_ends_the_box(
        sb: Sandbox) -> None:
    # The box's pid 1 is bwrap's, and nothing above it is in the box's /proc
    done = sb.run("""
        import os
        print(os.getpid(), os.getppid(), sorted(int(p) for p in os.listdir("/proc")
                                                if p.isdigit()))
    """)
    pid, ppid, visible = done.output.split(" ", 2)
    assert int(ppid) == 1 and int(pid) <= 3 and len(eval(visible)) <= 3, done.output
    # And when the supervisor is killed from outside, the box goes with it
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        box_cmd = sb.script(f"""
            import subprocess, sys, time
            {SLEEPER})
            time.sleep(600)
        """)
        import threading
        result: list = []
        t = threading.Thread(target=lambda: result.append(
            run_sandboxed(box_cmd, sb.box(), 60, 4096, sb.run_dir)))
        t.start()
        wait_for(lambda: sb.left_running(), 20, "the test to start")
        supervisor = _supervisor_of(sb.run_dir)
        os.kill(supervisor, signal.SIGKILL)
        t.join(20)
        assert result and result[0].exit_code == -signal.SIGKILL
        wait_for(lambda: not sb.left_running(), 5, "the box to die with its supervisor")
    finally:
        proc.kill()
        proc.wait()


def _supervisor_of(run_dir: Path) -> int:
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if str(run_dir / "box.spec").encode() in fh.read():
                    return int(name)
        except (OSError, ValueError):
            continue
    raise AssertionError("no supervisor found")


def test_the_box_reaches_no_service_of_the_host(sb: Sandbox) -> None:
    # Given a service listening on the host's loopback (standing in for Redis)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        server.settimeout(0.5)
        done = sb.run(f"""
            import socket
            for host in ("127.0.0.1", "localhost", "::1"):
                try:
                    socket.create_connection((host, {port}), timeout=2).close()
                    print("reached", host)
                except OSError as exc:
                    print("refused", host, exc.errno)
        """)
        # Then it is not reached, and nothing connected to it
        assert "reached" not in done.output and done.output.count("refused") == 3
        with pytest.raises(TimeoutError):
            server.accept()


def test_the_box_sees_no_secret_and_its_supervisor_holds_none(sb: Sandbox,
                                                               monkeypatch) -> None:
    monkeypatch.setenv("CIQ_WEBHOOK_SECRET", "s3cret-of-the-worker")
    box = sb.box(LD_PRELOAD="/nonexistent/evil.so", REPO_VAR="mine")
    done = sb.run("""
        import os
        print(sorted(os.environ))
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if b"s3cret" in open(f"/proc/{name}/environ", "rb").read():
                        print("FOUND in", name)
                except OSError:
                    pass
        for path in ("/etc/ciq", "/etc/shadow", "/root/.bashrc", "/root/.ssh"):
            print(path, os.path.exists(path))
        print("root holds", sorted(os.listdir("/root")) if os.path.isdir("/root") else [])
    """, box=box)
    assert "FOUND" not in done.output and "s3cret" not in done.output
    assert "REPO_VAR" in done.output and "CIQ_" not in done.output
    for path in ("/etc/ciq", "/etc/shadow", "/root/.bashrc", "/root/.ssh"):
        assert f"{path} False" in done.output
    # only the interpreter's installation, when it lives in root's home (pyenv)
    assert "root holds []" in done.output or "root holds ['.pyenv']" in done.output
    # the repository's LD_PRELOAD reached the box only: the supervisor ran as usual
    assert "evil.so" in done.output and done.exit_code == 0


def test_the_box_writes_its_own_folder_only(sb: Sandbox, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    done = sb.run(f"""
        import os
        open("mine.txt", "w").write("ok")
        # (under /tmp, outside.txt goes to the box's private /tmp: never to the host's)
        open({str(outside)!r}, "w").write("x")
        for path in ("/usr/evil", "/etc/evil", "/evil", {str(sb.run_dir / 'x')!r}):
            try:
                open(path, "w").write("x")
                print("wrote", path)
            except OSError as exc:
                print("refused", path, exc.errno)
    """)
    assert "wrote" not in done.output and done.output.count("refused") == 4
    assert (sb.inside / "mine.txt").read_text() == "ok" and not outside.exists()


def test_a_fork_bomb_ends_as_the_process_limit(sb: Sandbox) -> None:
    started = time.monotonic()
    done = sb.run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, time_limit=60)
    assert done.limit == "processes" and not done.timed_out
    assert time.monotonic() - started < 20
    assert not sb.left_running()


def test_a_memory_hog_ends_as_the_memory_limit(sb: Sandbox) -> None:
    done = sb.run("x = bytearray(400 << 20); print('allocated')",
                  box=sb.box(Limits(128 << 20, 64, 16 << 20)))
    assert done.limit == "memory" and done.exit_code != 0
    assert "allocated" not in done.output


def test_tmp_is_private_and_small(sb: Sandbox, tmp_path: Path) -> None:
    done = sb.run("""
        import os
        print(os.listdir("/tmp"))
        try:
            with open("/tmp/fill", "wb") as fh:
                for _ in range(64):
                    fh.write(b"x" * (1 << 20))
            print("filled")
        except OSError as exc:
            print("full", exc.errno)
    """)
    assert "full 28" in done.output  # ENOSPC at the box's 16 MiB
    assert not any(p.name == "fill" for p in Path("/tmp").iterdir())


def test_a_run_that_fills_the_disk_is_stopped(sb: Sandbox) -> None:
    # Given a reserve just under what is free now, and a test writing past it
    st = os.statvfs(sb.inside)
    free = st.f_bavail * st.f_frsize
    reserve = free - (64 << 20)
    done = sb.run("""
        import time
        with open("big", "wb") as fh:
            for _ in range(1024):          # up to 1 GiB, 1 MiB at a time
                fh.write(b"x" * (1 << 20))
                fh.flush()
                time.sleep(0.002)
        time.sleep(600)
    """, time_limit=120, min_free_bytes=reserve)
    # Then it is stopped long before its time limit, and says why
    assert done.disk_full and not done.timed_out
    assert done.seconds < 30
    assert (sb.inside / "big").stat().st_size < (512 << 20)
