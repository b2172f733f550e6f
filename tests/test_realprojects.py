"""A real open-source project, released sdists turned into a git history, gets the same
per-test results from ciq as from its own instructions run by hand.

The full check (three projects, four releases each) is ``bench/realprojects.py check``;
this runs its smallest meaningful slice in CI: pluggy's last two releases (src layout,
a `testing` extra, setuptools-scm versions from git tags, tests in `testing/`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pluggy_releases_match_by_hand_test_by_test(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "realprojects.py"), "check",
         "--projects", "pluggy", "--last", "2", "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "2 of 2 commits: ciq equals by hand, test by test" in done.stdout
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["version"] for r in rows] == ["1.5.0", "1.6.0"]
    for row in rows:
        first, cached = row["ciq"]
        assert first["summary"]["total"] == row["hand"]["total"] > 100
        assert first["status"] == cached["status"] == "passed"
        # The second pass (another clone of the history) finds every environment built
        assert cached["environment"]["cache_hit"]
        assert cached["environment"]["key"] == first["environment"]["key"]
    assert not rows[0]["ciq"][0]["environment"]["cache_hit"]  # the very first run built it
