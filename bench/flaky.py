"""What telling a flake from a break costs: rerun seconds per failing commit, and the time
from the failing run's end to the verdict, with a free worker and with none.

Run ``python bench/flaky.py [--runs N] [--test-seconds S]``. A private redis-server on a
free port of 127.0.0.1 and real ``celery -A ciq worker`` processes (configured only
through ``CIQ_*`` variables) test a generated repository: 20 passing tests of 0.05 s and
one test that sleeps ``--test-seconds`` (0.5) and fails on the first run of each commit
only (a flake). Each of ``--runs`` commits (3 by default, after a warm-up that builds the
environment) is enqueued as the observer does; this process polls Redis every 10 ms for
the run's request for reruns (written the moment its run ended with a failure) and for
the report, which carries the verdict. Two set-ups, in the same run of the benchmark:
two workers (the other one is free and makes the reruns) and one worker (none free: it
waits ``TAKE_WAIT`` and makes them itself). The figures: the time from the failing
run's end to the verdict, against the target of 10 s plus the failing test's own time in
its reruns (the sum of their durations); the report's ``deflake.seconds`` and runs.
Saved to ``bench/results/flaky.json``; everything started here is stopped by pid.
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
    start_worker,
    stop_process,
)

from ciq.dispatch import Sender
from ciq.gitrepo import normalise_repo
from ciq.settings import Settings
from ciq.store import Store

POLL = 0.01
RUN_TIMEOUT = 180.0
#: The verdict's target: this many seconds plus the failing test's own time.
TARGET = 10.0


def suite(shared: Path, salt: int, seconds: float) -> dict[str, str]:
    mark = shared / f"flaked-{salt}"
    quick = "".join(f"def test_quick_{i}():\n    pass\n\n" for i in range(20))
    return {
        "tests/test_a_quick.py": "import time\n\n" + quick.replace(
            "    pass", "    time.sleep(0.05)"),
        "tests/test_b_flaky.py": f"""\
import pathlib, time

MARK = pathlib.Path({str(mark)!r})

def test_flaky():
    time.sleep({seconds})
    first = not MARK.exists()
    MARK.touch()
    assert not first, "first run of commit {salt}"
""",
    }


def one_run(store: Store, sender: Sender, path: Path, repo: str, shared: Path, n: int,
            seconds: float) -> dict[str, Any]:
    sha = commit(path, suite(shared, n, seconds), f"run {n}")
    t0 = time.perf_counter()
    assert sender.submit(repo, sha, "main")
    asked = None
    deadline = t0 + RUN_TIMEOUT
    while (report := store.report(repo, sha)) is None:
        now = time.perf_counter()
        if asked is None and next(store.client.scan_iter("ciq:rerun:*", count=100), None):
            asked = now
        if now > deadline:
            raise RuntimeError(f"no report of {sha[:12]} after {RUN_TIMEOUT:g}s")
        time.sleep(POLL)
    done = time.perf_counter()
    flaked = next(t for t in report.tests if t.id.endswith("test_flaky"))
    own = sum(a.duration for a in flaked.attempts[1:])
    verdict = done - asked if asked is not None else float("nan")
    return {"commit": sha, "status": report.status, "verdict": flaked.verdict,
            "report_s": round(done - t0, 3), "verdict_s": round(verdict, 3),
            "own_test_s": round(own, 3), "target_s": round(TARGET + own, 3),
            "rerun_seconds": report.deflake.get("seconds"),
            "rerun_runs": report.deflake.get("runs"),
            "rerun_workers": report.deflake.get("workers"), "worker": report.worker}


def scenario(root: Path, env: dict[str, str], store: Store, url: str, workers: int,
             runs: int, seconds: float) -> dict[str, Any]:
    procs = [start_worker(root, env, f"w{i + 1}") for i in range(workers)]
    try:
        path = root / f"repo-{workers}"
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        repo = normalise_repo(str(path))
        settings = Settings(broker_url=url, result_backend=url, data_dir=root / "data")
        sender = Sender.for_store(settings, store)
        shared = root / "shared"
        one_run(store, sender, path, repo, shared, 1000 * workers, seconds)  # warm-up
        each = []
        for n in range(runs):
            run = one_run(store, sender, path, repo, shared, 1000 * workers + n + 1, seconds)
            each.append(run)
            print(f"  {workers} worker(s), commit {n + 1}: {run['status']} "
                  f"({run['verdict']}), verdict {run['verdict_s']:.2f}s after the failing "
                  f"run (target {run['target_s']:.2f}s), reruns {run['rerun_seconds']}s in "
                  f"{run['rerun_runs']} runs on {run['rerun_workers']} (ran on "
                  f"{run['worker']})")
        verdict = statistics.median(r["verdict_s"] for r in each)
        target = statistics.median(r["target_s"] for r in each)
        cost = statistics.median(float(r["rerun_seconds"] or 0.0) for r in each)
        return {"workers": workers, "each": each, "median_verdict_s": round(verdict, 3),
                "median_target_s": round(target, 3), "median_rerun_seconds": round(cost, 3),
                "meets_target": verdict <= target}
    finally:
        for proc in procs:
            stop_process(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="commits timed per set-up")
    parser.add_argument("--test-seconds", type=float, default=0.5,
                        help="seconds the flaky test takes")
    args = parser.parse_args()
    results: dict[str, Any] = {"runs": args.runs, "test_seconds": args.test_seconds}
    with cluster("flaky") as c:
        root, url, store = c.root, c.url, c.store
        (root / "shared").mkdir()
        c.env["CIQ_BOX_SHARED"] = str(root / "shared")
        for workers in (2, 1):
            got = scenario(root, c.env, store, url, workers, args.runs, args.test_seconds)
            results[f"workers_{workers}"] = got
            print(f"{workers} worker(s): verdict {got['median_verdict_s']:.2f}s after the "
                  f"failing run (median; target {got['median_target_s']:.2f}s: "
                  f"{'met' if got['meets_target'] else 'NOT met'}), rerun cost "
                  f"{got['median_rerun_seconds']:.2f}s per failing commit")
    print(f"saved {save_results('flaky', results, c.leaks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
