"""Load figures: many queued commits on several workers (CLI, memory, Redis, throughput).

Run ``python bench/load.py [--commits N] [--workers N] [--quick]``. As in ``bench/spine.py``
everything is private to the run: a redis-server on a free port of 127.0.0.1, ``--workers``
(4) ``celery -A ciq worker --concurrency=1 --without-mingle --without-gossip`` processes,
each with its own ``CIQ_DATA_DIR`` and host name, one git repository, all in a temporary
directory. Every process started here is stopped by pid in a ``finally`` block and the
directory removed; raw numbers (every sample) go to ``bench/results/load.json``.

One ``git fast-import`` makes ``--commits`` (500; 50 with ``--quick``) distinct commits: the
first adds ``tests/test_three.py`` (3 trivial tests), each changes ``COUNTER``. Once the
workers are ready all are submitted at once, oldest first, with ``Sender.submit``. Until
every report is stored and the queue drained, two threads sample every ~2 s:

(1) ``python -m ciq status REPO``, ``python -m ciq status``, ``python -m ciq status REPO
    --json --limit 100`` and bare ``python -c pass``, one after the other: median and max
    wall time each (and the median of 3 rounds once the workers are idle, for comparison).
    Target: the median under load of each status command below 1 s.
(2) VmRSS (MB) of each worker's main process, of each pool process (its direct children
    running the same executable, by pid: ``worker_max_tasks_per_child`` recycles them
    after 200 tasks), of their sum per worker and of redis-server: first, max, last. Flat:
    last / the sample when half the reports were stored <= 1.10 for every worker process
    (redis-server grows with the reports it keeps; last / first is shown too, it includes
    the warm-up of an idle worker's first run).
(3) Redis INFO ``used_memory`` before submitting, after, once all reports are stored and
    once the queue is drained (nothing queued or unacked): (drained - before) / N per
    commit. It also moves with client buffers (some 100 KB per worker), so the exact figure
    is the sum of MEMORY USAGE (SAMPLES 0) over all keys / N; and the mean MEMORY USAGE of
    up to 50 ``celery-task-meta-*`` (report) and ``ciq:commit:*`` keys.
(4) First submit to last report stored, commits per second; every commit must have
    exactly one final report (report keys counted), passed 3/3, with ``attempts == 1``.
The probes of (1) load the CPU too (2 cores here), so (4) is a little pessimistic.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import kill_leftovers, save_results, show_worker_logs, stop_process, wait_for

from ciq.dispatch import Sender
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.keys import report as report_key

THREE_TESTS = "".join(f"def test_{i}():\n    assert {i} + 1 == {i + 1}\n\n" for i in range(3))
PERIOD = 2.0  # seconds between two rounds of probes, and between two memory samples


def git(cwd: Path, *args: str, stdin: bytes | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, check=True,
                          capture_output=True).stdout.decode().strip()


class World:
    """The private world of one run: temp dir, redis-server, workers."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ciq-load-")).resolve()
        self.procs: list[subprocess.Popen] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.store = Store.from_url(self.url)
        self.client = self.store.client

    def spawn(self, cmd: list[str], env: dict | None = None, log: Path | None = None
              ) -> subprocess.Popen:
        with open(log or os.devnull, "wb") as out:
            self.procs.append(subprocess.Popen(cmd, env=env, cwd=self.root, stdout=out,
                                               stderr=subprocess.STDOUT,
                                               start_new_session=True))
        return self.procs[-1]

    def start_redis(self) -> int:
        (self.root / "redis").mkdir()
        log = self.root / "redis.log"
        proc = self.spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                           "--dir", str(self.root / "redis"), "--save", "", "--appendonly", "no"],
                          log=log)
        wait_for(lambda: "Ready to accept" in log.read_text(), 10, "redis-server")
        return proc.pid

    def env(self, data_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIQ_")}
        return {**env, "CIQ_BROKER_URL": self.url, "CIQ_RESULT_BACKEND": self.url,
                "CIQ_DATA_DIR": str(data_dir)}

    def close(self) -> dict[int, str]:
        """Stop every process started here, newest first (SIGTERM to the main process: a
        Celery warm shutdown; then SIGKILL to its group); kill and return leftovers."""
        for proc in reversed(self.procs):
            stop_process(proc)
        self.client.close()
        # let dying pool processes and test trees go, then kill what is left
        leaks = kill_leftovers(self.root, grace=3)
        shutil.rmtree(self.root, ignore_errors=True)
        return leaks


def make_commits(path: Path, n: int) -> list[str]:
    """``n`` distinct commits on ``main`` in one fast-import; their SHAs, oldest first."""
    def data(text: str) -> str:
        return f"data {len(text.encode())}\n{text}\n"

    stream = "".join(
        f"commit refs/heads/main\ncommitter Bench <bench@example.org> {1_700_000_000 + i} "
        f"+0000\n{data(f'load {i}')}"
        + ("M 100644 inline tests/test_three.py\n" + data(THREE_TESTS) if i == 1 else "")
        + "M 100644 inline COUNTER\n" + data(f"{i}\n") for i in range(1, n + 1))
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "fast-import", "--quiet", stdin=stream.encode())
    git(path, "reset", "-q", "--hard")
    return git(path, "rev-list", "--reverse", "main").split()


