"""Benchmark of ciq's spine: what ciq adds on top of running the tests, under real parts.

Run ``python bench/spine.py [--quick]``. Everything is private to the run: a redis-server
on a free port of 127.0.0.1, ``celery -A ciq worker`` subprocesses configured through
``CIQ_*`` variables, git repositories and data folders in a temporary directory. Every
process started here is stopped by pid in a ``finally`` block and the directory removed.
Raw numbers go to ``bench/results/spine.json``.

(a) Latency overhead. A repository with 10 trivial passing tests, one worker
    (concurrency 1), warmed up once. For each of 10 new commits: t0, ``ciq enqueue REPO``
    (the console script, as a git hook runs it), poll Redis every ~5 ms until the report
    is stored, t1. Then, not concurrently, the bare baseline: ``python -m pytest tests -q
    -p no:cacheprovider`` in a clean worktree of the same commit. Overhead = (t1 - t0) -
    bare. Target: median overhead < 0.3 s.
(b) Burst. 20 distinct commits made at once, all submitted through the Python API
    (``Sender.submit``; no CLI start-up per commit) to one worker of concurrency 1.
    Total = first submit to last report stored; baseline = sum of the bare pytest times
    of the same 20 commits, measured one by one after the burst. Target: total / sum < 1.3.
(c) Recovery after a whole worker dies. Two workers with their own data folders (two
    "hosts"), default lease TTL (5 s) and reconcile interval (1 s). A commit whose test
    writes "pid time" into a marker file and sleeps 60 s on its first run only. Worker 1
    alone takes it; once the run started, worker 2 starts; then worker 1's whole process
    group gets SIGKILL. Measured from the kill: until the rerun starts (second marker
    line) and until the report is stored. Three times, fresh commit and worker 1 each
    time. Target: rerun started under 10 s after the kill (max of the repetitions).

``--quick`` does 3 commits in (a), 5 in (b) and 1 kill in (c), for a smoke test;
``--lease-ttl S`` and ``--reconcile-interval S`` set the workers' CIQ_LEASE_TTL and
CIQ_RECONCILE_INTERVAL. Another load on the machine (a test suite) makes figures noisy.
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
from datetime import datetime
from pathlib import Path

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
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.keys import report as report_key

TEN_TESTS = "".join(f"def test_{i}():\n    assert {i} == {i}\n\n" for i in range(10))
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
REPORT_TIMEOUT = 120.0


def wait_for(predicate, timeout: float, what: str, interval: float = 0.005):
    return shared_wait_for(predicate, timeout, what, interval)


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

    def wait_report(self, repo: str, sha: str, timeout: float = REPORT_TIMEOUT):
        return wait_for(lambda: self.store.report(repo, sha), timeout, f"report of {sha[:12]}")

    def bare_pytest(self, repo: Path, sha: str) -> float:
        """Wall time of the tests alone in a clean worktree of ``sha``."""
        dest = self.root / "bare" / sha
        git(repo, "worktree", "add", "--quiet", "--detach", str(dest), sha)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CIQ_", "CELERY_"))}
        try:
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pytest", "tests", "-q", "-p",
                                   "no:cacheprovider"], cwd=dest, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def latency(b: Bench, n: int) -> dict:
    path, repo = b.new_repo({"tests/test_ten.py": TEN_TESTS, "VERSION": "0\n"})
    worker = b.start_worker("bench", b.root / "host-a")
    env, cli = b.env(b.root / "host-a"), ciq_command()
    rows = []
    for i in range(n + 1):  # i == 0 is the warm-up
        sha = commit(path, {"VERSION": f"{i + 1}\n"}, f"version {i + 1}")
        t0, t0_wall = time.perf_counter(), time.time()
        done = subprocess.run([*cli, "enqueue", repo], env=env, capture_output=True, text=True)
        t_cli = time.perf_counter()
        if done.returncode != 0 or done.stdout.strip() != sha:
            raise RuntimeError(f"ciq enqueue failed: {done.stderr.strip()}")
        report = b.wait_report(repo, sha)
        t1 = time.perf_counter()
        if report.status != "passed" or report.summary.passed != 10:
            raise RuntimeError(f"unexpected report {report.status}: {report.message}")
        meta = b.store.commit(repo, sha)  # when the CLI claimed it, when the run took it
        claimed = datetime.fromisoformat(meta["enqueued_at"]).timestamp()
        pickup = datetime.fromisoformat(meta["started_at"]).timestamp() - claimed
        bare = b.bare_pytest(path, sha)
        if i:
            rows.append({"sha": sha, "end_to_end": t1 - t0, "cli": t_cli - t0, "bare": bare,
                         "cli_to_claim": claimed - t0_wall, "pickup": pickup,
                         "run_duration": report.duration,
                         "overhead": t1 - t0 - bare})
    b.stop(worker)
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("overhead", "end_to_end", "bare", "cli", "cli_to_claim", "pickup",
                     "run_duration")}
    ok = med["overhead"] < 0.3
    print(f"(a) latency: median overhead {med['overhead']:.3f} s over {n} commits (medians: "
          f"end-to-end {med['end_to_end']:.3f} s, bare pytest {med['bare']:.3f} s; `ciq "
          f"enqueue` {med['cli']:.3f} s of which {med['cli_to_claim']:.3f} s to the claim, "
          f"queue to lease {med['pickup']:.3f} s, worker run {med['run_duration']:.3f} s) - "
          f"target < 0.3 s: {'PASS' if ok else 'FAIL'}", flush=True)
    return {"runs": rows, "median": med, "target_s": 0.3, "pass": ok}


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
    statuses = {b.store.report(repo, sha).status for sha in shas}
    if statuses != {"passed"}:
        raise RuntimeError(f"burst reports: {statuses}")
    bare = [b.bare_pytest(path, sha) for sha in shas]
    ratio = total / sum(bare)
    ok = ratio < 1.3
    print(f"(b) burst: {n} commits in {total:.2f} s, sum of bare pytest {sum(bare):.2f} s, "
          f"ratio {ratio:.2f} ({(total - sum(bare)) / n:.3f} s per commit) - target < 1.3: "
          f"{'PASS' if ok else 'FAIL'}", flush=True)
    return {"commits": n, "total": total, "bare": bare, "bare_sum": sum(bare), "ratio": ratio,
            "target": 1.3, "pass": ok}


def marker_lines(marker: Path) -> list[tuple[int, float]]:
    if not marker.exists():
        return []
    lines = [line.split() for line in marker.read_text().splitlines()]
    return [(int(pid), float(t)) for pid, t in (x for x in lines if len(x) == 2)]


def kill_once(b: Bench, path: Path, repo: str, i: int) -> dict:
    """Worker 1 runs a slow commit, worker 2 joins, worker 1 dies: times from the kill."""
    marker = b.root / "shared" / f"marker-{i}.txt"
    sha = commit(path, {"tests/test_slow.py": MARKER_TEST.format(marker=str(marker))}, f"slow {i}")
    first = b.start_worker("bench1", b.root / "host-c1")
    settings = Settings(broker_url=b.url, result_backend=b.url, data_dir=b.root)
    Sender.for_store(settings, b.store).submit(repo, sha, "main")
    wait_for(lambda: marker_lines(marker), 60, "the first run to start", 0.02)
    second = b.start_worker("bench2", b.root / "host-c2")
    killed_at = time.time()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    wait_for(lambda: len(marker_lines(marker)) >= 2, 60, "the rerun to start")
    report = b.wait_report(repo, sha)
    stored_at = time.time()
    b.stop(second)
    runs = marker_lines(marker)
    if report.status != "passed" or report.attempts != 2 or \
            not (report.worker or "").startswith("bench2@"):
        raise RuntimeError(f"unexpected rerun report: {report.status} attempt "
                           f"{report.attempts} on {report.worker}: {report.message}")
    return {"sha": sha, "rerun_started": runs[1][1] - killed_at,
            "report_stored": stored_at - killed_at, "runs": len(runs)}


def recovery(b: Bench, n: int) -> dict:
    path, repo = b.new_repo({"tests/test_ok.py": "def test_ok():\n    pass\n"})
    rows = [kill_once(b, path, repo, i) for i in range(n)]
    started = [r["rerun_started"] for r in rows]
    stored = [r["report_stored"] for r in rows]
    figures = {"rerun_started_max": max(started), "rerun_started_median":
               statistics.median(started), "report_stored_max": max(stored),
               "report_stored_median": statistics.median(stored)}
    ok = max(started) < 10
    print(f"(c) recovery: rerun started max {max(started):.2f} s / median "
          f"{statistics.median(started):.2f} s after the kill, report stored max "
          f"{max(stored):.2f} s / median {statistics.median(stored):.2f} s ({n} kills) - "
          f"target < 10 s: {'PASS' if ok else 'FAIL'}", flush=True)
    return {"kills": rows, **figures, "target_s": 10, "pass": ok}


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
    n_a, n_b, n_c = (3, 5, 1) if args.quick else (10, 20, 3)
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
        results["c_recovery"] = recovery(b, n_c)
    except BaseException:
        show_worker_logs(b.root)
        raise
    finally:
        out = save_results("spine", results, b.close())
    verdicts = {k[0]: results[k]["pass"] for k in ("a_latency", "b_burst", "c_recovery")}
    print("summary: " + ", ".join(f"({k}) {'PASS' if v else 'FAIL'}" for k, v in
                                  verdicts.items()) + f"; raw numbers in {out}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
