"""Likely failures first, end to end: real redis-server, real `celery -A ciq worker`
processes, real git and pytest. The order is read where people see it: the commit's live
stream of outcomes (in the order they happened) and the sharding plan's first chunk."""

from __future__ import annotations

import pytest

from ciq.settings import Settings
from ciq.store import Store
from ciq.store.live import outcomes
from ciq.store.shards import Shards

from .helpers import run_ciq, wait_for, wait_report

pytestmark = pytest.mark.slow

RED = "tests/test_z_red.py::test_red"


def plain(n: int, sleep: float = 0.05) -> dict[str, str]:
    """``n`` passing test files, each named to run before the red one in pytest's order."""
    body = "import time\n\ndef test_{i}():\n    time.sleep({s})\n"
    return {f"tests/test_a{i}.py": body.format(i=i, s=sleep) for i in range(n)}


def enqueue(settings: Settings, path: str) -> str:
    done = run_ciq(settings, "enqueue", path)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def ran(store: Store, repo: str, sha: str) -> list[str]:
    """The ids of the commit's first run in the order their outcomes came (reruns of
    failing tests, by other runs, left out)."""
    entries = [e for _, e in outcomes(store, repo, sha)]
    first = entries[0]["run_id"] if entries else None
    return [e["id"] for e in entries if e["run_id"] == first]


def test_a_test_that_failed_last_time_runs_first(make_repo, worker, store: Store,
                                                 settings: Settings):
    # Given a commit whose last test in pytest's order failed
    repo = make_repo({**plain(4), "tests/test_z_red.py": "def test_red():\n    assert 0\n"})
    path = str(repo.path)
    worker("w1")
    first = wait_report(store, path, enqueue(settings, path))
    assert first.status == "failed"
    assert ran(store, path, first.commit)[-1] == RED  # pytest's order: nothing known yet

    # When the next commit of the branch (an unrelated change) is tested
    sha = repo.commit({"notes.txt": "unrelated\n"})
    report = wait_report(store, path, enqueue(settings, path))

    # Then the red test ran first, and every test still ran
    assert report.commit == sha and report.status == "failed"
    order = ran(store, path, sha)
    assert order[0] == RED and sorted(order) == sorted(t.id for t in first.tests)
    assert report.summary.total == 5


def test_a_change_to_a_module_moves_its_importers_ahead(make_repo, worker, store: Store,
                                                        settings: Settings):
    # Given tests of which two import lib.core (one through lib.mid), named to run last
    files = {
        **plain(5),
        "lib/__init__.py": "", "lib/core.py": "VALUE = 1\n",
        "lib/mid.py": "from lib import core\n\nTWICE = core.VALUE * 2\n",
        "lib/other.py": "OTHER = 1\n",
        "tests/test_x_indirect.py": "from lib.mid import TWICE\n\ndef test_indirect():\n"
                                    "    assert TWICE == 2\n",
        "tests/test_y_user.py": "from lib import core\n\ndef test_user():\n"
                                "    assert core.VALUE == 1\n",
        "tests/test_b_other.py": "import lib.other\n\ndef test_other():\n    pass\n",
    }
    repo = make_repo(files)
    path = str(repo.path)
    worker("w1")
    first = wait_report(store, path, enqueue(settings, path))
    assert first.status == "passed", first.message

    # When a commit changes lib/core.py (and breaks both importers)
    sha = repo.commit({"lib/core.py": "VALUE = 3\n"})
    report = wait_report(store, path, enqueue(settings, path))

    # Then the importers ran before every other test
    assert report.commit == sha and report.status == "failed"
    order = ran(store, path, sha)
    assert set(order[:2]) == {"tests/test_x_indirect.py::test_indirect",
                              "tests/test_y_user.py::test_user"}, order
    assert len(order) == 8


def test_a_sharded_runs_first_chunk_holds_the_test_that_failed_last_time(
    make_repo, worker, store: Store, settings: Settings
):
    # Given two workers and a sharded suite whose red test is last in pytest's order
    repo = make_repo({**plain(6, 0.3), "tests/test_z_red.py": "def test_red():\n"
                      "    assert 0\n", "ciq.toml": 'shard = "always"\n'})
    path = str(repo.path)
    worker("w1"), worker("w2")
    shards = Shards(store, 2, 60, 1000)
    wait_for(lambda: shards.processes("ciq") >= 2, 10, "two workers")
    first = wait_report(store, path, enqueue(settings, path))
    assert first.status == "failed" and first.shards

    # When the next commit is tested
    sha = repo.commit({"notes.txt": "unrelated\n"})
    enqueue(settings, path)
    plan = wait_for(lambda: shards.plan(path, sha), 60, "the plan of the second commit",
                    interval=0.01)

    # Then its first chunk, the one its planning run runs at once, is the red test's
    assert RED in plan.chunks[0] and len(plan.chunks) >= 2
    assert len(plan.chunks[0]) < max(len(c) for c in plan.chunks[1:])
    report = wait_report(store, path, sha)
    assert report.status == "failed" and report.summary.total == 7
    assert report.shards["chunks"][0]["tests"] == len(plan.chunks[0])
