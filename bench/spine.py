"""Benchmark of ciq's spine: what ciq adds on top of running the tests, under real parts.

Run ``python bench/spine.py [--quick]``. Everything is private to the run: a redis-server
on a free port of 127.0.0.1, ``celery -A ciq worker`` subprocesses configured through
``CIQ_*`` variables, git repositories and data folders in a temporary directory. Every
process started here is stopped by pid in a ``finally`` block and the directory removed.
Raw numbers go to ``bench/results/spine.json``.

The bare baseline of (a) and (b) is pytest as the run itself starts it, minus ciq: the
interpreter of the cached environment the worker built for the repository (found under
the worker's CIQ_ENV_DIR, by default its data folder's ``envs/``, from the ``environment``
key of the report), the box's environment variables (a HOME of its own, ``CI=true``...),
``python -m pytest tests -p no:cacheprovider`` in a clean worktree of the same commit.
Measured right after the ciq run, so both find the same warm file cache.

(a) Latency overhead. A repository with 10 trivial passing tests, one worker
    (concurrency 1), warmed up once. For each of 10 new commits: t0, ``ciq enqueue REPO``
    (the console script, as a git hook runs it), poll Redis every ~5 ms until the report
    is stored, t1; then the bare baseline. Overhead = (t1 - t0) - bare. Where it goes,
    from the commit's hash in Redis (enqueued_at: the claim; started_at: the lease) and
    the report (its timings per phase, started_at, finished_at): CLI start to claim,
    claim to lease (queue pickup), lease to run start, checkout, environment setup, the
    test phase against bare pytest, the rest of the run (JUnit, report), run end to the
    report seen stored. Target: median overhead <= 0.25 s.
(b) Burst. 20 distinct commits made at once, all submitted through the Python API
    (``Sender.submit``; no CLI start-up per commit) to one worker of concurrency 1.
    Total = first submit to last report stored; baseline = sum of the bare pytest times
    of the same 20 commits, measured one by one after the burst. Target: total / sum < 1.3.
(c) Recovery after a whole worker dies. Two workers with their own data folders (two
    "hosts"), default lease TTL (5 s) and reconcile interval (1 s). Worker 2 starts first
    and stays up for (c) and (d): it runs a commit of the repository alone (its mirror
    and cached environment then exist). Each repetition: worker 2 takes a commit whose
    test waits for a gate file (so that it is busy), worker 1 is started and takes a
    commit whose test writes "pid time" into a marker file and sleeps 60 s on its first
    run only; once that test runs, the gate opens, worker 2 reports and goes idle; then
    worker 1's whole process group gets SIGKILL. From the kill, polled every ~5 ms: (i)
    the rerun's lease taken (a new ``run_id`` in the commit's hash, ``attempts`` 2), (ii)
    the rerun's test started (the second marker line), (iii) the report stored. The report
    must be worker 2's, attempt 2. 10 kills, worker 1 restarted each time. Target: median
    of (i) <= 0.5 s.
(d) A host that vanishes silently. As (c), but worker 1's host is frozen instead: SIGSTOP
    to its process group and to the processes of the run's box (the supervisor and the
    box have sessions of their own; a frozen host freezes them all). Its Redis
    connections stay open, so only the lease's expiry tells. Measured: from the freeze
    until the rerun's lease is taken. Then SIGCONT, and the stale run must stop by itself:
    no process under its run folder of worker 1's data folder within 5 s, no report of
    its own (the stored one stays worker 2's, attempt 2, 5 s after SIGCONT). 3 times.
    Targets: lease taken <= 10 s after the freeze (max), fenced within 5 s.

``--quick`` does 3 commits in (a), 5 in (b), 2 kills in (c) and 1 freeze in (d), for a
smoke test; ``--lease-ttl S`` and ``--reconcile-interval S`` set the workers'
CIQ_LEASE_TTL and CIQ_RECONCILE_INTERVAL. Another load on the machine (a test suite)
makes figures noisy.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path

from harness import (
    commit,
    free_port,
    git,
    kill_leftovers,
    processes_under,
    save_results,
    show_worker_logs,
    start_redis,
    stop_process,
)
from harness import wait_for as shared_wait_for

from ciq.dispatch import Sender
from ciq.gitrepo import normalise_repo
from ciq.report import Report
from ciq.runner.box import run_env
from ciq.runner.runs import runs_dir
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.keys import report as report_key

TEN_TESTS = "".join(f"def test_{i}():\n    assert {i} == {i}\n\n" for i in range(10))
OK_TEST = "def test_ok():\n    pass\n"
MARKER_TEST = """\
import os, pathlib, time

