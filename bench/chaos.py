"""Chaos figure: commits keep landing while workers, observers and Redis die at random.

Run ``python bench/chaos.py [--seed N] [--commits N] [--duration S] [--quick]``.

What is measured: whether ciq keeps its promise — every commit ends with exactly one
report, no commit is ever run twice at the same time, and a run that dies is started
again within seconds — while its parts are being killed.

How. Everything is private to the run, as in ``bench/spine.py``: a redis-server on a free
port of 127.0.0.1 with AOF persistence (``--appendonly yes --appendfsync always``), three
``celery -A ciq worker`` processes (concurrency 1, each its own ``CIQ_DATA_DIR`` and host
name, ``CIQ_LEASE_TTL=5``, ``CIQ_RECONCILE_INTERVAL=1``, ``CIQ_MAX_ATTEMPTS=5``), one
``ciq observe REPO --interval 0.5`` daemon per repository, and two git repositories (bare
"servers" the observers watch, pushed to from working clones) in a temporary directory.

* Each commit's ``tests/test_chaos.py`` holds 3 tests sleeping 0.3-1.5 s (random per
  commit). Every test appends to one execution log outside the repositories (single
  O_APPEND writes, so lines never mix) a line ``<repo> <commit-number> <pid> <start> -``
  when it starts and ``<repo> <commit-number> <pid> <start> <end>`` when it ends. One
  pytest process (pid) of one commit is one *execution*.
* The commits (``--commits``, default 60) are pushed over ``--duration`` seconds (default
  60), alternating between the repositories. Meanwhile a chaos thread, driven by a
  seeded random generator (the seed is printed), every 3-6 s kills a random worker,
  either with SIGKILL to its whole session or with SIGTERM to its main process (Celery's
  warm shutdown), and restarts it with the same data folder and host name once it is
  gone; twice it SIGKILLs both observers and restarts them 1-3 s later (commits land
  meanwhile); once it stops Redis (SIGTERM: with AOF nothing is lost), waits 3 s and
  starts it again on the same port and folder. Workers and observers are never restarted
  because of the Redis outage: they must reconnect by themselves.
* New faults, drawn from the same generator at random moments of the push window (one
  of each kind per 30 s of it, three kills at pickup per 60 s; at least one each):
  - Redis stalls: SIGSTOP to the redis-server for twice the lease TTL (10 s), then
    SIGCONT. Every lease expires meanwhile; no process is restarted.
  - kills at pickup, between a worker receiving a message and taking its lease: the next
    commit pushed is watched (every ~1 ms) until the observer claims it, which puts its
    message on the broker queue, and at that instant a worker that holds no lease (an
    idle one, which is what picks the message up) gets SIGKILL on its whole session, and
    is restarted as above. Where the commit was at the kill is recorded: still queued,
    taken off the queue but not leased (the window aimed at), or leased already.
  - messages lost from the broker: LREM of the queued message of a pushed commit not
    run yet from the broker's list, as if the broker had lost it (tried for up to 30 s:
    a message stays queued only while every worker is busy). ciq must send such a
    commit again (sent, neither leased nor reported nor queued for a few seconds).
  The new faults wait for their moment in threads of their own (they and the schedule's
  other events stay on time, even while one waits for a stalled Redis); for each kill
  at pickup and each drop, how long until the commit ran again is shown above the
  final line.
* Then the script waits for quiet: every pushed commit has a final report, or a time-out
  (180 s, so that a run that loses commits still ends within about five minutes).

Figures (final line ``chaos: pushed N, reports R, lost L, overlapping duplicates D, max
recovery X.Xs, attempts {...}, new faults {...}``, the last the count of each new fault
injected):

* lost: pushed commits without a final report at the end;
* overlapping duplicates: pairs of executions of the same commit whose [start, end]
  intervals overlap in time. An execution's interval runs from its first test start to
  its last known instant (a test that never logged its end counts until its start only,
  so an overlap counted is certain; overlaps that a killed test *may* have had are listed
  as "possible" and not counted);
* recovery: for each worker SIGKILL (a kill at pickup included) that interrupted a run —
  the worker held a commit's lease (``ciq:lease:*`` whose run id is the one in the
  commit's ``ciq:commit:*`` hash with the victim's name in ``worker``, read just before
  the kill; just after it for a kill at pickup) and the final report is not that
  run's — seconds from the kill until that commit's next execution starts;
* attempts: histogram of ``attempts`` over the final reports.

To explain a slow recovery, each one is broken down: when a worker's reconciler logged
that it handed the commit back to the queue, how many runs were waiting in the broker
queue then (sampled every 0.5 s), and when the run that made the final report took its
lease. Warnings, errors and tracebacks of every log are counted by kind at the end.

Targets: 0 lost, 0 overlapping duplicates, every recovery under 10 s (the exit status is
0 only then). ``--quick`` pushes 16 commits over 20 s (so fewer kills, one new fault of
each kind), for a smoke test.
Raw data go to ``bench/results/chaos.json`` and the processes' logs to
``bench/results/chaos-logs/``. Every process started here is stopped by pid in a
``finally`` block and the temporary directory removed. Another load on the machine (a
test suite) makes the timings noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import redis
from harness import kill_leftovers, stop_process

from ciq.gitrepo import normalise_repo
from ciq.store import Store
from ciq.store.keys import commit as commit_key
from ciq.store.keys import repo_id, task_id
from ciq.store.keys import report as report_key

WORKERS = ("chaos1", "chaos2", "chaos3")
REPOS = ("alpha", "beta")
WORKER_ENV = {"CIQ_LEASE_TTL": "5", "CIQ_RECONCILE_INTERVAL": "1", "CIQ_MAX_ATTEMPTS": "5"}
OBSERVER_INTERVAL = "0.5"
TESTS_PER_COMMIT = 3
SLEEP_RANGE = (0.3, 1.5)  # seconds each test sleeps, random per commit
KILL_EVERY = (3.0, 6.0)  # seconds between two worker kills
OBSERVER_KILLS = 2
OBSERVER_DOWN = (1.0, 3.0)  # seconds the observers stay dead
REDIS_DOWN = 3.0  # seconds Redis stays stopped
REDIS_STALL = 2 * float(WORKER_ENV["CIQ_LEASE_TTL"])  # seconds Redis stays frozen: > a lease
STALL_EVERY = 30.0  # seconds of push window per Redis stall
PICKUP_KILL_EVERY = 20.0  # seconds of push window per kill at pickup
DROP_EVERY = 30.0  # seconds of push window per message dropped from the broker
PICKUP_WAIT = 20.0  # seconds a kill at pickup waits for a push with an idle worker
DROP_WAIT = 30.0  # seconds a drop waits for a queued message (all workers busy)
QUEUE = "ciq"  # the broker's list of the workers' queue
QUIET_TIMEOUT = 180.0
RECOVERY_TARGET = 10.0
RESULTS = Path(__file__).resolve().parent / "results"

TEST_FILE = """\
import os, time

