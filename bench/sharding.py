"""Benchmark of sharding: one commit's suite split into chunks run by every free worker
process, against the same suite in one piece and against pytest-xdist on this machine.

Run ``.venv/bin/python bench/sharding.py [--quick] [--repeat N]`` (``--quick``: one
measured repetition, a smoke test, about 6 minutes; default N = 3, medians reported, about
10 minutes: the sleeping alone is 34 s per unsharded run). ``--keep-logs DIR``
copies the worker logs there before the temporary directory goes. Needs ``redis-server``
and the package index (the suites' environment gets pytest-xdist from it, not from this
virtualenv). Everything is private to the run: a
redis-server on a free port of 127.0.0.1, ``celery -A ciq worker`` subprocesses
configured only through ``CIQ_*`` variables, git repositories in a temporary directory;
every process started here is stopped by pid in a ``finally`` block. Raw numbers go to
``bench/results/sharding.json``. Another load on the machine makes figures noisy: the
load average before each configuration is printed and saved.

Suites (two git repositories made here, a plain ``tests/`` folder whose
``tests/requirements.txt`` asks for pytest and pytest-xdist, so that ciq builds one cached
environment with both, from the package index, at the first warm-up):

* **sleep**: 40 tests in 8 files, 12 sleeping 2.0 s, 8 sleeping 1.0 s, 20 sleeping 0.1 s
  (34 s in all), dealt to the files in a fixed shuffled order. Sleeping tests measure the
  scheduling, not the CPU.
* **cpu**: 20 tests in 4 files, each a pure-Python loop calibrated at start so that one
  takes about 0.8 s here (16 s in all).

Configurations, each with a fresh worker node started for it and stopped after it:
``unsharded`` (``--concurrency=1``, CIQ_SHARD=never), ``sharded-2`` (``--concurrency=2``,
CIQ_SHARD=always), ``sharded-4`` (``--concurrency=4``, CIQ_SHARD=always; on the cpu
suite for information only, with 2 cores). All of them share one CIQ_DATA_DIR and one
CIQ_ENV_DIR, so the mirror and the cached environment are warm after the first warm-up:
what is measured is a host that has seen the repository before. A node counts only once
Redis hash ``ciq:workers`` shows it with its processes (the planner sizes the chunks by
that count), and its entry is deleted when it stops (otherwise it would count for
another 15 s).

Each measurement: a new commit (``bench_round.txt``), t0, ``Sender.submit`` (the Python
API: no CLI start-up), poll Redis every 10 ms until the report is stored, t1; wall is
t1 - t0. A report that did not pass is a failure of the benchmark. One warm-up commit per
configuration and suite comes first, not measured: it records the durations the planner
uses (every report does) and warms the new node's pool processes. Baselines, measured
afterwards in a clean worktree of the last commit (a new one each time), with the
interpreter of the cached environment the runs used (``CIQ_ENV_DIR/<the report's
environment.key>/bin/python``, not this benchmark's own virtualenv, which holds far
more): ``python -m pytest tests -q -p no:cacheprovider`` and the same with ``-n 2`` and
``-n 4`` (pytest-xdist). After them, the overhead per phase of each configuration
(medians): pickup (submitted to the lease taken), checkout, setup, collect, plan (the
rest of the planning run), test (the test phase: one pytest, or the chunks from plan to
merge) and report (made to seen stored), and wall and test phase against pytest alone in
that environment and pytest-xdist on as many processes. Each figure is the median of N
runs, except four that inform rather than decide a target, run N // 3 times (at least
once) to keep to 10 minutes: the sleep suite unsharded and bare (34 s of sleep, the same
every time), the cpu suite sharded-4 and ``pytest -n 4``. Per run the JSON keeps the
report's chunks (tests, seconds of their test phase, the planner's estimate of them)
and, from the worker log, when each pool process ran which piece: the share of processes
x wall they sat idle.

Before the cpu suite, two copies of the loop run at once in two processes: how much more
work that gets done than by one copy alone is the ceiling of any 2-process speed-up on
this machine (the 2 vCPUs of a VM need not give 2x), printed next to the cpu verdict. The
"tests s" column is the sum of the test durations of the report: on the cpu suite, how
much slower each test ran with its neighbours busy.

Targets (the issue): sleep suite, sharded-4 wall <= 1.25 x (sum of the test durations of
the unsharded report / 4) + one checkout, where "one checkout" is the median planning
run's checkout + setup + collect in sharded-4 (the figure without it is printed too);
sharded-2 against the same figure with / 2; cpu suite, unsharded / sharded-2 >= 1.8.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import (
    commit,
    free_port,
    git,
    kill_leftovers,
    save_results,
    show_worker_logs,
    start_redis,
    stop_process,
)
from harness import wait_for as shared_wait_for

from ciq.dispatch import Sender
from ciq.gitrepo import normalise_repo
from ciq.report import Report
from ciq.settings import Settings
from ciq.sharding.plan import estimates
from ciq.store import Store
from ciq.store.keys import WORKERS
from ciq.store.shards import Shards

#: Seconds one measured commit may take before the benchmark gives up on it.
REPORT_TIMEOUT = 300.0
#: Seconds between two looks for the report.
POLL = 0.01
#: The sleep suite: (seconds, how many).
SLEEPS = ((2.0, 12), (1.0, 8), (0.1, 20))
SLEEP_FILES = 8
#: The cpu suite: tests, files, seconds each test aims at.
CPU_TESTS, CPU_FILES, CPU_SECONDS = 20, 4, 0.8
#: Issue targets.
SLACK = 1.25
CPU_SPEEDUP = 1.8
#: Configurations: name, worker processes, CIQ_SHARD.
CONFIGS = (("unsharded", 1, "never"), ("sharded-2", 2, "always"), ("sharded-4", 4, "always"))
XDIST = (2, 4)
#: Figures that inform rather than decide a target, measured N // 3 times (at least once)
#: to keep the default run near 10 minutes: the sleep suite in one piece (34 s of sleeps,
#: as long every time; its test durations give the targets' sum all the same) and the
#: cpu suite on 4 processes of 2 cores.
FEW = {"sleep": {"unsharded", "bare"}, "cpu": {"sharded-4", "xdist-4"}}

#: What the suites' environment holds besides pytest: pytest-xdist, so that the baselines
#: run in the very environment ciq built for the runs (ciq's runs load it too).
SUITE_REQUIREMENTS = {"tests/requirements.txt": "pytest\npytest-xdist\n"}
#: The phases of a run, as the overhead lines show them.
PHASES = ("pickup", "checkout", "setup", "collect", "plan", "test", "report")

BURN = """\
def burn(n):
    x = 0
    for i in range(n):
        x = (x * 1103515245 + i) % 2147483648
    return x