MARK = pathlib.Path({marker!r})

def test_records_its_run():
    first = not MARK.exists()
    with MARK.open("a") as fh:
        fh.write(f"{{os.getpid()}} {{time.time()}}\\n")
    if first:
        time.sleep(60)
"""
HOLD_TEST = """\
import pathlib, time

GATE = pathlib.Path({gate!r})

def test_waits_for_the_gate():
    deadline = time.time() + 60
    while not GATE.exists() and time.time() < deadline:
        time.sleep(0.01)
"""
REPORT_TIMEOUT = 120.0
LATENCY_TARGET = 0.25  # s, median overhead of (a)
BURST_TARGET = 1.3  # total / sum of bare, (b)
LEASE_TARGET = 0.5  # s, median from the kill to the rerun's lease, (c)
FREEZE_TARGET = 10.0  # s, max from the freeze to the rerun's lease (lease expiry), (d)
FENCE_TARGET = 5.0  # s, from SIGCONT until the stale run's box is gone, (d)
IDLE_PAUSE = 0.5  # s, for worker 2 to wait on the queue again after a report
POLL = 0.005  # s


def wait_for(predicate, timeout: float, what: str, interval: float = POLL):
    return shared_wait_for(predicate, timeout, what, interval)


def timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class Bench:
    """The private world of one run: temp dir, redis-server, workers, repositories."""

    def __init__(self, overrides: dict[str, str]) -> None:
        self.overrides = overrides  # CIQ_* variables given by flags
        self.root = Path(tempfile.mkdtemp(prefix="ciq-bench-")).resolve()
        self.procs: list[subprocess.Popen] = []
        self.repos = 0
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.store = Store.from_url(self.url)  # connects on first use

    def start_redis(self) -> None:
        self.procs.append(start_redis(self.root / "redis", self.port, self.store.client))

    def env(self, data_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIQ_")}
        # The markers of (c) are in a folder the runs' boxes may write (CIQ_BOX_SHARED).
        (self.root / "shared").mkdir(exist_ok=True)
        env.update(CIQ_BROKER_URL=self.url, CIQ_RESULT_BACKEND=self.url,
                   CIQ_DATA_DIR=str(data_dir), CIQ_BOX_SHARED=str(self.root / "shared"),
                   **self.overrides)
        return env

    def sender(self) -> Sender:
        settings = Settings(broker_url=self.url, result_backend=self.url, data_dir=self.root)
        return Sender.for_store(settings, self.store)

    def start_worker(self, name: str, data_dir: Path) -> subprocess.Popen:
        log = self.root / f"worker-{name}-{len(self.procs)}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "ciq", "worker", "--loglevel=INFO",
               "--concurrency=1", "--without-mingle", "--without-gossip",
               f"--hostname={name}@%h"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=self.env(data_dir), cwd=self.root, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        wait_for(lambda: " ready." in log.read_text(errors="replace") or proc.poll() is not None,
                 60, f"worker {name} to start", 0.02)
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} died:\n{log.read_text()[-3000:]}")
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        stop_process(proc, grace)

    def new_repo(self, files: dict[str, str]) -> tuple[Path, str]:
        self.repos += 1
        path = self.root / f"repo{self.repos}"
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        commit(path, files, "initial")
        return path, normalise_repo(str(path))

    def wait_report(self, repo: str, sha: str, timeout: float = REPORT_TIMEOUT) -> Report:
        return wait_for(lambda: self.store.report(repo, sha), timeout, f"report of {sha[:12]}")

    def env_python(self, data_dir: Path, report: Report) -> Path:
        """The interpreter of the cached environment ``report``'s run used on the worker
        host of ``data_dir`` (where that worker's settings put its environments)."""
        key = report.environment.get("key")
        root = Settings.from_env(self.env(data_dir)).env_root
        python = root / str(key) / "bin" / "python"
        if not key or not python.exists():
            raise RuntimeError(f"no cached environment {key!r} under {root} "
                               f"(report environment: {report.environment})")
        return python

    def bare_pytest(self, repo: Path, sha: str, python: Path) -> float:
        """Wall time of the tests alone in a clean worktree of ``sha``, with ``python``
        (the run's cached environment) and the environment variables of the run's box."""
        dest = self.root / "bare" / sha
        git(repo, "worktree", "add", "--quiet", "--detach", str(dest), sha)
        home = self.root / "bare-home"
        home.mkdir(exist_ok=True)
        venv = python.parent.parent
        env = {**run_env(dict(os.environ), home), "VIRTUAL_ENV": str(venv)}
        env["PATH"] = os.pathsep.join([str(venv / "bin"), env["PATH"]])
        try:
            t0 = time.perf_counter()
            done = subprocess.run([str(python), "-m", "pytest", "tests", "-p", "no:cacheprovider"],
                                  cwd=dest, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
            took = time.perf_counter() - t0
        finally:
            git(repo, "worktree", "remove", "--force", str(dest))
        if done.returncode != 0:
            raise RuntimeError(f"bare pytest failed on {sha[:12]} (exit {done.returncode})")
        return took

    def close(self) -> dict[int, str]:
        """Stop every process started here (workers first), report and kill leftovers."""
        for proc in reversed(self.procs):
            self.stop(proc)
        self.store.client.close()
        # let dying pool processes and test trees go, then kill what is left
        leaks = kill_leftovers(self.root, grace=3)
        shutil.rmtree(self.root, ignore_errors=True)
        return leaks


def ciq_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "ciq")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "ciq"]