LOG = {log!r}
REPO = {repo!r}
COMMIT = {number}
SLEEPS = {sleeps!r}
# One pytest process of one commit: pids repeat across boxes (each has its own PID
# namespace), so a random number tells executions apart.
EXECUTION = int.from_bytes(os.urandom(6), "big")


def _record(start, end):
    line = f"{{REPO}} {{COMMIT}} {{EXECUTION}} {{start:.6f}} {{end}}\\n"
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _run(i):
    start = time.time()
    _record(start, "-")
    time.sleep(SLEEPS[i])
    _record(start, f"{{time.time():.6f}}")
"""
TEST_FUNC = "\n\ndef test_{i}():\n    _run({i})\n"

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Chaos", "GIT_AUTHOR_EMAIL": "chaos@example.org",
           "GIT_COMMITTER_NAME": "Chaos", "GIT_COMMITTER_EMAIL": "chaos@example.org"}

T0 = time.time()  # reset when the pushes start; printed times are relative to it


def say(message: str) -> None:
    print(f"[{time.time() - T0:7.2f}s] {message}", flush=True)


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)
    return value


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


# -- the world: redis-server, daemons, repositories ------------------------------------------


@dataclass
class Daemon:
    """A worker or an observer: started, killed and started again, each time a new log."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)
    spawned_at: float = 0.0  # when the current incarnation was started
    up: bool = False  # started and ready; the chaos thread only picks daemons that are up


@dataclass
class Repo:
    name: str
    server: Path  # the bare repository the observer watches and the workers fetch from
    clone: Path  # where commits are made and pushed from
    key: str  # the repository as ciq names it (normalise_repo of the server)


class World:
    """The private world of one run; ``close`` stops everything it started."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ciq-chaos-")).resolve()
        (self.root / "logs").mkdir()
        # In the folder the workers share with their runs' boxes (CIQ_BOX_SHARED).
        (self.root / "shared").mkdir()
        self.exec_log = self.root / "shared" / "executions.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.store = Store.from_url(self.url)
        self.redis: subprocess.Popen | None = None
        self.redis_starts = 0
        self.all_procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.closing = False
        self.workers = {name: self._worker(name) for name in WORKERS}
        self.repos = {name: self._repo(name) for name in REPOS}
        self.observers = {name: self._observer(repo) for name, repo in self.repos.items()}
        self.numbers: dict[tuple[str, str], str] = {}  # (repo key, sha) -> "alpha #7"
        self.pushed: list[tuple[str, str]] = []  # (repo key, sha), in push order

    # Redis ------------------------------------------------------------------------------

    def start_redis(self) -> None:
        (self.root / "redis").mkdir(exist_ok=True)
        self.redis_starts += 1
        log = self.root / "logs" / f"redis-{self.redis_starts}.log"
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.root / "redis"), "--save", "", "--appendonly", "yes",
               "--appendfsync", "always", "--logfile", str(log)]
        self.redis = self._popen(cmd, None, subprocess.DEVNULL)
        if not wait_for(self.redis_up, 20):
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def redis_up(self) -> bool:
        try:
            return bool(self.store.client.ping())
        except redis.RedisError:
            return False

    def stop_redis(self) -> None:
        assert self.redis is not None
        os.kill(self.redis.pid, signal.SIGTERM)  # with AOF always: nothing is lost
        self.redis.wait(30)

    # Daemons ----------------------------------------------------------------------------

    def env(self, data_dir: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CIQ_", "CELERY_"))}
        env.update(CIQ_BROKER_URL=self.url, CIQ_RESULT_BACKEND=self.url,
                   CIQ_DATA_DIR=str(data_dir), CIQ_BOX_SHARED=str(self.root / "shared"),
                   **extra)
        return env

    def _worker(self, name: str) -> Daemon:
        cmd = [sys.executable, "-m", "celery", "-A", "ciq", "worker", "--loglevel=INFO",
               "--concurrency=1", "--without-mingle", "--without-gossip",
               f"--hostname={name}@%h"]
        return Daemon(name, cmd, self.env(self.root / f"host-{name}", **WORKER_ENV))

    def _observer(self, repo: Repo) -> Daemon:
        cmd = [sys.executable, "-m", "ciq", "observe", repo.key, "--interval", OBSERVER_INTERVAL]
        return Daemon(f"observer-{repo.name}", cmd, self.env(self.root / f"obs-{repo.name}"))

    def _popen(self, cmd: list[str], env: dict[str, str] | None, out) -> subprocess.Popen:
        with self.lock:
            if self.closing:
                raise RuntimeError("shutting down")
            proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            self.all_procs.append(proc)
        return proc

    def spawn(self, d: Daemon) -> None:
        log = self.root / "logs" / f"{d.name}-{len(d.logs) + 1}.log"
        d.logs.append(log)
        with open(log, "wb") as out:
            d.spawned_at = time.time()
            d.proc = self._popen(d.cmd, d.env, out)

    def worker_ready(self, d: Daemon, timeout: float = 60) -> bool:
        """Wait for the current incarnation's " ready." line (or its death)."""
        assert d.proc is not None
        log, proc = d.logs[-1], d.proc
        wait_for(lambda: proc.poll() is not None or " ready." in log.read_text(errors="replace"),
                 timeout, 0.05)
        return proc.poll() is None and " ready." in log.read_text(errors="replace")

    # Repositories -------------------------------------------------------------------------

    def _repo(self, name: str) -> Repo:
        server, clone = self.root / f"{name}.git", self.root / name
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(server)], check=True)
        clone.mkdir()
        git(clone, "init", "-q", "-b", "main")
        git(clone, "remote", "add", "origin", str(server))
        return Repo(name, server, clone, normalise_repo(str(server)))

    def push_commit(self, repo: Repo, number: int, sleeps: list[float]) -> str:
        text = TEST_FILE.format(log=str(self.exec_log), repo=repo.name, number=number,
                                sleeps=sleeps)
        text += "".join(TEST_FUNC.format(i=i) for i in range(len(sleeps)))
        (repo.clone / "tests").mkdir(exist_ok=True)
        (repo.clone / "tests" / "test_chaos.py").write_text(text)
        git(repo.clone, "add", "-A")
        git(repo.clone, "commit", "-q", "-m", f"commit {number}")
        git(repo.clone, "push", "-q", "origin", "main")
        sha = git(repo.clone, "rev-parse", "HEAD")
        self.numbers[(repo.key, sha)] = f"{repo.name} #{number}"
        self.pushed.append((repo.key, sha))
        return sha

    # Shutting down --------------------------------------------------------------------------

    def close(self) -> dict[int, str]:
        """Stop every process started here (Redis last), kill leftovers, keep the logs."""
        with self.lock:
            self.closing = True
        daemons = [*self.observers.values(), *self.workers.values()]
        for proc in [p for p in self.all_procs if p is not self.redis] + [self.redis]:
            if proc is not None:
                stop(proc, grace=15 if any(d.proc is proc for d in daemons) else 10)
        self.store.client.close()
        # let dying pool processes and test trees go, then kill what is left
        leaks = kill_leftovers(self.root, grace=5)
        keep = RESULTS / "chaos-logs"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(self.root / "logs", keep)
        if self.exec_log.exists():
            shutil.copy(self.exec_log, keep / "executions.log")
        shutil.rmtree(self.root, ignore_errors=True)
        return leaks


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    stop_process(proc, grace)