def start_workers(w: World, n: int) -> dict[str, int]:
    """``n`` workers started at once, each its own data folder and host name; main pids."""
    started = {}
    for name in (f"w{i}" for i in range(1, n + 1)):
        cmd = [sys.executable, "-m", "celery", "-A", "ciq", "worker", "--loglevel=INFO",
               "--concurrency=1", "--without-mingle", "--without-gossip", f"--hostname={name}@%h"]
        log = w.root / f"worker-{name}.log"
        started[name] = (w.spawn(cmd, w.env(w.root / f"host-{name}"), log), log)
    for name, (proc, log) in started.items():
        wait_for(lambda p=proc, f=log: " ready." in f.read_text(errors="replace")
                 or p.poll() is not None, 120, f"worker {name} to start")
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} died:\n{log.read_text()[-3000:]}")
    return {name: proc.pid for name, (proc, _) in started.items()}


def exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, VmRSS in MB) of every process with memory of its own."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = dict(line.split(":", 1) for line in
                          Path(f"/proc/{pid}/status").read_text().splitlines())
            found[int(pid)] = (int(fields["PPid"]), int(fields["VmRSS"].split()[0]) / 1024)
        except (OSError, KeyError, ValueError):  # gone, or a kernel thread (no VmRSS)
            continue
    return found


class Sampler:
    """Two threads until the ``with`` block ends: `ciq status` probes and RSS samples."""

    def __init__(self, w: World, workers: dict[str, int], redis_pid: int, repo: str,
                 keys: list[str]) -> None:
        self.w, self.workers, self.redis_pid, self.keys = w, workers, redis_pid, keys
        ciq = [sys.executable, "-m", "ciq", "status"]
        self.probes = {"status REPO": [*ciq, repo], "status": ciq,
                       "status REPO --json --limit 100": [*ciq, repo, "--json", "--limit", "100"],
                       "python -c pass": [sys.executable, "-c", "pass"]}
        self.times: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.samples: list[dict] = []
        self.t0, self.stop, self.submitted = time.monotonic(), threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._probe), threading.Thread(target=self._rss)]

    def __enter__(self) -> Sampler:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.submitted.set()
        for t in self.threads:
            t.join()
        self.sample()  # the last values: every report stored, the queue drained

    def probe_round(self, times: dict[str, list[float]]) -> None:
        """Each probe once, one after the other; a failure or a short --json is an error."""
        env, rows = self.w.env(self.w.root / "cli"), min(100, len(self.keys))
        for name, cmd in self.probes.items():
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, cwd=self.w.root, capture_output=True, text=True)
            times.setdefault(name, []).append(time.perf_counter() - t0)
            try:
                ok = not done.returncode and ("--json" not in cmd
                                              or len(json.loads(done.stdout)) == rows)
            except ValueError:
                ok = False
            if not ok:
                self.errors.append(f"{name}: exit {done.returncode} {done.stderr[-300:]}")

    def _probe(self) -> None:
        self.submitted.wait()  # from when every commit is queued (--json shows 100 rows)
        while not self.stop.is_set():
            began = time.monotonic()
            self.probe_round(self.times)
            self.stop.wait(max(0.0, PERIOD - (time.monotonic() - began)))

    def _rss(self) -> None:
        while not self.stop.wait(PERIOD if self.samples else 0):
            self.sample()

    def sample(self) -> None:
        procs = processes()
        rss = {"redis-server": procs.get(self.redis_pid, (0, None))[1]}
        for name, pid in self.workers.items():
            kids = {c: mb for c, (ppid, mb) in procs.items() if ppid == pid and exe(c) == exe(pid)}
            rss[f"{name} main"] = procs.get(pid, (0, None))[1]
            rss.update({f"{name} pool {c}": mb for c, mb in kids.items()})
            rss[f"{name} children"] = sum(kids.values())
        self.samples.append({"t": time.monotonic() - self.t0,
                             "done": self.w.client.exists(*self.keys),
                             "used_memory": redis_memory(self.w)["used_memory"],
                             "rss_mb": {k: v for k, v in rss.items() if v is not None}})