def phases(report: Report, meta: dict[str, str], t0_wall: float, t1_wall: float
           ) -> dict[str, float]:
    """One commit's timeline, t0 (CLI start) to the report seen stored, in seconds per
    step: from the commit's hash (claim, lease) and the report (run, its phases)."""
    claimed, leased = timestamp(meta["enqueued_at"]), timestamp(meta["started_at"])
    run_start = timestamp(report.started_at or meta["started_at"])
    run_end = timestamp(report.finished_at or meta["started_at"])
    steps = {"cli_to_claim": claimed - t0_wall, "claim_to_lease": leased - claimed,
             "lease_to_run": run_start - leased}
    steps.update({f"run_{k}": v for k, v in report.timings.items()})
    steps["run_rest"] = report.duration - sum(report.timings.values())
    steps["end_to_stored"] = t1_wall - run_end
    return steps


PHASE_LABELS = {
    "cli_to_claim": "CLI start -> claim (commit hash enqueued_at)",
    "claim_to_lease": "claim -> lease (queue pickup, hash started_at)",
    "lease_to_run": "lease -> run start (report started_at)",
    "run_checkout": "checkout (mirror fetch, worktree)",
    "run_setup": "environment setup (cached env + the run's own)",
    "run_collect": "collection",
    "run_test": "test phase",
    "run_rest": "rest of the run (JUnit, report made)",
    "end_to_stored": "run end -> report seen stored",
}