# -- set-up -------------------------------------------------------------------------------------


def start(world: World, rng: random.Random) -> None:
    """Redis, three workers, the initial commit of each repository, its observer; returns
    once both initial commits are reported (observers placed, mirrors made)."""
    world.start_redis()
    for w in world.workers.values():
        world.spawn(w)
    for w in world.workers.values():
        if not world.worker_ready(w):
            raise RuntimeError(f"worker {w.name} did not start:\n"
                               + w.logs[-1].read_text(errors="replace")[-3000:])
        w.up = True
    heads = {name: world.push_commit(repo, 0, sleeps(rng)) for name, repo in world.repos.items()}
    for o in world.observers.values():
        world.spawn(o)
        o.up = True
    for name, sha in heads.items():
        key = world.repos[name].key
        if not wait_for(lambda k=key, s=sha: world.store.report(k, s), 90):
            raise RuntimeError(f"the initial commit of {name} got no report in 90 s")
    say(f"set-up done: redis on port {world.port} (AOF always), workers {', '.join(WORKERS)}, "
        f"observers of {', '.join(REPOS)}; initial commits reported; pushes start (t = 0)")


def sleeps(rng: random.Random) -> list[float]:
    return [round(rng.uniform(*SLEEP_RANGE), 3) for _ in range(TESTS_PER_COMMIT)]


# -- chaos ---------------------------------------------------------------------------------------


@dataclass(order=True)
class Event:
    at: float  # seconds after the pushes start
    kind: str  # "worker", "observers", "redis", "redis-stall", "pickup-kill" or "drop"
    target: str = ""
    how: str = ""


def schedule(rng: random.Random, duration: float) -> list[Event]:
    """Every event of the run, drawn up front from the seeded generator."""
    events = []
    t = rng.uniform(*KILL_EVERY)
    while t < duration:
        events.append(Event(t, "worker", rng.choice(WORKERS), rng.choice(["SIGKILL", "SIGTERM"])))
        t += rng.uniform(*KILL_EVERY)
    for i in range(OBSERVER_KILLS):  # one in each half of the second to second-to-last fifth
        lo, hi = (0.15, 0.45) if i == 0 else (0.55, 0.85)
        events.append(Event(rng.uniform(lo, hi) * duration, "observers",
                            how=f"{rng.uniform(*OBSERVER_DOWN):.2f}"))
    events.append(Event(rng.uniform(0.35, 0.65) * duration, "redis"))
    for kind, every in (("redis-stall", STALL_EVERY), ("pickup-kill", PICKUP_KILL_EVERY),
                        ("drop", DROP_EVERY)):
        for _ in range(max(1, round(duration / every))):
            events.append(Event(rng.uniform(0.1, 0.9) * duration, kind, rng.choice(WORKERS)))
    return sorted(events)


