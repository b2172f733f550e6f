"""How fast `ciq web` answers over a long history.

Run ``python bench/web.py``. A private redis-server on a free port of 127.0.0.1 gets
1000 reported commits of one repository (200 tests each, written as workers write them:
claim, then finish); a real `ciq web` subprocess serves them; each page is fetched 20
times and the median and worst times are printed and saved to ``bench/results/web.json``.
Everything started here is stopped by pid.
"""

from __future__ import annotations

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

from harness import free_port, kill_leftovers, save_results, stop_process, wait_until_served

from ciq.report import Report, Summary, TestResult
from ciq.store import Store
from ciq.store.keys import repo_id

REPO = "/srv/git/lib"
COMMITS, TESTS, TRIES = 1000, 200, 20


def fill(store: Store) -> str:
    """COMMITS reports on main; every 97th test outcome fails. Returns the newest SHA."""
    sha = ""
    for i in range(COMMITS):
        sha = hashlib.sha1(str(i).encode()).hexdigest()
        store.claim(REPO, sha, "main", {"subject": f"commit {i}", "author": "Dev"})
        tests = tuple(TestResult(f"tests/test_m{j % 20}.py::test_{j}",
                                 "failed" if (i + j) % 97 == 0 else "passed", 0.01)
                      for j in range(TESTS))
        failed = any(t.outcome == "failed" for t in tests)
        store.finish(Report(repo=REPO, commit=sha, status="failed" if failed else "passed",
                            branch="main", tests=tests, summary=Summary.of(list(tests)),
                            duration=1.0, worker="w1"))
    return sha


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="ciq-bench-web-"))
    redis_port, web_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    results: dict[str, dict[str, float]] = {}
    try:
        procs.append(subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
             "--bind", "127.0.0.1", "--save", "", "--dir", str(root)],
            stdout=subprocess.DEVNULL, start_new_session=True))
        url = f"redis://127.0.0.1:{redis_port}/0"
        time.sleep(0.3)
        store = Store.from_url(url)
        newest = fill(store)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CIQ_", "CELERY_"))}
        env.update(CIQ_BROKER_URL=url, CIQ_DATA_DIR=str(root / "data"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ciq", "web", "--port", str(web_port)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        base = f"http://127.0.0.1:{web_port}"
        wait_until_served(base + "/healthz")
        rid = repo_id(REPO)
        pages = ["/", f"/repos/{rid}", f"/repos/{rid}?page=20",
                 f"/repos/{rid}/commits/{newest}", f"/repos/{rid}/tests",
                 f"/api/repos/{rid}/commits", f"/api/repos/{rid}/commits/{newest}",
                 f"/badge/{rid}/main.svg"]
        print(f"{COMMITS} commits of {TESTS} tests; {TRIES} fetches per page")
        for path in pages:
            times = []
            for _ in range(TRIES):
                t0 = time.perf_counter()
                urllib.request.urlopen(base + path, timeout=10).read()
                times.append(time.perf_counter() - t0)
            results[path] = {"median_ms": round(statistics.median(times) * 1000, 1),
                             "max_ms": round(max(times) * 1000, 1)}
            print(f"{path:72s} median {results[path]['median_ms']:6.1f} ms"
                  f"  max {results[path]['max_ms']:6.1f} ms")
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        leaks = kill_leftovers(root, 5)
        shutil.rmtree(root, ignore_errors=True)
    print(f"saved {save_results('web', {'pages': results}, leaks)}")


if __name__ == "__main__":
    main()
