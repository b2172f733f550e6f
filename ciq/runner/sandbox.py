"""Supervisor of one boxed command: ``python -I -S sandbox.py SPEC_FILE``.

It stands between a worker and the code under test and is what makes "a run's
processes end with the run" true. SPEC_FILE (written by :mod:`.process`, the worker's
own; NUL-separated fields, see :data:`FIELDS`, since importing json would cost every
run a tenth of its start) says: the box's memory and process limits as rlimits (0: the
worker put this supervisor in the box's cgroups, :mod:`.cgroups`, and none are needed);
the ``UID:GID`` to become before the box (empty: stay); the file of its process group;
then the bwrap command line of the box (:mod:`.box`).

* it waits for one byte on stdin, which the worker writes once the supervisor is in the
  box's cgroups (so that everything it starts is in them);
* it watches its parent (the worker's pool process) through a pidfd and kills the box
  the moment the parent dies (no ctypes for ``PR_SET_PDEATHSIG``: importing it would
  cost every run milliseconds; the box's processes cannot leave its PID namespace, so
  no subreaper is needed either);
* it starts bwrap in a new session as ``user``, recording its process group in the
  pgid file (for the worker's sweeper, should the supervisor itself be killed: bwrap's
  ``--die-with-parent`` then ends the box anyway).

SIGUSR1 from the worker (time limit, a limit hit, disk full) or the death of the worker
kills the box at once. SIGINT/SIGTERM/SIGQUIT/SIGHUP are ignored: the worker decides.

Standard library only, run with ``-I -S`` so that it starts in a few milliseconds, and
with an environment of its own (a PATH): a repository's ``env`` applies inside the box
only, never to this process, which may be root.
"""

import os
import resource
import select
import signal
import sys

STOP = signal.SIGUSR1
#: The spec file's fields before the command line, in order.
FIELDS = ("memory", "processes", "user", "pgid_file")


def kill_tree(pgid):
    """Kill the box: bwrap's process group (the box's PID namespace dies with bwrap's
    init, taking every process of the box along)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _child(spec):
    """In the forked child: the box's session, rlimits if no cgroups, user; then bwrap."""
    try:
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, STOP):
            signal.signal(sig, signal.SIG_DFL)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # not the worker's pipe
        if spec["memory"]:  # no cgroup to be in: limits per process (and per user)
            resource.setrlimit(resource.RLIMIT_AS, (spec["memory"], spec["memory"]))
        if spec["processes"]:
            resource.setrlimit(resource.RLIMIT_NPROC, (spec["processes"], spec["processes"]))
        if spec["user"]:  # the supervisor stays root: it can always kill the box
            uid, gid = (int(x) for x in spec["user"].split(":"))
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        os.execv(spec["argv"][0], spec["argv"])
    except OSError as exc:
        sys.stderr.write(f"ciq: cannot start the box ({spec['argv'][0]}): {exc.strerror}\n")
    os._exit(127)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: sandbox.py SPEC_FILE\n")
        return 2
    with open(argv[1]) as fh:
        parts = fh.read().split("\0")
    spec = dict(zip(FIELDS, parts, strict=False))
    spec["memory"], spec["processes"] = int(spec["memory"]), int(spec["processes"])
    spec["argv"] = parts[len(FIELDS):]
    try:
        parent = os.pidfd_open(os.getppid())
    except OSError:  # the worker is gone already
        return 137
    if os.getppid() == 1:
        return 137
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    child = []

    def stop(_signum, _frame):
        if child:
            kill_tree(child[0])
        os._exit(128 + int(STOP))

    signal.signal(STOP, stop)  # armed before the fork, so no stop request is missed
    if os.read(0, 1) != b"1":  # the worker gave up before the box started
        return 137
    pid = os.fork()
    if pid == 0:
        _child(spec)
    child.append(pid)
    with open(spec["pgid_file"], "w") as fh:
        fh.write(str(pid))
    pidfd = os.pidfd_open(pid)
    while True:
        try:
            ready, _, _ = select.select([pidfd, parent], [], [])
        except InterruptedError:
            continue
        if parent in ready:  # the worker's process died: the run ends with it
            stop(None, None)
        try:
            status = os.waitpid(pid, 0)[1]
            break
        except ChildProcessError:
            status = signal.SIGKILL  # the wait status of a process killed by it
            break
    kill_tree(pid)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stderr.flush()
    # No interpreter shutdown: nothing is left to clean, and each run would pay for it.
    os._exit(code if code >= 0 else 128 - code)