class Chaos(threading.Thread):
    """Plays the schedule against the world; records what each event did in ``log``."""

    def __init__(self, world: World, events: list[Event]) -> None:
        super().__init__(name="chaos", daemon=True)
        self.world, self.events = world, events
        self.stop = threading.Event()
        self.log: list[dict] = []
        self.restarters: list[threading.Thread] = []
        # The new faults wait for their moment (up to 30 s) in threads of their own,
        # so that the schedule's other events stay on time, and these stay on theirs
        # while an event of the schedule waits for a stalled Redis.
        self.faulters: list[threading.Thread] = []
        self.kill_lock = threading.Lock()  # one victim chosen and killed at a time
        self.redis_lock = threading.Lock()  # a stall and a restart never overlap

    def run(self) -> None:
        handlers = {"worker": self.kill_worker, "observers": self.kill_observers,
                    "redis": self.restart_redis, "redis-stall": self.stall_redis,
                    "pickup-kill": self.kill_at_pickup, "drop": self.drop_message}
        own = ("redis-stall", "pickup-kill", "drop")
        for ev in self.events:
            if ev.kind in own:
                t = threading.Thread(target=self.guarded, args=(handlers[ev.kind], ev),
                                     name=ev.kind, daemon=True)
                self.faulters.append(t)
                t.start()
        try:
            for ev in self.events:
                if ev.kind not in own:
                    self.guarded(handlers[ev.kind], ev)
                if self.stop.is_set():
                    return
        finally:
            for t in self.faulters:
                t.join()

    def guarded(self, handler, ev: Event) -> None:
        """Run ``handler`` at the event's time; a failure is logged, the chaos goes on."""
        if self.stop.wait(max(0.0, T0 + ev.at - time.time())):
            return
        try:
            handler(ev)
        except Exception as exc:  # keep the chaos going; report the failure
            say(f"chaos: {ev.kind} event failed: {exc!r}")
            self.log.append({"kind": ev.kind, "at": time.time(), "error": repr(exc)})

    # Workers ----------------------------------------------------------------------------

    def kill_worker(self, ev: Event) -> None:
        with self.kill_lock:
            self._kill_worker(ev)

    def _kill_worker(self, ev: Event) -> None:
        up = [n for n in WORKERS if self.world.workers[n].up]
        if not up:
            say(f"chaos: no worker up to {ev.how}; skipped")
            return
        # the drawn victim, or the next one up (a victim still restarting is skipped)
        name = next(n for n in (WORKERS * 2)[WORKERS.index(ev.target):] if n in up)
        w = self.world.workers[name]
        assert w.proc is not None
        held = runs_held_by(self.world.store, name, w.spawned_at)
        killed_at = time.time()
        if ev.how == "SIGKILL":
            os.killpg(w.proc.pid, signal.SIGKILL)
        else:
            os.kill(w.proc.pid, signal.SIGTERM)
        w.up = False
        record = {"kind": "worker", "worker": name, "signal": ev.how, "at": killed_at,
                  "held": held, "log": str(w.logs[-1].name)}
        self.log.append(record)
        names = self.world.numbers
        shown = ", ".join(names.get((h["repo"], h["sha"]), h["sha"][:12]) for h in held or [])
        shown = shown or ("nothing" if held is not None else "unknown (Redis unreadable)")
        say(f"chaos: {ev.how} {name} (running: {shown})")
        t = threading.Thread(target=self._restart_worker, args=(w, record), daemon=True)
        self.restarters.append(t)
        t.start()

    def _restart_worker(self, w: Daemon, record: dict) -> None:
        assert w.proc is not None
        try:
            w.proc.wait(60)  # a warm shutdown lets the current run finish first
        except subprocess.TimeoutExpired:
            say(f"chaos: {w.name} still alive 60 s after {record['signal']}; SIGKILL")
            os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait()
        record["exited_at"] = time.time()
        try:
            self.world.spawn(w)
        except RuntimeError:
            return  # shutting down
        ready = self.world.worker_ready(w)
        record["ready_at"] = time.time() if ready else None
        w.up = ready
        say(f"chaos: {w.name} restarted" + (
            f", ready {record['ready_at'] - record['at']:.1f}s after the {record['signal']}"
            if ready else " but NOT ready after 60 s"))

    # Observers ----------------------------------------------------------------------------

    def kill_observers(self, ev: Event) -> None:
        killed_at = time.time()
        for o in self.world.observers.values():
            assert o.proc is not None
            os.killpg(o.proc.pid, signal.SIGKILL)
            o.proc.wait()
            o.up = False
        down = float(ev.how)
        say(f"chaos: SIGKILL observers; restart in {down:.1f}s")
        self.stop.wait(down)
        for o in self.world.observers.values():
            self.world.spawn(o)
            o.up = True
        self.log.append({"kind": "observers", "at": killed_at, "restarted_at": time.time()})
        say("chaos: observers restarted")

    # Redis --------------------------------------------------------------------------------

    def restart_redis(self, ev: Event) -> None:
        with self.redis_lock:
            self._restart_redis()

    def _restart_redis(self) -> None:
        stopped_at = time.time()
        self.world.stop_redis()
        say(f"chaos: redis-server stopped (SIGTERM); start again in {REDIS_DOWN:g}s")
        self.stop.wait(REDIS_DOWN)
        self.world.start_redis()
        self.log.append({"kind": "redis", "at": stopped_at, "restarted_at": time.time()})
        say("chaos: redis-server up again (same port, same AOF)")

    def stall_redis(self, ev: Event) -> None:
        """Freeze redis-server longer than a lease lives: every lease expires at once."""
        with self.redis_lock:
            assert self.world.redis is not None
            pid = self.world.redis.pid
            os.kill(pid, signal.SIGSTOP)
            stalled_at = time.time()
            say(f"chaos: redis-server stalled (SIGSTOP) for {REDIS_STALL:g}s")
            try:
                self.stop.wait(REDIS_STALL)
            finally:
                os.kill(pid, signal.SIGCONT)
        self.log.append({"kind": "redis-stall", "at": stalled_at, "resumed_at": time.time()})
        say("chaos: redis-server resumed (SIGCONT)")

    # New commits: between the broker and the lease ----------------------------------------

    def kill_at_pickup(self, ev: Event) -> None:
        """SIGKILL an idle worker the instant the next commit pushed is claimed (its
        message goes on the queue in the same step): the worker picking it up may die
        between receiving the message and taking the lease."""
        world, store = self.world, self.world.store
        seen, deadline = len(world.pushed), time.monotonic() + PICKUP_WAIT
        while not self.stop.is_set() and time.monotonic() < deadline:
            if len(world.pushed) <= seen:
                time.sleep(0.005)
                continue
            repo, sha = world.pushed[seen]
            seen += 1
            busy = busy_workers(store)
            idle = [n for n in WORKERS if world.workers[n].up and n not in (busy or WORKERS)]
            if not idle:
                continue  # every worker busy (or Redis unreadable): the next push
            key = commit_key(repo_id(repo), sha)
            try:
                claimed = wait_for(lambda k=key: store.client.exists(k), 5.0, 0.001)
            except redis.RedisError:  # Redis restarting: the next push
                continue
            if not claimed:
                continue
            with self.kill_lock:
                idle = [n for n in idle if world.workers[n].up]  # not killed meanwhile
                if not idle:
                    continue
                name = next(n for n in (WORKERS * 2)[WORKERS.index(ev.target):] if n in idle)
                w = world.workers[name]
                assert w.proc is not None
                killed_at = time.time()
                os.killpg(w.proc.pid, signal.SIGKILL)
                w.up = False
            where = pickup_state(store, repo, sha, name)
            held = where.pop("held")
            record = {"kind": "worker", "worker": name, "signal": "SIGKILL", "at": killed_at,
                      "held": held, "log": str(w.logs[-1].name), "fault": "pickup",
                      "repo": repo, "sha": sha, **where}
            self.log.append(record)
            say(f"chaos: SIGKILL {name} at the pickup of {world.numbers[(repo, sha)]} "
                f"({where['state']})")
            t = threading.Thread(target=self._restart_worker, args=(w, record), daemon=True)
            self.restarters.append(t)
            t.start()
            return
        say("chaos: no push with an idle worker for the kill at pickup; skipped")
        self.log.append({"kind": "pickup-kill", "at": time.time(), "skipped": True})

    def drop_message(self, ev: Event) -> None:
        """Remove one queued message of a pushed commit from the broker's list (LREM), as
        if the broker had lost it."""
        world, client = self.world, self.world.store.client
        deadline = time.monotonic() + DROP_WAIT
        while not self.stop.is_set() and time.monotonic() < deadline:
            tids = {task_id(repo, sha): (repo, sha) for repo, sha in list(world.pushed)}
            try:
                for message in client.lrange(QUEUE, 0, -1):
                    tid = next((t for t in tids if t in message), None)
                    if tid is None:
                        continue
                    repo, sha = tids[tid]
                    # Only the message of a commit not run yet: a second message of one
                    # (a re-send) is lost harmlessly.
                    if client.hget(commit_key(repo_id(repo), sha), "run_id") or \
                            client.exists(report_key(repo, sha)):
                        continue
                    if not client.lrem(QUEUE, 1, message):
                        continue  # a worker took it meanwhile
                    self.log.append({"kind": "drop", "at": time.time(), "repo": repo,
                                     "sha": sha, "queued": client.llen(QUEUE)})
                    say(f"chaos: dropped the queued message of {world.numbers[(repo, sha)]} "
                        f"(LREM)")
                    return
            except redis.RedisError:
                pass
            time.sleep(0.005)
        say("chaos: no queued message to drop; skipped")
        self.log.append({"kind": "drop", "at": time.time(), "skipped": True})


