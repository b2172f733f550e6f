"""Likely failures first: time to first failure and full run time, ordered against not.

Run ``python bench/ordering.py [--trials N] [--files N] [--tests N] [--sleep S]``. A
private redis-server on a free port of 127.0.0.1 and one real ``celery -A ciq worker``
(configured only through ``CIQ_*`` variables) test two generated repositories alike in
all but their `order` setting: ``order = "none"`` (pytest's own order, the baseline) and
the default, likely failures first. Each holds a package of ``--files`` modules (40) and
as many test files of ``--tests`` tests (5) that each sleep ``--sleep`` seconds (0.04):
test file ``k`` imports module ``k`` and module ``k + files/2`` (each module is imported
by two files, 5 % of the suite, whose first tests check it). Each trial, in both
repositories: a commit that breaks one module drawn at random (seeded: the same one in
both), then one that fixes it. The first trial, which builds the environment and the
durations, is a warm-up.

Figures: from the enqueue of a breaking commit to its first failure seen in Redis (as
`ciq report --watch` and the first-failure notification see it), and the test phase of
the fixing commits (every test passes: the whole suite's time, ordered or not). Medians
and ratios are printed and saved to ``bench/results/ordering.json``. Everything started
here is stopped by pid.
"""

from __future__ import annotations

import argparse
import random
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
RUN_TIMEOUT = 300.0


def suite(files: int, tests: int, sleep: float, order: str | None) -> dict[str, str]:
    """The package and its tests; ``order``: the repository's `order` setting."""
    out = {"app/__init__.py": "", **{f"app/m{k}.py": "VALUE = 1\n" for k in range(files)}}
    half = files // 2
    for k in range(files):
        other = (k + half) % files
        # The first test of a file checks its modules: a break fails two tests (each of
        # them then rerun to tell a flake, which only the report waits for).
        body = f"import time\n\nfrom app import m{k}, m{other}\n\n" + "".join(
            f"def test_{k}_{n}():\n    time.sleep({sleep})\n"
            + (f"    assert m{k}.VALUE == 1 and m{other}.VALUE == 1\n" if not n else "")
            + "\n" for n in range(tests))
        out[f"tests/test_f{k:03d}.py"] = body
    if order:
        out["ciq.toml"] = f'order = "{order}"\n'
    return out


def one_run(store: Store, sender: Sender, path: Path, repo: str,
            files: dict[str, str], message: str) -> dict[str, Any]:
    """Commit, enqueue and time one run: seconds from the enqueue to the first failure
    seen in Redis (None if it passed) and to the report."""
    sha = commit(path, files, message)
    t0 = time.perf_counter()
    assert sender.submit(repo, sha, "main")
    seen = None
    while True:
        now = time.perf_counter()
        if seen is None and first_failure(store, repo, sha):
            seen = now - t0
        report = store.report(repo, sha)
        if report is not None:
            break
        if now - t0 > RUN_TIMEOUT:
            raise RuntimeError(f"no report of {sha[:12]} after {RUN_TIMEOUT:g}s")
        time.sleep(POLL)
    return {"commit": sha, "status": report.status, "first_failure_s": seen,
            "report_s": round(time.perf_counter() - t0, 3),
            "test_s": report.timings.get("test"), "total_tests": report.summary.total,
            "failed": report.summary.failed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="trials timed (plus a warm-up)")
    parser.add_argument("--files", type=int, default=40, help="modules and test files")
    parser.add_argument("--tests", type=int, default=5, help="tests per file")
    parser.add_argument("--sleep", type=float, default=0.04, help="seconds each test sleeps")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results: dict[str, Any] = {"trials": args.trials, "files": args.files, "tests": args.tests,
                               "sleep_s": args.sleep, "seed": args.seed, "poll_s": POLL}
    modes = {"none": "none", "likely-failures": None}  # the default needs no setting
    with cluster("ordering") as c:
        root, url, store = c.root, c.url, c.store
        c.worker()
        settings = Settings(broker_url=url, result_backend=url, data_dir=root / "data")
        sender = Sender.for_store(settings, store)
        repos: dict[str, tuple[Path, str]] = {}
        for mode, setting in modes.items():
            path = root / f"repo-{mode}"
            path.mkdir()
            git(path, "init", "-q", "-b", "main")
            repo = normalise_repo(str(path))
            repos[mode] = (path, repo)
            one_run(store, sender, path, repo, suite(args.files, args.tests, args.sleep,
                                                     setting), "initial")
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for trial in range(args.trials + 1):
            broken = rng.randrange(args.files)
            for mode, (path, repo) in repos.items():
                bad = one_run(store, sender, path, repo, {f"app/m{broken}.py": "VALUE = 0\n"},
                              f"break m{broken}")
                good = one_run(store, sender, path, repo, {f"app/m{broken}.py": "VALUE = 1\n"},
                               f"fix m{broken}")
                print(f"trial {trial}{' (warm-up)' if not trial else ''} {mode:>15}: "
                      f"m{broken} broken: first failure {bad['first_failure_s']:.2f}s, report "
                      f"{bad['report_s']:.2f}s ({bad['failed']} failed); fixed: tests "
                      f"{good['test_s']:.2f}s ({good['status']})", flush=True)
                if trial:
                    runs[mode].append({"broken": broken, "break": bad, "fix": good})
        summary: dict[str, Any] = {}
        for mode, each in runs.items():
            summary[mode] = {
                "median_first_failure_s": round(statistics.median(
                    r["break"]["first_failure_s"] for r in each), 3),
                "median_full_test_s": round(statistics.median(
                    r["fix"]["test_s"] for r in each), 3),
                "median_break_report_s": round(statistics.median(
                    r["break"]["report_s"] for r in each), 3)}
        on, off = summary["likely-failures"], summary["none"]
        lower = 1 - on["median_first_failure_s"] / off["median_first_failure_s"]
        ratio = on["median_full_test_s"] / off["median_full_test_s"]
        results.update(each=runs, summary=summary, first_failure_lower=round(lower, 3),
                       full_run_ratio=round(ratio, 3))
        print(f"median time to first failure: {on['median_first_failure_s']:.2f}s ordered, "
              f"{off['median_first_failure_s']:.2f}s not ({lower:.0%} lower; target >= 50%)")
        print(f"median full test run: {on['median_full_test_s']:.2f}s ordered, "
              f"{off['median_full_test_s']:.2f}s not ({ratio:.3f}x; target <= 1.05x)")
    print(f"saved {save_results('ordering', results, c.leaks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