def latency(b: Bench, n: int) -> dict:
    path, repo = b.new_repo({"tests/test_ten.py": TEN_TESTS, "VERSION": "0\n"})
    data_dir = b.root / "host-a"
    worker = b.start_worker("bench", data_dir)
    env, cli = b.env(data_dir), ciq_command()
    rows, python = [], None
    for i in range(n + 1):  # i == 0 is the warm-up
        sha = commit(path, {"VERSION": f"{i + 1}\n"}, f"version {i + 1}")
        t0, t0_wall = time.perf_counter(), time.time()
        done = subprocess.run([*cli, "enqueue", repo], env=env, capture_output=True, text=True)
        t_cli = time.perf_counter()
        if done.returncode != 0 or done.stdout.strip() != sha:
            raise RuntimeError(f"ciq enqueue failed: {done.stderr.strip()}")
        report = b.wait_report(repo, sha)
        t1, t1_wall = time.perf_counter(), time.time()
        if report.status != "passed" or report.summary.passed != 10:
            raise RuntimeError(f"unexpected report {report.status}: {report.message}")
        meta = b.store.commit(repo, sha)
        python = b.env_python(data_dir, report)
        bare = b.bare_pytest(path, sha, python)
        if i:
            steps = phases(report, meta, t0_wall, t1_wall)
            rows.append({"sha": sha, "end_to_end": t1 - t0, "cli": t_cli - t0, "bare": bare,
                         "overhead": t1 - t0 - bare, "run_duration": report.duration,
                         "test_minus_bare": report.timings.get("test", 0.0) - bare,
                         "cache_hit": report.environment.get("cache_hit"), **steps})
    b.stop(worker)
    keys = [k for k in rows[0] if k not in ("sha", "cache_hit")]
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys}
    ok = med["overhead"] <= LATENCY_TARGET
    print(f"(a) latency, medians over {n} commits; bare baseline: {python} -m pytest tests "
          f"-p no:cacheprovider in a clean worktree")
    shown = [k for k in PHASE_LABELS if k in med]
    width = max(len(PHASE_LABELS[k]) for k in shown)
    print(f"      {'`ciq enqueue` CLI, start to exit':<{width}} {med['cli']:7.3f} s  (overlaps "
          f"the steps below)")
    for k in shown:
        extra = ""
        if k == "run_test":
            extra = (f"  (bare pytest {med['bare']:.3f} s; test phase - bare, median "
                     f"{med['test_minus_bare']:+.3f} s)")
        print(f"      {PHASE_LABELS[k]:<{width}} {med[k]:7.3f} s{extra}")
    print(f"      {'end to end (t0 -> report stored)':<{width}} {med['end_to_end']:7.3f} s  "
          f"(the medians above add up to {sum(med[k] for k in shown):.3f} s)")
    print(f"(a) latency: median overhead {med['overhead']:.3f} s (end to end - bare pytest) - "
          f"target <= {LATENCY_TARGET} s: {'PASS' if ok else 'FAIL'}", flush=True)
    return {"runs": rows, "median": med, "bare_python": str(python), "target_s": LATENCY_TARGET,
            "pass": ok}


def burst(b: Bench, n: int) -> dict:
    path, repo = b.new_repo({"tests/test_ten.py": TEN_TESTS, "burst.txt": "0\n"})
    data_dir = b.root / "host-b"
    worker = b.start_worker("bench", data_dir)
    sender = Sender.for_store(
        Settings(broker_url=b.url, result_backend=b.url, data_dir=data_dir), b.store)
    warm = git(path, "rev-parse", "HEAD")
    sender.submit(repo, warm, "main")
    b.wait_report(repo, warm)
    shas = [commit(path, {"burst.txt": f"{i + 1}\n"}, f"burst {i + 1}") for i in range(n)]
    keys = [report_key(repo, sha) for sha in shas]
    t0 = time.perf_counter()
    for sha in shas:
        if not sender.submit(repo, sha, "main"):
            raise RuntimeError(f"{sha[:12]} was already claimed")
    wait_for(lambda: b.store.client.exists(*keys) == len(keys), REPORT_TIMEOUT * n,
             "the burst's reports")
    total = time.perf_counter() - t0
    b.stop(worker)
    reports = [b.store.report(repo, sha) for sha in shas]
    statuses = {r.status for r in reports if r}
    if statuses != {"passed"}:
        raise RuntimeError(f"burst reports: {statuses}")
    bare = [b.bare_pytest(path, sha, b.env_python(data_dir, r))
            for sha, r in zip(shas, reports, strict=True) if r]
    ratio = total / sum(bare)
    ok = ratio < BURST_TARGET
    print(f"(b) burst: {n} commits in {total:.2f} s, sum of bare pytest {sum(bare):.2f} s, "
          f"ratio {ratio:.2f} ({(total - sum(bare)) / n:.3f} s per commit) - target < "
          f"{BURST_TARGET}: {'PASS' if ok else 'FAIL'}", flush=True)
    return {"commits": n, "total": total, "bare": bare, "bare_sum": sum(bare), "ratio": ratio,
            "target": BURST_TARGET, "pass": ok}


