"""How long a scrape of `ciq web`'s /metrics takes with 10 repositories of history.

Run ``python bench/metrics.py [--scrapes N]``. A private redis-server on a free port of
127.0.0.1 gets 10 repositories of 500 reported commits each, written as workers write
them (claim, lease, final report: the counters and histograms are kept by those steps),
1000 more commits waiting on the queue (the oldest-waiting gauge reads each one) and 20
announced workers; a real `ciq web` subprocess serves /metrics, which is fetched N times
(50 by default) after a warm-up. The median, p95 and worst times are printed against the
50 ms target and saved to ``bench/results/metrics.json``, with the time of the Redis
reads alone (in this process) and the size of the answer. Everything started here is
stopped by pid.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis
from harness import (
    free_port,
    kill_leftovers,
    save_results,
    start_redis,
    stop_process,
    wait_until_served,
)

from ciq.dispatch import Sender
from ciq.report import Report, Summary
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.scrape import Reader
from ciq.store.shards import Shards

REPOS, COMMITS, WAITING, WORKERS = 10, 500, 1000, 20
TARGET_MS = 50.0


def fill(store: Store, settings: Settings) -> None:
    """REPOS repositories of COMMITS reported commits, WAITING more on the queue."""
    sender = Sender.for_store(settings, store)
    statuses = ("passed",) * 8 + ("failed", "error")
    for r in range(REPOS):
        repo = f"https://git.example.org/team/project{r}.git"
        for i in range(COMMITS):
            sha = hashlib.sha1(f"{r}:{i}".encode()).hexdigest()
            sender.submit(repo, sha, "main")
            store.acquire(repo, sha, f"run-{r}-{i}", 60.0, f"w{i % WORKERS}@host")
            store.finish(Report(
                repo=repo, commit=sha, status=statuses[i % len(statuses)], branch="main",
                summary=Summary(total=100, passed=100), duration=5.0 + i % 50,
                worker="w1@host", environment={"cache_hit": i % 7 != 0},
                timings={"setup": 0.2 if i % 7 else 30.0},
                shards={"imbalance": 1.0 + (i % 9) / 10} if i % 3 == 0 else {}))
    for i in range(WAITING):
        sender.submit(f"https://git.example.org/team/project{i % REPOS}.git",
                      hashlib.sha1(f"waiting:{i}".encode()).hexdigest(), "main")
    shards = Shards(store, 5.0, 900.0, 65536)
    for w in range(WORKERS):
        shards.announce(f"w{w}@host", [settings.queue], 4)


def ms(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ciq-bench-metrics-"))
    redis_port, web_port = free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    procs: list[subprocess.Popen] = []
    results: dict[str, object] = {"repos": REPOS, "commits_per_repo": COMMITS,
                                  "waiting": WAITING, "workers": WORKERS,
                                  "target_ms": TARGET_MS}
    try:
        procs.append(start_redis(root / "redis", redis_port, redis.Redis(port=redis_port)))
        settings = Settings(broker_url=url, result_backend=url, data_dir=root / "data")
        store = Store.from_url(url)
        t0 = time.perf_counter()
        fill(store, settings)
        print(f"filled {REPOS} repositories x {COMMITS} reported commits, {WAITING} waiting, "
              f"{WORKERS} workers in {time.perf_counter() - t0:.1f}s")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CIQ_", "CELERY_"))}
        env.update(CIQ_BROKER_URL=url, CIQ_DATA_DIR=str(root / "data"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ciq", "web", "--port", str(web_port)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        base = f"http://127.0.0.1:{web_port}"
        wait_until_served(base + "/healthz")

        reader = Reader(store.client, store.client, settings.queue)
        reads = []
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            reader.read()
            reads.append(time.perf_counter() - t0)
        scrapes, size = [], 0
        for i in range(args.scrapes + 5):  # the first few warm the server up
            t0 = time.perf_counter()
            body = urllib.request.urlopen(base + "/metrics", timeout=10).read()
            if i >= 5:
                scrapes.append(time.perf_counter() - t0)
            size = len(body)
        results["scrape"] = ms(scrapes)
        results["redis_reads"] = ms(reads)
        results["bytes"] = size
        results["series"] = sum(1 for line in body.decode().splitlines()
                                if line and not line.startswith("#"))
        s, r = results["scrape"], results["redis_reads"]
        print(f"/metrics over HTTP, {args.scrapes} scrapes: median {s['median_ms']:.1f} ms, "
              f"p95 {s['p95_ms']:.1f} ms, max {s['max_ms']:.1f} ms "
              f"({results['series']} series, {size} bytes)")
        print(f"  of which the Redis reads (in process): median {r['median_ms']:.1f} ms")
        verdict = "within" if s["median_ms"] <= TARGET_MS else "OVER"
        print(f"target <= {TARGET_MS:.0f} ms with {REPOS} repositories: {verdict}")
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        leaks = kill_leftovers(root, 5)
        shutil.rmtree(root, ignore_errors=True)
    print(f"saved {save_results('metrics', results, leaks)}")


if __name__ == "__main__":
    main()