def memory_figures(samples: list[dict], n: int) -> dict[str, dict]:
    """first / max / last MB per process, and growth since the half-way sample."""
    half = next((s for s in samples if s["done"] >= n / 2), samples[-1])["rss_mb"]
    series: dict[str, list[float]] = collections.defaultdict(list)
    for s in samples:
        for label, mb in s["rss_mb"].items():
            series[label].append(mb)
    return {label: {"first": v[0], "max": max(v), "last": v[-1], "samples": len(v),
                    "last_over_first": v[-1] / v[0] if v[0] else 0,
                    "last_over_half": v[-1] / (half.get(label) or v[0]) if v[0] else 0}
            for label, v in series.items()}


def redis_memory(w: World) -> dict[str, int]:
    info = w.client.info("memory")
    return {k: info[k] for k in ("used_memory", "used_memory_dataset", "mem_clients_normal",
                                 "used_memory_scripts", "used_memory_overhead")}


def redis_figures(w: World, used: dict[str, dict[str, int]], n: int) -> dict:
    def usage(pattern: str) -> float:
        keys = list(itertools.islice(w.client.scan_iter(match=pattern, count=1000), 50))
        return statistics.mean(w.client.memory_usage(k, samples=0) for k in keys)

    def per_commit(field: str, at: str) -> float:
        return (used[at][field] - used["before"][field]) / n

    pipe = w.client.pipeline(transaction=False)
    for key in w.client.scan_iter(count=1000):
        pipe.memory_usage(key, samples=0)
    return {"info": used, "per_commit_bytes": per_commit("used_memory", "drained"),
            "dataset_per_commit_bytes": per_commit("used_memory_dataset", "drained"),
            "queued_per_commit_bytes": per_commit("used_memory", "submitted"),
            "all_keys_per_commit_bytes": sum(pipe.execute()) / n,
            "report_key_bytes": usage("celery-task-meta-*"),
            "commit_hash_bytes": usage("ciq:commit:*")}


def check_reports(w: World, repo: str, shas: list[str]) -> dict:
    """Exactly one final report per commit, each passed 3/3 at the first attempt."""
    got = [r for r in (w.store.report(repo, sha) for sha in shas) if r]
    n, count = len(shas), collections.Counter
    figures = {
        "reports": len(got),
        "report_keys": sum(1 for _ in w.client.scan_iter(match="celery-task-meta-*", count=1000)),
        "attempts": dict(count(r.attempts for r in got)),
        "commit_hash_attempts": dict(count(w.store.commit(repo, s)["attempts"] for s in shas)),
        "statuses": dict(count(f"{r.status} {r.summary.passed}/{r.summary.total}" for r in got)),
        "by_worker": dict(count((r.worker or "").split("@")[0] for r in got)),
        "run_median_s": {"duration": statistics.median(r.duration for r in got), **{
            k: statistics.median(r.timings.get(k, 0) for r in got) for k in got[0].timings}}}
    ok = (figures["reports"] == figures["report_keys"] == n and figures["attempts"] == {1: n}
          and figures["commit_hash_attempts"] == {"1": n}
          and figures["statuses"] == {"passed 3/3": n})
    return {**figures, "pass": ok}


