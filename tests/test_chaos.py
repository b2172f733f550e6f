"""The chaos run, short: workers (SIGKILL and SIGTERM), observers and Redis are killed
while commits land. The full figure is `python bench/chaos.py`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


@pytest.mark.slow
def test_a_short_chaos_run_loses_nothing_and_never_overlaps() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--seed", "11"],
                          capture_output=True, text=True, timeout=600)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    found = re.match(r"chaos: pushed (\d+), reports (\d+), lost (\d+), overlapping "
                     r"duplicates (\d+), max recovery ([\d.]+)s", last)
    assert found, done.stdout[-3000:] + done.stderr[-3000:]
    pushed, reports, lost, overlapping = map(int, found.groups()[:4])
    recovery = float(found.group(5))
    assert pushed == reports == 16
    assert lost == 0 and overlapping == 0
    # The 10 s target is the benchmark's figure; on a loaded 2-core CI machine this
    # bound only catches a regression like reruns queued behind every new commit.
    assert recovery < 20, last