def busy_workers(store: Store) -> set[str] | None:
    """Workers (names) whose run holds a live lease; None when Redis cannot be read."""
    try:
        busy = set()
        for key in store.client.scan_iter("ciq:lease:*", count=1000):
            _, _, rid, sha = key.split(":")
            meta = store.client.hgetall(f"ciq:commit:{rid}:{sha}")
            if meta.get("run_id") and meta.get("run_id") == store.client.get(key):
                busy.add(meta.get("worker", "").split("@")[0])
        return busy
    except redis.RedisError:
        return None


def pickup_state(store: Store, repo: str, sha: str, victim: str) -> dict:
    """Where a commit was when ``victim`` was killed at its pickup: ``state`` and, in
    ``held``, its lease if the victim had taken it (then it counts as a recovery)."""
    try:
        meta = store.commit(repo, sha)
        queued = any(task_id(repo, sha) in m for m in store.client.lrange(QUEUE, 0, -1))
    except redis.RedisError as exc:
        return {"state": f"unknown ({exc!r})", "held": None}
    worker = meta.get("worker", "")
    if meta.get("run_id") and worker.startswith(f"{victim}@"):
        return {"state": "leased by the victim", "held": [{
            "repo": repo, "sha": sha, "run_id": meta["run_id"],
            "attempts": int(meta.get("attempts") or 0)}]}
    if meta.get("run_id"):
        return {"state": f"leased by {worker}", "held": []}
    return {"state": "still queued" if queued else "off the queue, not leased", "held": []}


def runs_held_by(store: Store, worker: str, since: float) -> list[dict] | None:
    """Commits whose live lease belongs to a run on ``worker`` that started after
    ``since`` (not a dead incarnation's lease, which lingers a few seconds); None when
    Redis cannot be read."""
    try:
        held = []
        for key in store.client.scan_iter("ciq:lease:*", count=1000):
            run_id = store.client.get(key)
            _, _, rid, sha = key.split(":")
            meta = store.client.hgetall(f"ciq:commit:{rid}:{sha}")
            started = meta.get("started_at")
            if run_id and meta.get("run_id") == run_id and started and \
                    meta.get("worker", "").startswith(f"{worker}@") and \
                    datetime.fromisoformat(started).timestamp() >= since:
                held.append({"repo": meta["repo"], "sha": sha, "run_id": run_id,
                             "attempts": int(meta.get("attempts") or 0)})
        return held
    except redis.RedisError:
        return None


class Backlog(threading.Thread):
    """Samples the broker queue's length (runs waiting for a worker) twice a second."""

    def __init__(self, store: Store) -> None:
        super().__init__(name="backlog", daemon=True)
        self.store, self.stop, self.samples = store, threading.Event(), []

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.samples.append((time.time(), self.store.client.llen("ciq")))
            except redis.RedisError:
                pass

    def at(self, t: float) -> int | None:
        before = [n for at, n in self.samples if at <= t]
        return before[-1] if before else None


