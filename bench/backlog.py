"""The newest commit's latency under a backlog, with and without the supersede policies.

Run ``python bench/backlog.py [--rounds N] [--backlog N]``. A private redis-server on a
free port of 127.0.0.1 and one real ``celery -A ciq worker`` (configured only through
``CIQ_*`` variables) test a generated repository. Each round: a commit whose test
sleeps 3 s keeps the only worker busy; meanwhile ``--backlog`` commits (5) are pushed,
then the round waits for every report. Measured, from the Redis records: the seconds the
newest commit waited once the worker was free (its start less the busy commit's end),
and from its claim to its report. Three set-ups in the same run: ``main`` with
``supersede_default = "none"`` (the baseline: every commit in push order), ``main``
with the default ``deprioritise`` (the newest first, the rest from the backfill), and a
feature branch with the default ``cancel`` (older ones cancelled; the running one
stopped). Medians over ``--rounds`` rounds (3) are printed and saved to
``bench/results/backlog.json``; everything started here is stopped by pid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import (
    cluster,
    commit,
    git,
    save_results,
    wait_for,
)

from ciq.dispatch import Sender
from ciq.gitrepo import normalise_repo
from ciq.settings import Settings
from ciq.store import Store, keys

BUSY = {"tests/test_b.py": "import time\n\ndef test_b():\n    time.sleep(3)\n"}
QUICK = {"tests/test_b.py": "def test_b():\n    pass\n"}


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def one_round(store: Store, sender: Sender, path: Path, repo: str, branch: str,
              n: int, backlog: int) -> dict[str, Any]:
    git(path, "checkout", "-q", "-B", branch)
    busy = commit(path, {**BUSY, "n.txt": f"busy {n}"}, f"busy {n}")
    assert sender.submit(repo, busy, branch)
    wait_for(lambda: store.commit(repo, busy).get("started_at"), 60, "the busy commit", 0.01)
    shas = [commit(path, {**QUICK, "n.txt": f"{n}-{i}"}, f"c{i}") for i in range(backlog)]
    for sha in shas:
        assert sender.submit(repo, sha, branch)
    reports = {c: wait_for(lambda c=c: store.report(repo, c), 120, "a report", 0.02)
               for c in [busy, *shas]}
    newest = reports[shas[-1]]
    free = at(reports[busy].finished_at)
    claimed = float(store.commit(repo, shas[-1])["enqueued_us"]) / 1e6
    return {"statuses": [reports[c].status for c in [busy, *shas]],
            "newest_waited_s": round(at(newest.started_at) - free, 3),
            "newest_claim_to_report_s": round(at(newest.finished_at) - claimed, 3),
            "all_reported_s": round(max(at(r.finished_at) for r in reports.values())
                                    - claimed, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, Any] = {"rounds": args.rounds, "backlog": args.backlog}
    with cluster("backlog") as c:
        root, url, store = c.root, c.url, c.store
        c.worker()
        path = root / "repo"
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        commit(path, {"tests/test_a.py": "def test_a():\n    pass\n", **QUICK}, "init")
        repo = normalise_repo(str(path))
        sender = Sender.for_store(Settings(broker_url=url, result_backend=url,
                                           data_dir=root / "data"), store)
        setups = [("main, none", "main", {"supersede_default": "none"}),
                  ("main, deprioritise", "main", None),
                  ("feature, cancel", "feature", None)]
        one_round(store, sender, path, repo, "main", 0, 1)  # warm-up: builds the env
        for n, (name, branch, config) in enumerate(setups, start=1):
            if config:
                store.set_repo_config(repo, "bench.toml", config)
            else:
                store.client.hdel(keys.REPO_CONFIG, keys.repo_id(repo))
            each = [one_round(store, sender, path, repo, branch, 10 * n + r, args.backlog)
                    for r in range(args.rounds)]
            got = {key: statistics.median(e[key] for e in each)
                   for key in ("newest_waited_s", "newest_claim_to_report_s", "all_reported_s")}
            results[name] = {"each": each, **got}
            print(f"{name}: the newest of {args.backlog} queued commits started "
                  f"{got['newest_waited_s']:.2f}s after the worker was free, reported "
                  f"{got['newest_claim_to_report_s']:.2f}s after its claim; all reported "
                  f"{got['all_reported_s']:.2f}s after it (median of {args.rounds}); "
                  f"statuses {each[-1]['statuses']}")
    print(f"saved {save_results('backlog', results, c.leaks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
