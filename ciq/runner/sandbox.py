"""Supervisor of one test command:
``python -I -S sandbox.py [--user UID:GID] PGID_FILE -- CMD...``.

It stands between a worker and the code under test, and it is what makes "a killed
worker leaves no test suite running" true:

* it asks the kernel for SIGUSR1 when its parent (the worker's pool process) dies
  (``PR_SET_PDEATHSIG``; the signal is tied to the parent *thread*, which is the
  task's thread in a prefork pool child);
* it makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so that processes
  the tests leave behind — even ones that ``setsid()`` out of the process group — are
  re-parented to it and not to init;
* it starts the command in a new session, records its process group in PGID_FILE (for
  the worker's sweeper if the supervisor itself is killed), waits for it, and then kills
  every descendant still alive.

With ``--user`` (a worker running as root with ``CIQ_RUN_AS``) the command runs as that
user, so it can neither touch the worker's files nor signal the supervisor.

SIGUSR1 from the worker (time limit) or from the kernel (worker died) kills the whole
tree at once. SIGINT/SIGTERM/SIGQUIT sent to the worker's process group are ignored:
the worker decides, through SIGUSR1, when a run stops.

Standard library only, run with ``-I -S`` so that it starts in a few milliseconds.
"""

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP = signal.SIGUSR1


def _children(me: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == me:
            found.append(int(name))
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_tree(pgid: int) -> None:
    """Kill the command's process group, then every descendant that escaped it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    me = os.getpid()
    for _ in range(200):
        try:  # a subreaper with no children has no descendants left: the common case
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                pass
        except ChildProcessError:
            return
        _reap()
        kids = _children(me)
        if not kids:
            return
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    user: tuple[int, int] | None = None
    if len(argv) > 2 and argv[1] == "--user":  # UID:GID the command runs as
        uid, gid = argv[2].split(":")
        user = (int(uid), int(gid))
        argv = [argv[0], *argv[3:]]
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: sandbox.py [--user UID:GID] PGID_FILE -- COMMAND...\n")
        return 2
    pgid_file, cmd = argv[1], argv[3:]
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(STOP), 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before the death signal was armed
        return 137
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    child: list[int] = []

    def stop(_signum: int, _frame: object) -> None:
        if child:
            kill_tree(child[0])
        os._exit(128 + int(STOP))

    signal.signal(STOP, stop)  # armed before the fork, so no stop request is missed
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, STOP):
                signal.signal(sig, signal.SIG_DFL)
            if user is not None:  # the supervisor stays root: it can always kill the tree
                os.setgroups([])
                os.setgid(user[1])
                os.setuid(user[0])
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            sys.stderr.write(f"ciq: cannot run {cmd[0]}: {exc.strerror}\n")
        os._exit(127)

    child.append(pid)
    with open(pgid_file, "w") as fh:
        fh.write(str(pid))

    while True:
        try:
            done, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        if done == pid:
            break
    kill_tree(pid)
    return os.waitstatus_to_exitcode(status) if status >= 0 else 1


if __name__ == "__main__":
    code = main(sys.argv)
    sys.exit(code if code >= 0 else 128 - code)