def marker_lines(marker: Path) -> list[tuple[int, float]]:
    if not marker.exists():
        return []
    lines = [line.split() for line in marker.read_text().splitlines()]
    return [(int(pid), float(t)) for pid, t in (x for x in lines if len(x) == 2)]


class TwoHosts:
    """(c) and (d): worker 2 up, warm and idle on a host of its own; worker 1 started
    again for each slow run."""

    def __init__(self, b: Bench) -> None:
        self.b = b
        self.path, self.repo = b.new_repo({"tests/test_run.py": OK_TEST})
        self.host1, self.host2 = b.root / "host-c1", b.root / "host-c2"
        self.sender = b.sender()
        self.runs = 0
        # Given worker 2 alone, once: its mirror of the repository and its cached
        # environment exist before any kill.
        self.second = b.start_worker("bench2", self.host2)
        warm = git(self.path, "rev-parse", "HEAD")
        self.sender.submit(self.repo, warm, "main")
        report = b.wait_report(self.repo, warm)
        if report.status != "passed":
            raise RuntimeError(f"warm-up of worker 2: {report.status}: {report.message}")

    def slow_run_on_worker_1(self, label: str) -> tuple[subprocess.Popen, str, Path, str]:
        """Worker 1 (started now) in the first run of a slow commit, worker 2 idle; the
        worker, commit, marker file and the first run's id."""
        b, self.runs = self.b, self.runs + 1
        shared = b.root / "shared"
        gate, marker = shared / f"gate-{self.runs}", shared / f"marker-{self.runs}.txt"
        # Worker 2 busy first (concurrency 1, prefetch 1): the slow commit goes to worker 1.
        hold = commit(self.path, {"tests/test_run.py": HOLD_TEST.format(gate=str(gate))},
                      f"hold {self.runs}")
        self.sender.submit(self.repo, hold, "main")
        wait_for(lambda: b.store.commit(self.repo, hold).get("worker", "").startswith("bench2@"),
                 60, "worker 2 to take the holding commit")
        first = b.start_worker("bench1", self.host1)
        sha = commit(self.path, {"tests/test_run.py": MARKER_TEST.format(marker=str(marker))},
                     f"{label} {self.runs}")
        self.sender.submit(self.repo, sha, "main")
        wait_for(lambda: marker_lines(marker), 120, "the first run to start", 0.02)
        meta = b.store.commit(self.repo, sha)
        if not meta.get("worker", "").startswith("bench1@"):
            raise RuntimeError(f"the slow commit went to {meta.get('worker')}, not worker 1")
        gate.touch()
        b.wait_report(self.repo, hold)
        time.sleep(IDLE_PAUSE)
        return first, sha, marker, meta["run_id"]

    def watch_rerun(self, sha: str, first_run: str, marker: Path, since: float,
                    timeout: float = 60.0) -> dict:
        """Seconds from ``since`` until the rerun's lease is taken (a new run id in the
        commit's hash), its test starts (second marker line) and its report is stored,
        polled every ~5 ms."""
        b, key = self.b, report_key(self.repo, sha)
        got: dict = {}
        deadline = time.monotonic() + timeout
        while not all(k in got for k in ("lease", "test", "stored")):
            if time.monotonic() > deadline:
                state = b.store.commit(self.repo, sha)
                raise RuntimeError(f"{sha[:12]}: after {timeout:g} s, only {sorted(got)} of "
                                   f"lease, test, stored; commit {state}")
            now = time.time()
            if "lease" not in got:
                meta = b.store.commit(self.repo, sha)
                if meta.get("run_id") not in (None, first_run):
                    got["lease"] = now - since
                    got["lease_hash_started_at"] = timestamp(meta["started_at"]) - since
                    got["rerun"] = {k: meta.get(k) for k in ("run_id", "worker", "attempts")}
            if "test" not in got and len(lines := marker_lines(marker)) >= 2:
                got["test"] = lines[1][1] - since
            if "stored" not in got and b.store.client.exists(key):
                got["stored"] = now - since
            time.sleep(POLL)
        return got

    def check(self, sha: str, rerun: dict) -> tuple[bool, str]:
        """Whether the stored report is the rerun's: worker 2, attempt 2."""
        r = self.b.store.report(self.repo, sha)
        if r is None:
            return False, "no report"
        ok = (r.status == "passed" and r.attempts == 2 and (r.worker or "").startswith("bench2@")
              and r.run_id == rerun.get("run_id"))
        return ok, f"{r.status}, attempt {r.attempts} on {r.worker}, run {r.run_id}"


