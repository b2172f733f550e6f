"""Supervisor of one boxed command: ``python -I -S sandbox.py SPEC_FILE``.

It stands between a worker and the code under test and is what makes "a run's
processes end with the run" true. SPEC_FILE (written by :mod:`.process`, the worker's
own; NUL-separated fields, see :data:`FIELDS`, since importing json would cost every
run a tenth of its start) says: the name of the box's cgroups; its memory and process
limits; the ``UID:GID`` to become before the box (empty: stay); the files of its
process group and of its result; then the bwrap command line of the box (:mod:`.box`).
The result file gets ``memory=0|1 processes=0|1``: which limit the box hit.

* it watches its parent (the worker's pool process) through a pidfd and kills the box
  the moment the parent dies (no ctypes for ``PR_SET_PDEATHSIG``: importing it would
  cost every run milliseconds; the box's processes cannot leave its PID namespace, so
  no subreaper is needed either);
* it puts the box in a memory and a pids cgroup of its own (cgroup v1 or v2, where the
  host lets it; rlimits otherwise), becomes ``user``, and starts bwrap in a new session,
  recording its process group in ``pgid_file`` (for the worker's sweeper, should the
  supervisor itself be killed: bwrap's ``--die-with-parent`` then ends the box anyway);
* a box that reaches its process limit is killed at once (a fork bomb would otherwise
  spin until the time limit); a memory hog meets the cgroup's OOM killer;
* when bwrap ends, it kills what is left (the cgroup's processes, any descendant) and
  writes ``result_file``: which limit the box hit.

SIGUSR1 from the worker (time limit) or the kernel (worker died) kills the box at once.
SIGINT/SIGTERM/SIGQUIT/SIGHUP are ignored: the worker decides, through SIGUSR1.

Standard library only, run with ``-I -S`` so that it starts in a few milliseconds, and
with an environment of its own (a PATH): a repository's ``env`` applies inside the box
only, never to this process, which may be root.
"""

import os
import resource
import select
import signal
import sys
import time

STOP = signal.SIGUSR1
#: The spec file's fields before the command line, in order.
FIELDS = ("cgroup", "memory", "processes", "user", "pgid_file", "result_file")
CGROUP_ROOT = "/sys/fs/cgroup"
#: Seconds between two looks at the box's cgroups while it runs.
WATCH = 0.1


def _read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _write(path, value):
    with open(path, "w") as fh:
        fh.write(str(value))


class Cgroups:
    """The box's memory and pids cgroups (one cgroup under v2), made under the
    supervisor's own; empty when the host does not let us make them."""

    def __init__(self, name, memory, processes):
        self.dirs = {}
        self.v2 = False
        if not (memory or processes):
            return
        mine = {}
        for line in _read("/proc/self/cgroup").splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(","):
                mine[c] = path
        try:
            if "memory" in mine or "pids" in mine:  # v1: one hierarchy per controller
                for ctl, limit, file in (("memory", memory, "memory.limit_in_bytes"),
                                         ("pids", processes, "pids.max")):
                    if limit and ctl in mine:
                        d = f"{CGROUP_ROOT}/{ctl}{mine[ctl].rstrip('/')}/{name}"
                        os.makedirs(d, exist_ok=True)
                        self.dirs[ctl] = d
                        _write(f"{d}/{file}", limit)
            elif "" in mine and os.path.exists(f"{CGROUP_ROOT}/cgroup.controllers"):
                d = f"{CGROUP_ROOT}{mine[''].rstrip('/')}/{name}"
                os.makedirs(d, exist_ok=True)
                self.v2 = True
                self.dirs = {"memory": d, "pids": d}
                if memory:
                    _write(f"{d}/memory.max", memory)
                    _write(f"{d}/memory.swap.max", 0)
                if processes:
                    _write(f"{d}/pids.max", processes)
        except OSError:
            self.remove()
            self.dirs = {}

    def join(self, pid):
        for d in set(self.dirs.values()):
            _write(f"{d}/cgroup.procs", pid)

    def processes_hit(self):
        d = self.dirs.get("pids")
        events = _read(f"{d}/pids.events") if d else ""
        return any(line.split()[-1] != "0" for line in events.splitlines()
                   if line.startswith("max"))

    def memory_hit(self):
        d = self.dirs.get("memory")
        if not d:
            return False
        text = _read(f"{d}/memory.events" if self.v2 else f"{d}/memory.oom_control")
        return any(line.split()[-1] != "0" for line in text.splitlines()
                   if line.startswith("oom_kill"))

    def kill_all(self):
        for _ in range(100):
            pids = set()
            for d in set(self.dirs.values()):
                pids |= {int(p) for p in _read(f"{d}/cgroup.procs").split()}
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)

    def remove(self):
        for d in set(self.dirs.values()):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the killed processes are not gone from it yet
                    time.sleep(0.01)


def kill_tree(pgid, cgroups):
    """Kill the box: bwrap's process group (the box's PID namespace dies with bwrap's
    init, taking every process of the box along), and whatever is in its cgroups."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    cgroups.kill_all()
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _child(spec, cgroups):
    """In the forked child: the box's session, cgroups or rlimits, user; then bwrap."""
    try:
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, STOP):
            signal.signal(sig, signal.SIG_DFL)
        if cgroups.dirs:
            cgroups.join(os.getpid())
        else:  # no cgroup to make: limits per process (and per user for processes)
            if spec["memory"]:
                resource.setrlimit(resource.RLIMIT_AS, (spec["memory"], spec["memory"]))
            if spec["processes"]:
                resource.setrlimit(resource.RLIMIT_NPROC,
                                   (spec["processes"], spec["processes"]))
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
    cgroups = Cgroups(spec["cgroup"], spec["memory"], spec["processes"])
    child = []
    hit = {"memory": False, "processes": False}

    def finish():
        hit["memory"] = hit["memory"] or cgroups.memory_hit()
        if child:
            kill_tree(child[0], cgroups)
        cgroups.remove()
        with open(spec["result_file"], "w") as fh:
            fh.write(" ".join(f"{k}={int(v)}" for k, v in hit.items()))

    def stop(_signum, _frame):
        finish()
        os._exit(128 + int(STOP))

    signal.signal(STOP, stop)  # armed before the fork, so no stop request is missed
    pid = os.fork()
    if pid == 0:
        _child(spec, cgroups)
    child.append(pid)
    with open(spec["pgid_file"], "w") as fh:
        fh.write(str(pid))
    pidfd = os.pidfd_open(pid)
    status = None
    while status is None:
        try:
            ready, _, _ = select.select([pidfd, parent], [], [], WATCH)
        except InterruptedError:
            continue
        if parent in ready:  # the worker's process died: the run ends with it
            stop(None, None)
        if ready:
            try:
                status = os.waitpid(pid, 0)[1]
            except ChildProcessError:  # reaped by kill_tree below on an earlier turn
                status = signal.SIGKILL  # the wait status of a process killed by it
        elif cgroups.processes_hit():  # a fork bomb: stop it now, not at the time limit
            hit["processes"] = True
            kill_tree(pid, cgroups)
    finish()
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stderr.flush()
    # No interpreter shutdown: nothing is left to clean, and each run would pay for it.
    os._exit(code if code >= 0 else 128 - code)