def run(w: World, n: int, n_workers: int) -> dict:
    redis_pid = w.start_redis()
    t0 = time.perf_counter()
    shas = make_commits(w.root / "repo", n)
    made = time.perf_counter() - t0
    if len(set(shas)) != n:
        raise RuntimeError(f"fast-import made {len(set(shas))} commits, not {n}")
    repo = str(w.root / "repo")  # as ciq.gitrepo.normalise_repo names it (root is resolved)
    keys = [report_key(repo, sha) for sha in shas]
    workers = start_workers(w, n_workers)
    sender = Sender.for_store(
        Settings(broker_url=w.url, result_backend=w.url, data_dir=w.root / "cli"), w.store)
    time.sleep(PERIOD)  # let the workers' start-up buffers in Redis go
    used = {"before": redis_memory(w)}
    with Sampler(w, workers, redis_pid, repo, keys) as sampler:
        t0 = time.perf_counter()
        for sha in shas:
            if not sender.submit(repo, sha, "main", None):
                raise RuntimeError(f"{sha[:12]} was already claimed")
        submitted = time.perf_counter() - t0
        sampler.submitted.set()
        used["submitted"] = redis_memory(w)
        wait_for(lambda: w.client.exists(*keys) == n, 120 + 5 * n / n_workers, "the reports",
                 0.1)
        total = time.perf_counter() - t0
        used["reported"] = redis_memory(w)
        wait_for(lambda: not (w.client.llen(Settings.queue) or w.client.hlen("unacked")), 60,
                 "the queue to drain", 0.1)
        used["drained"] = redis_memory(w)
    idle: dict[str, list[float]] = {}
    for _ in range(3):  # the same probes once the workers are idle, for comparison
        sampler.probe_round(idle)
    return {"commits": n, "workers": n_workers, "make_commits_s": made, "submit_s": submitted,
            "total_s": total, "rate": n / total,
            "status": {k: {"median": statistics.median(v), "max": max(v), "all": v,
                           "idle_median": statistics.median(idle[k])}
                       for k, v in sampler.times.items()},
            "status_errors": sampler.errors, "memory": memory_figures(sampler.samples, n),
            "redis": redis_figures(w, used, n), "check": check_reports(w, repo, shas),
            "worker_log_problems": [line for log in sorted(w.root.glob("worker-*.log"))
                                    for line in log.read_text(errors="replace").splitlines()
                                    if "WARNING" in line or "ERROR" in line],
            "samples": sampler.samples}