# -- pushing and waiting ---------------------------------------------------------------------------


def push_all(world: World, n: int, duration: float, rng: random.Random) -> list[dict]:
    """One commit every ``duration / n`` seconds, alternating between the repositories."""
    pushed = []
    for number in range(1, n + 1):
        time.sleep(max(0.0, T0 + (number - 1) * duration / n - time.time()))
        repo = world.repos[REPOS[(number - 1) % len(REPOS)]]
        planned = sleeps(rng)
        sha = world.push_commit(repo, number, planned)
        pushed.append({"number": number, "repo_name": repo.name, "repo": repo.key, "sha": sha,
                       "pushed_at": time.time(), "sleeps": planned})
    say(f"pushed {n} commits")
    return pushed


def wait_for_quiet(world: World, pushed: list[dict], timeout: float) -> dict[int, object]:
    """Poll until every pushed commit has a final report (or the time-out)."""
    deadline = time.monotonic() + timeout
    reports: dict[int, object] = {}
    last_shown = 0.0
    while True:
        for c in pushed:
            if c["number"] not in reports:
                try:
                    found = world.store.report(c["repo"], c["sha"])
                except redis.RedisError:
                    found = None
                if found is not None:
                    reports[c["number"]] = found
        if len(reports) == len(pushed) or time.monotonic() > deadline:
            break
        if time.monotonic() - last_shown > 10:
            last_shown = time.monotonic()
            say(f"waiting for quiet: {len(reports)}/{len(pushed)} reports")
        time.sleep(0.2)
    say(f"quiet: {len(reports)}/{len(pushed)} reports")
    return reports


# -- analysis --------------------------------------------------------------------------------------


@dataclass
class Execution:
    """One pytest process of one commit, as its tests logged it."""

    repo: str
    number: int
    pid: int
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)

    @property
    def first(self) -> float:
        return min(self.starts)

    @property
    def last(self) -> float:
        """The last instant it is known to have run."""
        return max(self.starts + self.ends)

    @property
    def unfinished(self) -> int:
        return len(self.starts) - len(self.ends)


def read_executions(path: Path) -> list[Execution]:
    runs: dict[tuple[str, int, int], Execution] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        repo, number, pid, begin, end = parts
        key = (repo, int(number), int(pid))
        ex = runs.setdefault(key, Execution(repo, int(number), int(pid)))
        if end == "-":
            ex.starts.append(float(begin))
        else:
            ex.ends.append(float(end))
    return sorted(runs.values(), key=lambda e: e.first)


def overlaps(executions: list[Execution], planned: dict[tuple[str, int], list[float]]
             ) -> tuple[list[dict], list[dict]]:
    """Pairs of executions of one commit overlapping in time: certain ones (from logged
    instants) and possible ones (a killed test may have run until its planned end)."""
    by_commit: dict[tuple[str, int], list[Execution]] = defaultdict(list)
    for ex in executions:
        by_commit[(ex.repo, ex.number)].append(ex)
    certain, possible = [], []
    for key, runs in by_commit.items():
        longest = max(planned.get(key, [SLEEP_RANGE[1]])) + 0.5
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:  # sorted by first start: a started first
                pair = {"repo": key[0], "number": key[1], "pids": [a.pid, b.pid],
                        "a": [a.first, a.last], "b": [b.first, b.last]}
                if b.first <= a.last:
                    certain.append(pair)
                elif a.unfinished and b.first <= a.last + longest:
                    possible.append(pair)
    return certain, possible


RESENT = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/\w+\] "
                    r"reconciler: the run of ([0-9a-f]{12}) died")