def kill_once(hosts: TwoHosts) -> dict:
    first, sha, marker, run_id = hosts.slow_run_on_worker_1("kill")
    killed_at = time.time()
    os.killpg(first.pid, signal.SIGKILL)
    got = hosts.watch_rerun(sha, run_id, marker, killed_at)
    first.wait()
    ok, shown = hosts.check(sha, got["rerun"])
    # Not a target: the dead run's box goes with its worker (its supervisor watches it).
    left = runs_dir(hosts.host1) / run_id
    with suppress(RuntimeError):
        wait_for(lambda: not processes_under(left), 10, "the dead run's box to go", 0.05)
    return {"sha": sha, "lease_taken": got["lease"], "lease_hash_started_at":
            got["lease_hash_started_at"], "rerun_started": got["test"],
            "report_stored": got["stored"], "rerun": got["rerun"], "report": shown,
            "report_ok": ok, "dead_box_left_after_10s": len(processes_under(left)),
            "runs": len(marker_lines(marker))}


def recovery(hosts: TwoHosts, n: int) -> dict:
    rows = [kill_once(hosts) for _ in range(n)]
    fig = {}
    for key in ("lease_taken", "rerun_started", "report_stored"):
        values = [r[key] for r in rows]
        fig[key] = {"median": statistics.median(values), "max": max(values)}
    reports_ok = all(r["report_ok"] for r in rows)
    ok = fig["lease_taken"]["median"] <= LEASE_TARGET and reports_ok
    shown = "; ".join(f"{label} median {fig[k]['median']:.3f} s / max {fig[k]['max']:.3f} s"
                      for k, label in (("lease_taken", "(i) rerun's lease taken"),
                                       ("rerun_started", "(ii) rerun's test started"),
                                       ("report_stored", "(iii) report stored")))
    bad = [r["report"] for r in rows if not r["report_ok"]]
    print(f"(c) recovery after SIGKILL of worker 1's process group ({n} kills): {shown}; "
          f"reports {'all worker 2, attempt 2' if reports_ok else 'WRONG: ' + '; '.join(bad)}"
          f" - target (i) median <= {LEASE_TARGET} s: {'PASS' if ok else 'FAIL'}", flush=True)
    return {"kills": rows, **fig, "target_s": LEASE_TARGET, "pass": ok}


def freeze_once(hosts: TwoHosts) -> dict:
    b = hosts.b
    first, sha, marker, run_id = hosts.slow_run_on_worker_1("freeze")
    run_dir = runs_dir(hosts.host1) / run_id
    box = processes_under(run_dir)  # the run's supervisor and box: sessions of their own
    frozen_at = time.time()
    os.killpg(first.pid, signal.SIGSTOP)
    for pid in box:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        got = hosts.watch_rerun(sha, run_id, marker, frozen_at)
    finally:
        resumed_at = time.time()
        with suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGCONT)
        for pid in box:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    gone_after = None
    with suppress(RuntimeError):
        wait_for(lambda: not processes_under(run_dir), 15, "the stale run to stop", 0.05)
        gone_after = time.time() - resumed_at
    left = processes_under(run_dir)
    # Time for the stale run to try to report, had it not been fenced.
    time.sleep(max(0.0, resumed_at + FENCE_TARGET - time.time()))
    ok, shown = hosts.check(sha, got["rerun"])
    b.stop(first)
    fenced = bool(box) and gone_after is not None and gone_after <= FENCE_TARGET
    return {"sha": sha, "lease_taken": got["lease"], "lease_hash_started_at":
            got["lease_hash_started_at"], "rerun_started": got["test"],
            "report_stored": got["stored"], "rerun": got["rerun"], "frozen_box": len(box),
            "stale_gone_after_sigcont": gone_after, "stale_left": list(left.values()),
            "fenced": fenced, "report": shown, "report_ok": ok,
            "runs": len(marker_lines(marker))}