def show(r: dict) -> dict[str, bool]:
    """One line per figure (per-process memory lines before (2)); the verdicts."""
    status, mem, rd, ck = dict(r["status"]), r["memory"], r["redis"], r["check"]
    bare = status.pop("python -c pass")
    ok1 = all(v["median"] < 1 for v in status.values()) and not r["status_errors"]
    print("(1) status under load: " + "; ".join(
        f"`ciq {k}` median {v['median']:.2f} s, max {v['max']:.2f} s (idle {v['idle_median']:.2f}"
        " s)" for k, v in status.items()) + f"; bare `python -c pass` median {bare['median']:.2f}"
        f" s, max {bare['max']:.2f} s (idle {bare['idle_median']:.2f} s); {len(bare['all'])} "
        f"rounds, {len(r['status_errors'])} errors - target median < 1 s: "
        f"{'PASS' if ok1 else 'FAIL'}", flush=True)
    for label, m in mem.items():
        print(f"    rss {label:<18} first {m['first']:6.1f}  max {m['max']:6.1f}  last "
              f"{m['last']:6.1f} MB  last/first {m['last_over_first']:.2f}  last/half-way "
              f"{m['last_over_half']:.2f}")
    procs = {k: v for k, v in mem.items() if k.startswith("w") and not k.endswith("children")}
    worst = max(procs, key=lambda k: procs[k]["last_over_half"])
    ok2 = procs[worst]["last_over_half"] <= 1.10

    def total(kind: str, key: str) -> float:
        return sum(v[key] for k, v in mem.items() if k.endswith(kind))

    print(f"(2) memory: worker mains {total('main', 'first'):.0f} -> {total('main', 'last'):.0f}"
          f" MB, their pool processes {total('children', 'first'):.0f} -> "
          f"{total('children', 'last'):.0f} MB (sums over {r['workers']} workers), redis-server "
          f"{mem['redis-server']['first']:.1f} -> {mem['redis-server']['last']:.1f} MB; worker "
          f"process growing most after half-way: {worst} x{procs[worst]['last_over_half']:.2f}"
          f" - flat (<= x1.10): {'PASS' if ok2 else 'FAIL'}", flush=True)
    u = {k: v["used_memory"] / 1e6 for k, v in rd["info"].items()}
    print(f"(3) redis: used_memory {u['before']:.2f} -> {u['submitted']:.2f} (queued) -> "
          f"{u['reported']:.2f} (reported) -> {u['drained']:.2f} MB (drained): "
          f"{rd['per_commit_bytes']:.0f} B per stored commit (dataset "
          f"{rd['dataset_per_commit_bytes']:.0f} B; {rd['queued_per_commit_bytes']:.0f} B per "
          f"queued one); MEMORY USAGE: all keys {rd['all_keys_per_commit_bytes']:.0f} B per "
          f"commit, a report key {rd['report_key_bytes']:.0f} B, a ciq:commit hash "
          f"{rd['commit_hash_bytes']:.0f} B", flush=True)
    runs = ", ".join(f"{k} {v:.2f} s" for k, v in ck["run_median_s"].items())
    print(f"(4) throughput: {r['commits']} commits in {r['total_s']:.1f} s on {r['workers']} "
          f"workers = {r['rate']:.2f} commits/s (submit {r['submit_s']:.2f} s; median run: "
          f"{runs}); reports {ck['reports']}, report keys {ck['report_keys']}, attempts "
          f"{ck['attempts']}, {ck['statuses']}, by worker {ck['by_worker']}, "
          f"{len(r['worker_log_problems'])} warnings in worker logs - one report each "
          f"at attempt 1: {'PASS' if ck['pass'] else 'FAIL'}", flush=True)
    return {"1": ok1, "2": ok2, "4": ck["pass"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=500, metavar="N", help="(500)")
    parser.add_argument("--workers", type=int, default=4, metavar="N", help="(4)")
    parser.add_argument("--quick", action="store_true", help="50 commits (smoke test)")
    args = parser.parse_args()
    n = 50 if args.quick else args.commits
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install -y redis-server)")
        return 2
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    info = {"python": platform.python_version(), "celery": importlib.metadata.version("celery"),
            "redis-server": server.stdout.split("v=")[1].split()[0],
            "nproc": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg()[0]}
    print(f"ciq load bench: {n} commits, {args.workers} workers; " + ", ".join(
        f"{k} {v}" for k, v in info.items()) + (" (quick)" if args.quick else ""), flush=True)
    results: dict = {"versions": info, "quick": args.quick, "started": time.time()}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` runs
    w = World()
    try:
        results["load"] = run(w, n, args.workers)
    except BaseException:
        show_worker_logs(w.root)
        raise
    finally:
        out = save_results("load", results, w.close())
    verdicts = show(results["load"])
    print("summary: " + ", ".join(f"({k}) {'PASS' if v else 'FAIL'}" for k, v in
                                  verdicts.items()) + f"; raw numbers in {out}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