def resends(logs: Path) -> dict[str, list[float]]:
    """When a reconciler handed each commit (12-digit SHA) back to the queue, from the
    workers' logs (local time, as Celery writes it)."""
    found: dict[str, list[float]] = defaultdict(list)
    for log in logs.glob("chaos*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if m := RESENT.match(line):
                at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found[m[2]].append(at)
    return found


def recoveries(kills: list[dict], pushed: list[dict], reports: dict[int, object],
               executions: list[Execution], ended_at: float, logs: Path, backlog: Backlog
               ) -> list[dict]:
    """For each SIGKILL that interrupted a run: seconds until the commit ran again, and
    the steps on the way (re-sent by a reconciler, lease taken by the rerun)."""
    number_of = {(c["repo"], c["sha"]): c for c in pushed}
    resent = resends(logs)
    rows = []
    for k in kills:
        if k.get("signal") != "SIGKILL" or not k.get("held"):
            continue
        for h in k["held"]:
            c = number_of.get((h["repo"], h["sha"]))
            if c is None:  # an initial commit
                continue
            report = reports.get(c["number"])
            row = {"worker": k["worker"], "killed_at": k["at"], "repo_name": c["repo_name"],
                   "number": c["number"], "run_id": h["run_id"], "attempt": h["attempts"]}
            if report is not None and report.run_id == h["run_id"]:
                row["outcome"] = "not interrupted: the final report is that run's (it had finished)"
                rows.append(row)
                continue
            later = [ex.first for ex in executions if ex.repo == c["repo_name"]
                     and ex.number == c["number"] and ex.first > k["at"]]
            sent = [t for t in resent.get(h["sha"][:12], []) if t > k["at"]]
            if sent:
                row["resent_after"] = min(sent) - k["at"]
                row["queue_at_resend"] = backlog.at(min(sent))
            if report is not None and report.started_at and report.attempts > h["attempts"]:
                row["final_run_after"] = datetime.fromisoformat(
                    report.started_at).timestamp() - k["at"]  # the final run took its lease
            if later:
                row["recovery"] = min(later) - k["at"]
                row["outcome"] = "rerun"
            else:
                row["recovery"] = ended_at - k["at"]  # a lower bound: it never ran again
                row["outcome"] = "never ran again"
            rows.append(row)
    return rows


PROBLEM = re.compile(r"Traceback|WARNING|ERROR|CRITICAL|Error:|Exception")
NOISE = re.compile(r"Please specify a different user|superuser privileges|--uid option|"
                   r"Memory overcommit|CPendingDeprecationWarning")
CHAINED = ("Traceback", "During handling", "The above exception")
VARYING = [  # what differs between two instances of one problem: left out when grouping
    (re.compile(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+:?\s*"), ""),  # timestamps
    (re.compile(r"[0-9a-f]{12,}|[0-9a-f-]{36}"), "<id>"),  # shas, run and task ids
    (re.compile(r"/tmp/ciq-chaos-\w+"), "<tmp>"),
    (re.compile(r"\d+"), "N"),
]


def traceback_end(lines: list[str], i: int) -> int:
    """Index of the exception line ending the traceback at ``lines[i]`` (chained ones
    included)."""
    j = i + 1
    while j < len(lines) - 1:
        chained = not lines[j + 1] and j + 2 < len(lines) and lines[j + 2].startswith(CHAINED)
        if lines[j] and not lines[j].startswith((" ", "\t", *CHAINED)) and not chained:
            break
        j += 1
    return j


def log_problems(logs: Path) -> dict[str, dict[str, int]]:
    """Per log: each kind of warning, error or traceback (its first and last line) and
    how many times it occurred."""
    found: dict[str, dict[str, int]] = {}
    for log in sorted(logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        kinds: Counter[str] = Counter()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("Traceback"):
                j = traceback_end(lines, i)
                text, i = f"Traceback ... {lines[j]}", j + 1
            else:
                text, i = line, i + 1
                if not PROBLEM.search(line) or NOISE.search(line):
                    continue
            for pattern, replacement in VARYING:
                text = pattern.sub(replacement, text)
            kinds[text[:240]] += 1
        if kinds:
            found[log.name] = dict(kinds.most_common())
    return found


def lost_state(world: World, c: dict) -> dict:
    """What Redis knows of a commit with no report: for the diagnosis."""
    s, rid = world.store, c["repo"]
    tid = task_id(rid, c["sha"])  # in the headers of each of the commit's messages
    try:
        member = f"{repo_id(rid)}:{c['sha']}"
        queued = [m for m in s.client.lrange("ciq", 0, -1) if tid in m]
        unacked = [k for k, v in (s.client.hgetall("unacked") or {}).items() if tid in v]
        return {"commit": s.commit(rid, c["sha"]), "lease": s.lease_holder(rid, c["sha"]),
                "in_started": bool(s.client.sismember("ciq:started", member)),
                "in_unsent": s.client.zscore("ciq:unsent", member) is not None,
                "messages_in_queue": len(queued), "unacked_messages": len(unacked)}
    except redis.RedisError as exc:
        return {"error": repr(exc)}


def new_faults(log: list[dict], pushed: list[dict], reports: dict[int, object],
               executions: list[Execution]) -> tuple[list[dict], dict[str, int]]:
    """Each kill at pickup and dropped message with what became of its commit, and how
    many of each new fault were injected."""
    by_key = {(c["repo"], c["sha"]): c for c in pushed}
    rows: list[dict] = []
    counts: Counter[str] = Counter()
    for e in log:
        new = e["kind"] in ("redis-stall", "pickup-kill", "drop")
        if new and (e.get("skipped") or e.get("error")):
            counts[f"{e['kind']} {'skipped' if e.get('skipped') else 'failed'}"] += 1
            continue
        if e["kind"] == "redis-stall":
            counts["redis stall"] += 1
            continue
        fault = "kill at pickup" if e.get("fault") == "pickup" else (
            "message dropped" if e["kind"] == "drop" else None)
        if fault is None:
            continue
        counts[fault] += 1
        if e.get("state") == "off the queue, not leased":  # the window aimed at
            counts["kill at pickup, message taken, not leased"] += 1
        c = by_key[(e["repo"], e["sha"])]
        report = reports.get(c["number"])
        later = [ex.first for ex in executions if ex.repo == c["repo_name"]
                 and ex.number == c["number"] and ex.first > e["at"]]
        rows.append({"fault": fault, "at": e["at"], "worker": e.get("worker"),
                     "state": e.get("state"), "repo_name": c["repo_name"],
                     "number": c["number"], "reported": report is not None,
                     "attempts": getattr(report, "attempts", None),
                     "ran_again_after": min(later) - e["at"] if later else None})
    return rows, dict(counts)


def analyse(world: World, pushed: list[dict], reports: dict[int, object], chaos: Chaos,
            backlog: Backlog, quiet_at: float) -> dict:
    executions = read_executions(world.exec_log)
    planned = {(c["repo_name"], c["number"]): c["sleeps"] for c in pushed}
    certain, possible = overlaps(executions, planned)
    kills = [e for e in chaos.log if e["kind"] == "worker"]
    rec = recoveries(kills, pushed, reports, executions, quiet_at, world.root / "logs",
                     backlog)
    lost = [c for c in pushed if c["number"] not in reports]
    per_commit = Counter((ex.repo, ex.number) for ex in executions)
    faults, fault_counts = new_faults(chaos.log, pushed, reports, executions)
    return {
        "new_faults": faults,
        "new_fault_counts": fault_counts,
        "executions": [ex.__dict__ for ex in executions],
        "overlapping": certain,
        "possibly_overlapping": possible,
        "recoveries": rec,
        "lost": [{**c, "redis": lost_state(world, c)} for c in lost],
        "reports": {n: {"status": r.status, "attempts": r.attempts, "worker": r.worker,
                        "run_id": r.run_id, "started_at": r.started_at,
                        "finished_at": r.finished_at, "message": r.message}
                    for n, r in sorted(reports.items())},
        "attempts": dict(sorted(Counter(r.attempts for r in reports.values()).items())),
        "statuses": dict(Counter(r.status for r in reports.values())),
        "executions_per_commit": dict(sorted(Counter(
            per_commit.get((c["repo_name"], c["number"]), 0) for c in pushed).items())),
        "queue_length": backlog.samples,
        "max_recovery": max((r["recovery"] for r in rec if "recovery" in r), default=0.0),
    }


def show(result: dict, problems: dict[str, dict[str, int]]) -> None:
    """The details above the final line."""
    print(f"report statuses: {result['statuses']}; executions per commit (count: commits): "
          f"{result['executions_per_commit']}")
    if result["queue_length"]:
        print("runs waiting in the broker queue: max "
              f"{max(n for _, n in result['queue_length'])} (sampled every 0.5 s)")
    for r in result["recoveries"]:
        head = f"  SIGKILL {r['worker']} during {r['repo_name']} #{r['number']} " \
               f"(attempt {r['attempt']}): "
        if "recovery" in r:
            flag = "" if r["recovery"] < RECOVERY_TARGET else "  <-- over target"
            steps = [f"{label} +{r[key]:.1f}s" for key, label in (
                ("resent_after", "re-sent by a reconciler"),
                ("final_run_after", "final run's lease")) if key in r]
            if r.get("queue_at_resend") is not None:
                steps.insert(1, f"queue {r['queue_at_resend']} long then")
            print(f"{head}{r['outcome']} {r['recovery']:.1f}s after the kill{flag}"
                  + (f" ({', '.join(steps)})" if steps else ""))
        else:
            print(f"{head}{r['outcome']}")
    if not any("recovery" in r for r in result["recoveries"]):
        print("no worker SIGKILL interrupted a run (max recovery 0.0 means: none measured)")
    for f in result["new_faults"]:
        what = f"SIGKILL {f['worker']} at the pickup of" if f["fault"] == "kill at pickup" \
            else "dropped the queued message of"
        where = f" ({f['state']})" if f["state"] else ""
        again = ("never ran again" if f["ran_again_after"] is None
                 else f"ran again {f['ran_again_after']:.1f}s later")
        print(f"  {what} {f['repo_name']} #{f['number']}{where}: {again}, "
              + (f"reported (attempts {f['attempts']})" if f["reported"] else "NO report"))
    for c in result["lost"]:
        print(f"  LOST {c['repo_name']} #{c['number']} {c['sha'][:12]}: {c['redis']}")
    for p in result["overlapping"]:
        print(f"  OVERLAP {p['repo']} #{p['number']} pids {p['pids']}: "
              f"{p['a'][0] - T0:.2f}-{p['a'][1] - T0:.2f}s and "
              f"{p['b'][0] - T0:.2f}-{p['b'][1] - T0:.2f}s")
    for p in result["possibly_overlapping"]:
        print(f"  possible overlap (a killed test's end is unknown) {p['repo']} #{p['number']} "
              f"pids {p['pids']}: {p['a'][0] - T0:.2f}-{p['a'][1] - T0:.2f}s(+?) and "
              f"{p['b'][0] - T0:.2f}s-")
    for name, kinds in problems.items():
        print(f"--- {name}: warnings and errors (count, message with numbers as N)")
        for text, count in kinds.items():
            print(f"  {count:4d}  {text}")


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    global T0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, help="seed of the random generator (default: random)")
    parser.add_argument("--commits", type=int, help="commits to push (default 60; 16 quick)")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="seconds over which they are pushed (default 60; 20 quick)")
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument("--timeout", type=float, default=QUIET_TIMEOUT, metavar="S",
                        help=f"seconds to wait for quiet after the pushes ({QUIET_TIMEOUT:g})")
    args = parser.parse_args()
    commits = args.commits or (16 if args.quick else 60)
    duration = args.duration or (20.0 if args.quick else 60.0)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install -y redis-server)")
        return 2
    rng = random.Random(seed)
    events = schedule(rng, duration)
    kinds = Counter(e.kind if e.kind != "worker" else f"worker {e.how}" for e in events)
    print(f"ciq chaos bench: seed {seed}, {commits} commits over {duration:g}s, events "
          f"{dict(kinds)}" + (" (quick)" if args.quick else ""), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` runs
    world = World()
    chaos = Chaos(world, events)
    backlog = Backlog(world.store)
    results: dict = {"seed": seed, "commits": commits, "duration": duration,
                     "quick": args.quick, "events_planned": [e.__dict__ for e in events]}
    leaks: dict[int, str] = {}
    try:
        start(world, random.Random(seed + 1))
        T0 = time.time()
        results["t0"] = T0
        chaos.start()
        backlog.start()
        pushed = push_all(world, commits, duration, random.Random(seed + 2))
        chaos.join()  # the schedule ends within the push window (plus a restart or two)
        reports = wait_for_quiet(world, pushed, args.timeout)
        quiet_at = time.time()
        for t in chaos.restarters:
            t.join(70)
        backlog.stop.set()
        result = analyse(world, pushed, reports, chaos, backlog, quiet_at)
        problems = log_problems(world.root / "logs")
        results.update(pushed=pushed, events=chaos.log, log_problems=problems, **result)
    except BaseException:
        for log in sorted((world.root / "logs").glob("*.log")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(
                errors="replace").splitlines()[-10:]), file=sys.stderr)
        raise
    finally:
        chaos.stop.set()
        backlog.stop.set()
        leaks = world.close()
        results["leaked_processes"] = [f"{pid} {cmd}" for pid, cmd in leaks.items()]
        for pid, cmd in leaks.items():
            print(f"warning: process left running, killed: {pid} {cmd}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "chaos.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    show(result, problems)
    lost, dups, worst = len(result["lost"]), len(result["overlapping"]), result["max_recovery"]
    print(f"raw data in {RESULTS / 'chaos.json'}, logs in {RESULTS / 'chaos-logs'}; seed {seed}")
    print(f"chaos: pushed {commits}, reports {len(reports)}, lost {lost}, overlapping "
          f"duplicates {dups}, max recovery {worst:.1f}s, attempts {result['attempts']}, "
          f"new faults {result['new_fault_counts']}")
    return 0 if lost == 0 and dups == 0 and worst < RECOVERY_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
