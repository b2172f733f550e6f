"""Time to first failure against time to report, on a suite with an early failure.

Run ``python bench/live.py [--runs N] [--tests N] [--sleep S]``. A private redis-server
on a free port of 127.0.0.1 and one real ``celery -A ciq worker`` (configured only
through ``CIQ_*`` variables) test a generated repository: one failing test first, then
``--tests`` tests (50 by default) that each sleep ``--sleep`` seconds (0.2), so a run
takes about 10 s. Each of ``--runs`` commits (5 by default; the first one, which builds
the run's environment, is a warm-up and is not counted) is enqueued as the observer
does, and this process polls Redis every 10 ms for the commit's first failure (what
`ciq report --watch`, the web's live view and the `first-failure` notification read)
and for its report. The medians from the enqueue to each, their ratio, and the
report's own `timings["first_failure"]` (seconds from the run's start) are printed and
saved to ``bench/results/live.json``. Everything started here is stopped by pid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    cluster,
    commit,
    git,
    save_results,
)

from ciq.dispatch import Sender
from ciq.gitrepo import normalise_repo
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.live import first_failure

#: Seconds between two looks at Redis (the resolution of the figures).
POLL = 0.01
#: Seconds one run may take before the benchmark gives up.
RUN_TIMEOUT = 180.0


def suite(tests: int, sleep: float, salt: int) -> dict[str, str]:
    """A failing test first (pytest runs files in order), then the slow passing ones;
    ``salt`` makes each commit new without touching the environment's inputs."""
    slow = "import time\n\n" + "".join(
        f"def test_slow_{i}():\n    time.sleep({sleep})\n\n" for i in range(tests))
    return {"tests/test_a_early.py": f"# run {salt}\ndef test_fails():\n"
                                     "    assert 1 == 2, 'early on purpose'\n",
            "tests/test_b_slow.py": slow}


def one_run(store: Store, sender: Sender, path: Path, repo: str, n: int, tests: int,
            sleep: float) -> dict[str, Any]:
    """Commit, enqueue and time one run: seconds from the enqueue to the first failure
    seen in Redis and to the report seen stored."""
    sha = commit(path, suite(tests, sleep, n), f"run {n}")
    t0 = time.perf_counter()
    assert sender.submit(repo, sha, "main")
    seen_failure = None
    deadline = t0 + RUN_TIMEOUT
    while True:
        now = time.perf_counter()
        if seen_failure is None and first_failure(store, repo, sha):
            seen_failure = now - t0
        report = store.report(repo, sha)
        if report is not None:
            break
        if now > deadline:
            raise RuntimeError(f"no report of {sha[:12]} after {RUN_TIMEOUT:g}s")
        time.sleep(POLL)
    to_report = time.perf_counter() - t0
    if seen_failure is None:  # it came with the report (it should not)
        seen_failure = to_report if first_failure(store, repo, sha) else float("nan")
    return {"commit": sha, "status": report.status, "first_failure_s": round(seen_failure, 3),
            "report_s": round(to_report, 3), "run_duration_s": report.duration,
            "timings_first_failure_s": report.timings.get("first_failure"),
            "total_tests": report.summary.total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="commits timed (plus a warm-up)")
    parser.add_argument("--tests", type=int, default=50, help="slow tests after the failure")
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds each slow test sleeps")
    args = parser.parse_args()
    results: dict[str, Any] = {"runs": args.runs, "slow_tests": args.tests,
                               "sleep_s": args.sleep, "poll_s": POLL}
    with cluster("live") as c:
        root, url, store = c.root, c.url, c.store
        c.worker()
        path = root / "repo"
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        repo = normalise_repo(str(path))
        settings = Settings(broker_url=url, result_backend=url, data_dir=root / "data")
        sender = Sender.for_store(settings, store)

        warm = one_run(store, sender, path, repo, 0, args.tests, args.sleep)
        print(f"warm-up (builds the environment): first failure {warm['first_failure_s']:.2f}s, "
              f"report {warm['report_s']:.2f}s")
        runs = []
        for n in range(1, args.runs + 1):
            run = one_run(store, sender, path, repo, n, args.tests, args.sleep)
            runs.append(run)
            print(f"run {n}: first failure {run['first_failure_s']:.2f}s, report "
                  f"{run['report_s']:.2f}s ({run['status']}, {run['total_tests']} tests, "
                  f"run {run['run_duration_s']:.2f}s, first failure at "
                  f"{run['timings_first_failure_s']}s of it)")
        first = statistics.median(r["first_failure_s"] for r in runs)
        report = statistics.median(r["report_s"] for r in runs)
        in_run = statistics.median(r["timings_first_failure_s"] or 0.0 for r in runs)
        results.update(warm_up=warm, each=runs, median_first_failure_s=round(first, 3),
                       median_report_s=round(report, 3),
                       median_timings_first_failure_s=round(in_run, 3),
                       ratio_report_to_first_failure=round(report / first, 2))
        print(f"median over {len(runs)} runs, from the enqueue: first failure {first:.2f}s, "
              f"report {report:.2f}s; the report comes {report / first:.1f}x later "
              f"({report - first:.1f}s); in the run, the first failure at {in_run:.2f}s")
    print(f"saved {save_results('live', results, c.leaks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
