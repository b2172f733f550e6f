"""Chaos for sharded runs: whole worker hosts killed while commits run in chunks.

Run ``python bench/shardchaos.py [--commits N] [--kills K]``. A private redis-server on
a free port of 127.0.0.1; three worker "hosts" (``celery -A ciq worker -c 2``, each with
its own CIQ_DATA_DIR: mirrors and worktrees of its own), lease TTL 2 s; a repository of
12 tests of 0.4 s that always shards (``shard = "always"`` in its ``ciq.toml``). N
commits are submitted at once; then, every 1.5–3.5 s, one host's whole process group
gets SIGKILL and a new one starts in its place, K times. Checked for every commit: one
final report, status passed, every one of the 12 tests exactly once. Each chunk's
attempts show the reruns. Everything is stopped by pid; figures go to
``bench/results/shardchaos.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import commit, free_port, git, kill_leftovers, save_results, stop_process

from ciq.dispatch import Sender
from ciq.settings import Settings
from ciq.store import Store

TESTS = 12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=8)
    parser.add_argument("--kills", type=int, default=8)
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ciq-shardchaos-"))
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(root)], stdout=subprocess.DEVNULL, start_new_session=True)
    hosts: dict[int, subprocess.Popen] = {}
    kills, elapsed, rows, ok = 0, 0.0, [], False
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIQ_", "CELERY_"))}
    env.update(CIQ_BROKER_URL=url, CIQ_LEASE_TTL="2", CIQ_RECONCILE_INTERVAL="0.5",
               CIQ_ENV_DIR=str(root / "envs"))

    def start(n: int) -> None:
        with open(root / f"worker-{n}.log", "ab") as log:
            hosts[n] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "ciq", "worker", "-c", "2",
                 f"--hostname=host{n}@%h", "--without-mingle", "--without-gossip"],
                env={**env, "CIQ_DATA_DIR": str(root / f"host{n}")}, cwd=root, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    try:
        time.sleep(0.5)
        store = Store.from_url(url)
        repo = root / "repo"
        (repo / "tests").mkdir(parents=True)

        git(repo, "init", "-q", "-b", "main")
        for i in range(TESTS):
            (repo / f"tests/test_{i}.py").write_text(
                f"import time\n\n\ndef test_{i}():\n    time.sleep(0.4)\n")
        (repo / "ciq.toml").write_text('shard = "always"\n')
        for n in range(3):
            start(n)
        deadline = time.monotonic() + 60
        while store.client.hlen("ciq:workers") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        sender = Sender.for_store(
            Settings(broker_url=url, result_backend=url, data_dir=root / "observer"), store)
        shas = []
        for k in range(opts.commits):
            (repo / "round.txt").write_text(str(k))
            shas.append(commit(repo, {}, f"round {k}"))
            sender.submit(str(repo), shas[-1], "main")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            if all(store.report(str(repo), s) for s in shas):
                break
            time.sleep(random.uniform(1.5, 3.5))
            if kills < opts.kills:
                n = random.randrange(3)
                os.killpg(hosts[n].pid, signal.SIGKILL)
                hosts[n].wait()
                kills += 1
                start(n)
        elapsed = round(time.monotonic() - t0, 1)
        ok = True
        for sha in shas:
            r = store.report(str(repo), sha)
            ids = [t.id for t in r.tests] if r else []
            good = bool(r) and r.status == "passed" and len(ids) == len(set(ids)) == TESTS
            ok = ok and good
            rows.append({"commit": sha, "status": r.status if r else None,
                         "tests": len(ids), "unique": len(set(ids)),
                         "chunks": r.shards.get("count") if r else None,
                         "attempts": [c.get("attempts") for c in r.shards.get("chunks", [])]
                         if r else [], "ok": good})
            print(f"{sha[:12]}  {rows[-1]['status']!s:7} tests {len(ids):2d} "
                  f"(unique {len(set(ids)):2d})  chunks {rows[-1]['chunks']}  "
                  f"attempts per chunk {rows[-1]['attempts']}")
        print(f"{kills} hosts killed; all {len(shas)} reports in {elapsed} s; "
              f"{'PASS' if ok else 'FAIL'}: every commit passed with each test once")
    finally:
        for proc in hosts.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        stop_process(redis_proc)
        leaks = kill_leftovers(root, 5)
        shutil.rmtree(root, ignore_errors=True)
    save_results("shardchaos", {"kills": kills, "seconds": elapsed, "commits": rows,
                                "pass": ok}, leaks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