"""

def wait_for(predicate, timeout: float, what: str, interval: float = POLL):
    return shared_wait_for(predicate, timeout, what, interval)


def med(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# -- the suites ----------------------------------------------------------------------------

def sleep_suite() -> dict[str, str]:
    durations = [s for s, n in SLEEPS for _ in range(n)]
    random.Random(20240611).shuffle(durations)
    per_file = len(durations) // SLEEP_FILES
    files = {}
    for f in range(SLEEP_FILES):
        body = "import time\n\n"
        for i in range(f * per_file, (f + 1) * per_file):
            ms = round(durations[i] * 1000)
            body += f"\ndef test_t{i:02d}_{ms}ms():\n    time.sleep({durations[i]!r})\n\n"
        files[f"tests/test_sleep_{f}.py"] = body
    return {**files, **SUITE_REQUIREMENTS}


def calibrate(target: float) -> dict[str, Any]:
    """Iterations of :data:`BURN` that take ``target`` seconds in this interpreter (the
    runs' environments use the same one), from the median of a few timings: the speed of
    a VM's CPU wanders by a third from one second to the next, and the fastest timing
    made the tests a quarter longer than aimed at."""
    space: dict[str, Any] = {}
    exec(BURN, space)
    burn, probe = space["burn"], 100_000
    while True:  # a probe long enough to time (>= 0.25 s)
        t0 = time.perf_counter()
        burn(probe)
        if time.perf_counter() - t0 >= 0.25:
            break
        probe *= 2
    timings = []
    for _ in range(5):
        t0 = time.perf_counter()
        burn(probe)
        timings.append(time.perf_counter() - t0)
    typical = statistics.median(timings)
    iterations = int(probe * target / typical)
    t0 = time.perf_counter()
    burn(iterations)
    return {"iterations": iterations, "target_s": target, "check_s": time.perf_counter() - t0,
            "probe_iterations": probe, "probe_s": [round(t, 3) for t in timings],
            "load": [round(x, 2) for x in os.getloadavg()]}


def _timed_burn(n: int) -> float:
    space: dict[str, Any] = {}
    exec(BURN, space)
    t0 = time.perf_counter()
    space["burn"](n)
    return time.perf_counter() - t0


def parallel_capacity(iterations: int, rounds: int = 5) -> dict[str, Any]:
    """How much more CPU-bound work two processes at once get done here than one: the
    ceiling of any 2-process speed-up of the cpu suite (2 vCPUs of a VM need not be 2x)."""
    rows = []
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for _ in range(rounds):
            one = _timed_burn(iterations)
            t0 = time.perf_counter()
            pool.map(_timed_burn, [iterations, iterations], chunksize=1)
            two = time.perf_counter() - t0
            rows.append({"one_s": round(one, 3), "two_at_once_s": round(two, 3),
                         "throughput": round(2 * one / two, 3)})
    return {"rounds": rows, "throughput": statistics.median(r["throughput"] for r in rows),
            "load": [round(x, 2) for x in os.getloadavg()]}


def cpu_suite(iterations: int) -> dict[str, str]:
    per_file = CPU_TESTS // CPU_FILES
    files = {}
    for f in range(CPU_FILES):
        body = f"{BURN}\n"
        for i in range(f * per_file, (f + 1) * per_file):
            body += f"\ndef test_c{i:02d}():\n    burn({iterations})\n\n"
        files[f"tests/test_cpu_{f}.py"] = body
    return {**files, **SUITE_REQUIREMENTS}


# -- worker logs ---------------------------------------------------------------------------

LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): \w+/([\w-]+)\] (.*)$")
CHUNK_DONE = re.compile(r"run \w+: chunk (\d+) of (\w{12}) (\w+) \((\d+) tests, ([\d.]+)s\)")
WHOLE_DONE = re.compile(r"run \w+: (\w{12}) (\w+) \((\d+) tests, ([\d.]+)s\)")
SHARDED = re.compile(r"run \w+: (\w{12}) sharded into (\d+) chunks for (\d+) processes")


def parse_log(log: Path) -> dict[str, dict[str, Any]]:
    """Per short SHA: the pieces run (chunk number, pool process, start and end as epoch
    seconds: the end is the log line, the start is the end less the piece's duration,
    which covers its checkout, environment and tests) and what the planner said."""
    found: dict[str, dict[str, Any]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        stamp, ms, proc, text = m.groups()
        at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
        if c := CHUNK_DONE.search(text):
            number, sha, status, tests, secs = c.groups()
            piece = {"chunk": int(number), "process": proc, "status": status,
                     "tests": int(tests), "seconds": float(secs),
                     "start": at - float(secs), "end": at}
            found.setdefault(sha, {"pieces": []})["pieces"].append(piece)
        elif c := SHARDED.search(text):
            sha, chunks, procs = c.groups()
            found.setdefault(sha, {"pieces": []})["planned"] = {
                "chunks": int(chunks), "processes": int(procs), "at": at}
        elif c := WHOLE_DONE.search(text):
            sha, status, tests, secs = c.groups()
            found.setdefault(sha, {"pieces": []})["pieces"].append(
                {"chunk": None, "process": proc, "status": status, "tests": int(tests),
                 "seconds": float(secs), "start": at - float(secs), "end": at})
    return found


def timeline(run: dict[str, Any], parsed: dict[str, Any], processes: int) -> dict[str, Any]:
    """Where the wall time of one run went, from its worker log: per pool process the
    seconds busy with a piece of it, and the share of processes x wall left idle."""
    pieces = parsed.get("pieces", [])
    if not pieces:
        return {}
    t0, t1 = run["t0_epoch"], run["t0_epoch"] + run["wall"]
    busy: dict[str, float] = {}
    for p in pieces:
        busy[p["process"]] = busy.get(p["process"], 0.0) + max(
            0.0, min(p["end"], t1) - max(p["start"], t0))
    first = min(p["start"] for p in pieces)
    last = max(p["end"] for p in pieces)
    out: dict[str, Any] = {
        "pieces": [{**p, "start": round(p["start"] - t0, 3), "end": round(p["end"] - t0, 3)}
                   for p in sorted(pieces, key=lambda p: p["start"])],
        "busy_per_process": {k: round(v, 3) for k, v in sorted(busy.items())},
        "processes_used": len(busy),
        "idle_share": round(1 - sum(busy.values()) / (processes * run["wall"]), 3),
        "to_first_start": round(first - t0, 3),  # log stamps have ms resolution
        "after_last_end": round(t1 - last, 3),
    }
    if "planned" in parsed:
        out["planned_at"] = round(parsed["planned"]["at"] - t0, 3)
        out["planner_processes"] = parsed["planned"]["processes"]
    return out


# -- the bench -----------------------------------------------------------------------------

class Bench:
    """The private world of one run: temp dir, redis-server, workers, repositories."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ciq-bench-sharding-")).resolve()
        self.procs: list[subprocess.Popen] = []
        self.rounds = 0
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.store = Store.from_url(self.url)  # connects on first use
        # One data folder and one environment cache for the whole benchmark: warm after
        # the first run of each repository, as on a worker host that saw it before.
        self.data_dir = self.root / "data"
        self.env_dir = self.root / "envs"
        self.settings = Settings(broker_url=self.url, result_backend=self.url,
                                 data_dir=self.data_dir, env_dir=self.env_dir)
        self.sender = Sender.for_store(self.settings, self.store)
        self.shards = Shards(self.store, self.settings.lease_ttl, self.settings.time_limit,
                             self.settings.output_limit)

    def start_redis(self) -> None:
        self.procs.append(start_redis(self.root / "redis", self.port, self.store.client))

    def env(self, shard: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CIQ_", "CELERY_"))}
        env.update(CIQ_BROKER_URL=self.url, CIQ_RESULT_BACKEND=self.url,
                   CIQ_DATA_DIR=str(self.data_dir), CIQ_ENV_DIR=str(self.env_dir),
                   CIQ_SHARD=shard)
        return env

    def start_worker(self, name: str, concurrency: int, shard: str
                     ) -> tuple[subprocess.Popen, Path, str]:
        log = self.root / f"worker-{name}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "ciq", "worker", "--loglevel=INFO",
               f"--concurrency={concurrency}", "--without-mingle", "--without-gossip",
               f"--hostname={name}@%h"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=self.env(shard), cwd=self.root, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        wait_for(lambda: " ready." in log.read_text(errors="replace") or proc.poll() is not None,
                 60, f"worker {name} to start", 0.02)
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} died:\n{log.read_text()[-3000:]}")
        # The planner counts processes from ciq:workers: measure only once it is there.
        node = wait_for(lambda: next((k for k in self.store.client.hkeys(WORKERS)
                                      if k.startswith(f"{name}@")), None),
                        30, f"worker {name} in {WORKERS}", 0.02)
        seen = self.shards.processes(self.settings.queue)
        if seen != concurrency:
            raise RuntimeError(f"{WORKERS} counts {seen} processes, expected {concurrency}: "
                               f"{self.store.client.hgetall(WORKERS)}")
        return proc, log, node

    def stop_worker(self, proc: subprocess.Popen, node: str) -> None:
        stop_process(proc, 30)
        # A stopped node stays counted by the planner for WORKER_SEEN_WITHIN seconds:
        # the next configuration must not plan for it.
        self.store.client.hdel(WORKERS, node)

    def new_repo(self, name: str, files: dict[str, str]) -> tuple[Path, str]:
        path = self.root / name
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        commit(path, {**files, "bench_round.txt": "0\n"}, "initial")
        return path, normalise_repo(str(path))

    def one_run(self, path: Path, repo: str, tests: int) -> dict[str, Any]:
        """A new commit, submitted, until its report is stored."""
        self.rounds += 1
        sha = commit(path, {"bench_round.txt": f"{self.rounds}\n"}, f"round {self.rounds}")
        known = self.shards.durations(repo)  # what the planner will go by
        t0, t0_epoch = time.perf_counter(), time.time()
        if not self.sender.submit(repo, sha, "main"):
            raise RuntimeError(f"{sha[:12]} was already claimed")
        report: Report = wait_for(lambda: self.store.report(repo, sha), REPORT_TIMEOUT,
                                  f"the report of {sha[:12]}")
        wall = time.perf_counter() - t0
        if report.status != "passed" or report.summary.passed != tests:
            raise RuntimeError(f"report of {sha[:12]} is {report.status} "
                               f"({report.summary.passed} of {tests} passed): "
                               f"{report.message}\n{report.output[-2000:]}")
        meta = self.store.commit(repo, sha)
        started = meta.get("started_at")
        shards = report.shards or {}
        t = report.timings
        chunks = [{k: c.get(k) for k in ("index", "tests", "status", "worker", "seconds",
                                         "attempts")} for c in shards.get("chunks", [])]
        # The merged report lists the tests chunk after chunk: the planner's estimate of
        # each chunk, from the durations it knew (a test it did not know: their median).
        est = estimates([x.id for x in report.tests], known)
        at = 0
        for c in chunks:
            ids = [x.id for x in report.tests[at:at + c["tests"]]]
            c["estimate"] = round(sum(est[i] for i in ids), 3)
            at += c["tests"]
        return {
            "sha": sha, "wall": wall, "t0_epoch": t0_epoch, "status": report.status,
            "run_duration": report.duration,
            "pickup": (datetime.fromisoformat(started).timestamp() - t0_epoch
                       if started else None),
            "timings": dict(t),
            "planning": sum(t.get(k, 0.0) for k in ("checkout", "setup", "collect")),
            "test_sum": sum(x.duration for x in report.tests),
            "environment_hit": report.environment.get("cache_hit"),
            "environment_key": report.environment.get("key"),
            "phases": phases(report, wall, started, t0_epoch),
            "shards": shards.get("count", 0), "imbalance": shards.get("imbalance"),
            "chunks": chunks, "known_durations": len(known),
            "estimate_sum": round(sum(est.values()), 3),
        }

    def environment_python(self, key: str | None) -> Path:
        """The interpreter of the cached environment a run used (``environment.key`` of
        its report): where the baselines run, so that they measure pytest in the same
        environment as ciq's runs, not in this benchmark's own virtualenv."""
        python = self.env_dir / (key or "?") / "bin" / "python"
        if not key or not python.exists():
            raise RuntimeError(f"no cached environment {key!r} under {self.env_dir}")
        return python

    def bare(self, path: Path, sha: str, extra: list[str], python: Path) -> tuple[float, str]:
        """Wall time of pytest alone, run by ``python`` in a clean worktree of ``sha``, and
        its last line ("40 passed in 19.05s": pytest's own time, without its start-up)."""
        dest = self.root / "bare" / f"{sha[:12]}-{time.monotonic_ns()}"
        git(path, "worktree", "add", "--quiet", "--detach", str(dest), sha)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CIQ_", "CELERY_")) and k not in ("PYTHONPATH", "PYTHONHOME")}
        venv = python.parent.parent
        env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
        try:
            t0 = time.perf_counter()
            done = subprocess.run([str(python), "-m", "pytest", "tests", "-q", "-p",
                                   "no:cacheprovider", *extra], cwd=dest, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            took = time.perf_counter() - t0
        finally:
            git(path, "worktree", "remove", "--force", str(dest))
        if done.returncode != 0:
            raise RuntimeError(f"bare pytest {' '.join(extra)} failed on {sha[:12]} (exit "
                               f"{done.returncode}):\n{done.stdout[-2000:]}")
        return took, (done.stdout.strip().splitlines() or [""])[-1]

    def close(self, keep_logs: Path | None) -> dict[int, str]:
        """Stop every process started here (workers first), report and kill leftovers."""
        for proc in reversed(self.procs):
            stop_process(proc, 30)
        self.store.client.close()
        leaks = kill_leftovers(self.root, grace=3)
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in self.root.glob("worker-*.log"):
                shutil.copy(log, keep_logs / log.name)
        shutil.rmtree(self.root, ignore_errors=True)
        return leaks


# -- measuring -----------------------------------------------------------------------------

def phases(report: Report, wall: float, started: str | None, t0_epoch: float
           ) -> dict[str, float | None]:
    """Where one run's wall time went. ``pickup``: submitted to the lease taken (the
    queue and a worker's pick-up); ``checkout``, ``setup``, ``collect``: the report's
    timings (collect when sharded); ``plan``: the rest of the planning run until the plan
    is stored (sharded) or the report made (JUnit XML and such, whole runs); ``test``: the
    test phase (one pytest; or, sharded, the chunks, plan stored to merged, their own
    checkouts included); ``report``: the report made to the benchmark seeing it stored."""
    t = report.timings
    pickup = datetime.fromisoformat(started).timestamp() - t0_epoch if started else None
    head = sum(t.get(k, 0.0) for k in ("checkout", "setup", "collect"))
    test = t.get("test", 0.0)
    return {"pickup": pickup, "checkout": t.get("checkout"), "setup": t.get("setup"),
            "collect": t.get("collect"), "plan": max(report.duration - test - head, 0.0),
            "test": test,
            "report": wall - report.duration - (pickup or 0.0)}


def overheads(suite: dict[str, Any]) -> dict[str, Any]:
    """Per configuration, the median of each phase and the test phase against pytest
    alone in the same environment (bare, and pytest-xdist on as many processes)."""
    base = suite["baselines"]
    out: dict[str, Any] = {}
    for name, cfg in suite["configs"].items():
        m = {k: med(r["phases"].get(k) for r in cfg["runs"]) for k in PHASES}
        m["wall"] = cfg["median"]["wall"]
        k = cfg["processes"]
        m["bare"] = base["bare"]["median"]
        m["xdist"] = base.get(f"xdist-{k}", {}).get("median")
        m["test_over_bare"] = (m["test"] or 0.0) - m["bare"]
        m["wall_over_bare"] = m["wall"] - m["bare"]
        if m["xdist"] is not None:
            m["test_over_xdist"] = (m["test"] or 0.0) - m["xdist"]
            m["wall_over_xdist"] = m["wall"] - m["xdist"]
        out[name] = m
    return out


def overhead_lines(suite: dict[str, Any]) -> list[str]:
    lines = ["    overhead per phase (medians, s): "
             + " | ".join(PHASES) + " | wall vs pytest in the same environment"]
    for name, m in suite["overheads"].items():
        cells = " | ".join("-" if m[k] is None else f"{m[k]:.2f}" for k in PHASES)
        vs = (f"wall {m['wall']:.2f} vs bare {m['bare']:.2f} ({m['wall_over_bare']:+.2f}); "
              f"test {m['test']:.2f} ({m['test_over_bare']:+.2f} vs bare")
        if m.get("xdist") is not None:
            vs += f", {m['test_over_xdist']:+.2f} vs xdist-{name.rsplit('-', 1)[-1]}"
        lines.append(f"    {name:<10} {cells} | {vs})")
    return lines


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall", "planning", "test_sum", "pickup", "run_duration", "imbalance", "shards")
    out: dict[str, Any] = {k: med(r[k] for r in runs) for k in keys}
    out["wall_min"] = min(r["wall"] for r in runs)
    out["wall_max"] = max(r["wall"] for r in runs)
    for k in ("checkout", "setup", "collect", "test"):
        out[k] = med(r["timings"].get(k) for r in runs)
    idle = [r["timeline"].get("idle_share") for r in runs if r.get("timeline")]
    out["idle_share"] = med(idle)
    return out


def measure_config(b: Bench, suite: str, path: Path, repo: str, tests: int, name: str,
                   processes: int, shard: str, n: int) -> dict[str, Any]:
    load = os.getloadavg()
    node_name = f"{suite}-{name}"
    proc, log, node = b.start_worker(node_name, processes, shard)
    try:
        warm = b.one_run(path, repo, tests)
        runs = [b.one_run(path, repo, tests) for _ in range(n)]
    finally:
        b.stop_worker(proc, node)
    parsed = parse_log(log)
    for r in [warm, *runs]:
        r["timeline"] = timeline(r, parsed.get(r["sha"][:12], {}), processes)
    for r in runs:
        if shard == "always" and not r["shards"]:
            raise RuntimeError(f"{suite} {name}: {r['sha'][:12]} was not sharded")
        chunks = " ".join(f"{c['seconds']:.1f}({c['estimate']:.1f})"
                          for c in r["chunks"]) or "-"
        tl = r["timeline"]
        print(f"    {name:<10} {r['wall']:6.2f} s  planning {r['planning']:.2f} s "
              f"(checkout {r['timings'].get('checkout', 0):.2f}, setup "
              f"{r['timings'].get('setup', 0):.2f}, collect "
              f"{r['timings'].get('collect', 0):.2f})  idle "
              f"{100 * tl.get('idle_share', 0):.0f}%  chunks {r['shards']}, seconds (estimate): "
              f"{chunks}",
              flush=True)
    return {"processes": processes, "shard": shard, "node": node,
            "load_before": [round(x, 2) for x in load], "warmup": warm, "runs": runs,
            "median": summarise(runs)}


def measure_suite(b: Bench, suite: str, files: dict[str, str], tests: int, n: int,
                  configs: tuple[tuple[str, int, str], ...],
                  capacity_probe: int | None = None) -> dict[str, Any]:
    def times(name: str) -> int:
        return max(1, n // 3) if name in FEW[suite] else n

    path, repo = b.new_repo(suite, files)
    print(f"{suite} suite ({tests} tests): {', '.join(c[0] for c in configs)}, then "
          f"bare pytest and pytest -n {'/'.join(map(str, XDIST))}", flush=True)
    out: dict[str, Any] = {"tests": tests, "repo": repo, "configs": {}}
    if capacity_probe:
        out["parallel_capacity"] = cap = parallel_capacity(capacity_probe)
        print(f"    two CPU-bound processes at once do x{cap['throughput']:.2f} the work of "
              f"one (rounds: {', '.join(str(r['throughput']) for r in cap['rounds'])})",
              flush=True)
    for name, processes, shard in configs:
        out["configs"][name] = measure_config(b, suite, path, repo, tests, name, processes,
                                              shard, times(name))
    sha = git(path, "rev-parse", "HEAD")
    last = list(out["configs"].values())[-1]["runs"][-1]
    python = b.environment_python(last["environment_key"])
    versions = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, platform; print(platform."
         "python_version(), m.version('pytest'), m.version('pytest-xdist'))"],
        capture_output=True, text=True, check=True).stdout.split()
    base: dict[str, Any] = {"load_before": [round(x, 2) for x in os.getloadavg()],
                            "python": str(python), "versions": dict(zip(
                                ("python", "pytest", "pytest-xdist"), versions, strict=True))}
    print(f"    baselines in the runs' cached environment ({python}: " + ", ".join(
        f"{k} {v}" for k, v in base["versions"].items()) + ")", flush=True)
    for label, extra in (("bare", []), *((f"xdist-{k}", ["-n", str(k)]) for k in XDIST)):
        done = [b.bare(path, sha, extra, python) for _ in range(times(label))]
        walls = [w for w, _ in done]
        base[label] = {"runs": walls, "median": statistics.median(walls),
                       "last_lines": [line for _, line in done]}
        print(f"    {label:<10} {statistics.median(walls):6.2f} s  "
              f"({', '.join(f'{w:.2f}' for w in walls)})", flush=True)
    out["baselines"] = base
    out["overheads"] = overheads(out)
    for line in overhead_lines(out):
        print(line, flush=True)
    return out


def verdicts(res: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets from the measured medians."""
    figures: dict[str, Any] = {}
    s = res["sleep"]["configs"]
    total = s["unsharded"]["median"]["test_sum"]
    for name, k in (("sharded-4", 4), ("sharded-2", 2)):
        checkout = s[name]["median"]["planning"]
        strict = SLACK * total / k
        wall = s[name]["median"]["wall"]
        figures[f"sleep_{name}"] = {
            "wall": wall, "test_sum": total, "one_checkout": checkout,
            "target": strict + checkout, "target_without_checkout": strict,
            "ideal": total / k, "ratio_to_ideal": wall / (total / k),
            "pass": wall <= strict + checkout, "pass_without_checkout": wall <= strict}
    c = res["cpu"]["configs"]
    cb = res["cpu"]["baselines"]
    speedup = c["unsharded"]["median"]["wall"] / c["sharded-2"]["median"]["wall"]
    figures["cpu_speedup_2"] = {
        "unsharded": c["unsharded"]["median"]["wall"], "sharded": c["sharded-2"]["median"]["wall"],
        "speedup": speedup, "target": CPU_SPEEDUP, "pass": speedup >= CPU_SPEEDUP,
        "xdist_speedup": cb["bare"]["median"] / cb["xdist-2"]["median"],
        "machine_throughput_2": res["cpu"].get("parallel_capacity", {}).get("throughput")}
    if "sharded-4" in c:
        figures["cpu_speedup_4_info"] = {
            "speedup": c["unsharded"]["median"]["wall"] / c["sharded-4"]["median"]["wall"],
            "xdist_speedup": cb["bare"]["median"] / cb["xdist-4"]["median"]}
    return figures


def table(res: dict[str, Any], figures: dict[str, Any]) -> str:
    lines = []
    for suite in ("sleep", "cpu"):
        r = res[suite]
        total = r["configs"]["unsharded"]["median"]["test_sum"]
        lines.append(f"\n{suite} suite: {r['tests']} tests, sum of test durations "
                     f"{total:.2f} s (unsharded report); medians of n runs")
        lines.append(f"  {'configuration':<16}{'procs':>5}{'n':>3}{'wall s':>9}{'min-max':>14}"
                     f"{'x ideal':>9}{'tests s':>9}{'chunks':>8}{'imbal.':>8}{'idle':>6}"
                     f"{'plan c+s+c s':>14}{'pickup s':>10}{'load':>6}")
        for name, cfg in r["configs"].items():
            m, k = cfg["median"], cfg["processes"]
            lines.append(
                f"  {name:<16}{k:>5}{len(cfg['runs']):>3}{m['wall']:>9.2f}"
                f"{m['wall_min']:>7.2f}-{m['wall_max']:<6.2f}"
                f"{m['wall'] / (total / k):>9.2f}{m['test_sum']:>9.2f}{int(m['shards']):>8}"
                f"{(m['imbalance'] or 0):>8.2f}{100 * (m['idle_share'] or 0):>5.0f}%"
                f"{m['planning']:>14.2f}{(m['pickup'] or 0):>10.3f}{cfg['load_before'][0]:>6.2f}")
        for label, k in (("bare", 1), *((f"xdist-{k}", k) for k in XDIST)):
            b = r["baselines"][label]
            shown = "pytest" if label == "bare" else f"pytest -n {k}"
            lines.append(f"  {shown:<16}{k:>5}{len(b['runs']):>3}{b['median']:>9.2f}"
                         f"{min(b['runs']):>7.2f}-{max(b['runs']):<6.2f}"
                         f"{b['median'] / (total / k):>9.2f}")
        lines += [line[2:] for line in overhead_lines(r)]
    lines.append("\ntargets")
    for name in ("sharded-4", "sharded-2"):
        f = figures[f"sleep_{name}"]
        k = 4 if name == "sharded-4" else 2
        lines.append(
            f"  sleep {name}: {f['wall']:.2f} s vs {SLACK} x {f['test_sum']:.2f}/{k} + "
            f"{f['one_checkout']:.2f} = {f['target']:.2f} s: "
            f"{'PASS' if f['pass'] else 'FAIL'} (without the checkout: "
            f"{f['target_without_checkout']:.2f} s: "
            f"{'PASS' if f['pass_without_checkout'] else 'FAIL'}; ideal {f['ideal']:.2f} s, "
            f"x{f['ratio_to_ideal']:.2f})")
    f = figures["cpu_speedup_2"]
    lines.append(f"  cpu speed-up at 2: {f['unsharded']:.2f} / {f['sharded']:.2f} = "
                 f"{f['speedup']:.2f} vs {CPU_SPEEDUP}: {'PASS' if f['pass'] else 'FAIL'} "
                 f"(pytest / pytest -n 2: {f['xdist_speedup']:.2f}; two processes at once "
                 f"do x{f['machine_throughput_2'] or 0:.2f} the work of one here)")
    if "cpu_speedup_4_info" in figures:
        f = figures["cpu_speedup_4_info"]
        lines.append(f"  cpu speed-up at 4 (information, 2 cores): {f['speedup']:.2f} "
                     f"(pytest / pytest -n 4: {f['xdist_speedup']:.2f})")
    return "\n".join(lines)


def code_fingerprint() -> dict[str, str]:
    """The ciq code measured: the commit, and a hash of the package's files as they are
    (the working tree may differ from the commit). Workers import it when they start, so
    a change during the run means configurations measured different code."""
    top = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted((top / "ciq").rglob("*.py")):
        digest.update(str(path.relative_to(top)).encode() + b"\0" + path.read_bytes())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=top, capture_output=True,
                          text=True).stdout.strip()
    return {"head": head, "ciq_files_sha256": digest.hexdigest()}


def machine() -> dict[str, Any]:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    meta = importlib.metadata.version
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"python": platform.python_version(), "celery": meta("celery"),
            "pytest": meta("pytest"),
            "redis-py": meta("redis"), "redis-server": out.split("v=")[1].split()[0],
            "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "cpu": model, "load_at_start": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition (smoke test)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="measured repetitions per configuration (default 3)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy the worker logs to DIR before the temp dir goes")
    args = parser.parse_args()
    n = 1 if args.quick else args.repeat
    if n < 1:
        parser.error("--repeat must be at least 1")
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install -y redis-server)")
        return 2
    try:
        info = machine()
    except importlib.metadata.PackageNotFoundError as exc:
        print(f"{exc.name} is not installed: pip install -e '.[bench]'")
        return 2
    print("ciq sharding bench: " + ", ".join(f"{k} {v}" for k, v in info.items())
          + (" (quick)" if args.quick else f" ({n} repetitions)"), flush=True)
    cal = calibrate(CPU_SECONDS)
    print(f"cpu calibration: {cal['iterations']:,} iterations of the loop = "
          f"{cal['check_s']:.2f} s here (aim {CPU_SECONDS} s)", flush=True)
    code = code_fingerprint()
    results: dict[str, Any] = {
        "machine": info, "code": code, "quick": args.quick, "repeat": n,
        "started": time.time(),
        "calibration": cal,
        "caches": "one CIQ_DATA_DIR and one CIQ_ENV_DIR for the whole benchmark: mirror "
                  "and environment warm after each suite's first warm-up",
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` runs
    b = Bench()
    ok = False
    try:
        b.start_redis()
        sleep_tests = sum(k for _, k in SLEEPS)
        results["sleep"] = measure_suite(b, "sleep", sleep_suite(), sleep_tests, n, CONFIGS)
        results["cpu"] = measure_suite(b, "cpu", cpu_suite(cal["iterations"]), CPU_TESTS, n,
                                       CONFIGS, capacity_probe=cal["iterations"])
        figures = verdicts(results)
        results["figures"] = figures
        results["table"] = table(results, figures)
        print(results["table"], flush=True)
        ok = all(f["pass"] for f in figures.values() if "pass" in f)
    except BaseException:
        show_worker_logs(b.root)
        raise
    finally:
        results["finished"] = time.time()
        results["code_changed_during_run"] = code_fingerprint() != code
        if results["code_changed_during_run"]:
            print("warning: ciq's code changed during the run; configurations measured "
                  "different versions of it (workers import it when they start)")
        out = save_results("sharding", results, b.close(args.keep_logs))
    took = results["finished"] - results["started"]
    print(f"\nsummary: {'PASS' if ok else 'FAIL'} in {took:.0f} s; raw numbers in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