def vanish(hosts: TwoHosts, n: int) -> dict:
    rows = [freeze_once(hosts) for _ in range(n)]
    lease = [r["lease_taken"] for r in rows]
    gone = [r["stale_gone_after_sigcont"] for r in rows]
    ok_lease = max(lease) <= FREEZE_TARGET
    ok_fence = all(r["fenced"] for r in rows)
    ok_report = all(r["report_ok"] for r in rows)
    ok = ok_lease and ok_fence and ok_report
    shown_gone = ", ".join("not within 15 s" if g is None else f"{g:.2f} s" for g in gone)
    if not all(r["frozen_box"] for r in rows):
        shown_gone += " (the run's box was not seen: nothing to check)"
    bad = [r["report"] for r in rows if not r["report_ok"]]
    print(f"(d) host frozen (SIGSTOP, {n}x): rerun's lease taken median "
          f"{statistics.median(lease):.2f} s / max {max(lease):.2f} s after the freeze "
          f"(target <= {FREEZE_TARGET:g} s: {'PASS' if ok_lease else 'FAIL'}); rerun's test "
          f"started max {max(r['rerun_started'] for r in rows):.2f} s; after SIGCONT the "
          f"stale run's processes gone in {shown_gone} (target <= {FENCE_TARGET:g} s: "
          f"{'PASS' if ok_fence else 'FAIL'}); stored report "
          f"{'worker 2, attempt 2' if ok_report else 'WRONG: ' + '; '.join(bad)} - "
          f"{'PASS' if ok else 'FAIL'}", flush=True)
    return {"freezes": rows, "lease_taken_median": statistics.median(lease),
            "lease_taken_max": max(lease), "target_s": FREEZE_TARGET,
            "fence_target_s": FENCE_TARGET, "pass": ok}


def versions(overrides: dict[str, str]) -> dict:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    meta = importlib.metadata.version
    return {"python": platform.python_version(), "celery": meta("celery"),
            "redis-py": meta("redis"), "redis-server": out.split("v=")[1].split()[0],
            "nproc": len(os.sched_getaffinity(0)),
            "lease_ttl": float(overrides.get("CIQ_LEASE_TTL", Settings.lease_ttl)),
            "reconcile_interval": float(overrides.get("CIQ_RECONCILE_INTERVAL",
                                                      Settings.reconcile_interval))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--lease-ttl", type=float, metavar="S",
                        help="CIQ_LEASE_TTL of the workers (default: ciq's, 5 s)")
    parser.add_argument("--reconcile-interval", type=float, metavar="S",
                        help="CIQ_RECONCILE_INTERVAL of the workers (default: ciq's, 1 s)")
    args = parser.parse_args()
    n_a, n_b, n_c, n_d = (3, 5, 2, 1) if args.quick else (10, 20, 10, 3)
    overrides = {var: str(value) for var, value in (
        ("CIQ_LEASE_TTL", args.lease_ttl), ("CIQ_RECONCILE_INTERVAL", args.reconcile_interval),
    ) if value is not None}
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install -y redis-server)")
        return 2
    info = versions(overrides)
    print("ciq spine bench: " + ", ".join(f"{k} {v}" for k, v in info.items())
          + (" (quick)" if args.quick else ""), flush=True)
    results: dict = {"versions": info, "quick": args.quick, "started": time.time()}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` runs
    b = Bench(overrides)
    try:
        b.start_redis()
        results["a_latency"] = latency(b, n_a)
        results["b_burst"] = burst(b, n_b)
        hosts = TwoHosts(b)
        results["c_recovery"] = recovery(hosts, n_c)
        results["d_vanish"] = vanish(hosts, n_d)
    except BaseException:
        show_worker_logs(b.root)
        raise
    finally:
        out = save_results("spine", results, b.close())
    parts = ("a_latency", "b_burst", "c_recovery", "d_vanish")
    verdicts = {k[0]: results[k]["pass"] for k in parts}
    print("summary: " + ", ".join(f"({k}) {'PASS' if v else 'FAIL'}" for k, v in
                                  verdicts.items()) + f"; raw numbers in {out}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
