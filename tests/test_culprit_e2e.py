"""Culprit finding by real workers: a range of untested commits on `main`, only its last
commit enqueued; the coordinator of the workers' housekeeping bisects it with probes."""

from __future__ import annotations

import html
import os
import signal
import time
from pathlib import Path

import pytest

from ciq.culprit import Search
from ciq.dispatch import Sender
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.culprit import Record, Searches
from ciq.store.keys import repo_id
from ciq.store.shards import Shards
from ciq.worker.culprits import advance

from .helpers import Web, run_ciq, wait_for, wait_report

#: Commits after the last tested one; the regression is at REGRESSION of them (0-based).
RANGE, REGRESSION = 16, 9
GOOD = "def add(a, b):\n    return a + b\n"
BAD = "def add(a, b):\n    return a + b + (a == 2)\n"


def _suite(test_body: str) -> dict[str, str]:
    return {"calc.py": GOOD, "tests/test_calc.py": test_body,
            "tests/test_ok.py": "def test_ok():\n    assert True\n"}


ADDS = "from calc import add\n\ndef test_add():\n    assert add(2, 2) == 4\n"


def _search(store: Store, repo: str, sha: str, timeout: float) -> Record:
    searches = Searches(store)

    def done() -> Record | None:
        record = searches.record(repo, sha)
        return record if record is not None and record.status == "done" else None

    found = wait_for(done, timeout, f"the culprit search of {sha[:12]}")
    assert isinstance(found, Record)
    return found


def _tested_then_range(settings: Settings, store: Store, repo, regression: int | None,
                       last: dict[str, str] | None = None,
                       broken: int | None = None) -> tuple[str, list[str]]:
    """Test the first commit, then add RANGE commits (one breaking calc.add when
    ``regression`` is given, the last one adding the files ``last``, the one at
    ``broken`` making calc.py a syntax error, which the next one mends) and enqueue only
    the last one; (good end, the range)."""
    name = str(repo.path)
    assert run_ciq(settings, "enqueue", name).returncode == 0
    good = repo.head()
    assert wait_report(store, name, good, timeout=90).status in ("passed", "flaky")
    shas = []
    for i in range(RANGE):
        files = {f"notes/n{i}.txt": f"{i}\n"}
        if broken is not None and i == broken:
            files["calc.py"] = "def add(a, b:\n"
        if broken is not None and i == broken + 1:
            files["calc.py"] = GOOD
        if i == regression:
            files["calc.py"] = BAD
        if i == RANGE - 1:
            files.update(last or {})
        shas.append(repo.commit(files, f"change {i}"))
    assert run_ciq(settings, "enqueue", name).returncode == 0
    return good, shas


@pytest.mark.slow
def test_the_regressing_commit_of_an_untested_range_is_named(
        make_repo, worker, store: Store, settings: Settings, web: Web) -> None:
    # Given two workers, a tested commit, then 16 untested commits on main with one that
    # breaks test_add, and only the last one enqueued
    worker("w1")
    worker("w2")
    repo = make_repo(_suite(ADDS))
    name = str(repo.path)
    t0 = time.monotonic()
    good, shas = _tested_then_range(settings, store, repo, REGRESSION)

    # When the last commit's failure is confirmed by its reruns
    failing = wait_report(store, name, shas[-1], timeout=90)
    assert failing.status == "failed"
    assert [t.verdict for t in failing.tests if t.id.endswith("test_add")] == ["confirmed"]

    # Then the workers' coordinator bisects the range and names the regressing commit
    record = _search(store, name, shas[-1], timeout=100)
    assert record.answer is not None, record
    assert record.answer.kind == "culprit", record.to_dict()
    assert record.answer.commits == (shas[REGRESSION],)
    assert record.answer.good == shas[REGRESSION - 1]
    assert record.meta["good_end"] == good and len(record.search.commits) == RANGE
    assert record.tests == ("tests/test_calc.py::test_add",)
    s = record.search
    assert 1 <= s.probes <= s.runs <= 40
    line = record.meta["line"]
    assert line.startswith(f"first bad commit for tests/test_calc.py::test_add: "
                           f"{shas[REGRESSION]}, Dev, {s.probes} probes, {s.runs} runs")
    # only the failing test ran in the probes, on both workers
    assert {e["worker"].split("@")[0] for e in record.log} <= {"w1", "w2"}
    print(f"\n{line} (whole test {time.monotonic() - t0:.0f}s)")

    # and the API shows it from both ends: the failing commit and the culprit
    rid = repo_id(name)
    answer = web.json(f"/api/repos/{rid}/commits/{shas[-1]}/culprit")
    assert answer["search"]["answer"]["commits"] == [shas[REGRESSION]]
    assert answer["search"]["probes"] == s.probes and answer["search"]["runs"] == s.runs
    assert answer["search"]["line"] == line
    blamed = web.json(f"/api/repos/{rid}/commits/{shas[REGRESSION]}/culprit")
    assert blamed["search"] is None and blamed["blamed_by"]["commit"] == shas[-1]
    assert web.get(f"/api/repos/{rid}/commits/{good}/culprit").status == 404
    # and the failing commit's page says it
    page = web.get(f"/repos/{rid}/commits/{shas[-1]}")
    assert page.status == 200 and html.escape(line, quote=False) in page.text


#: test_add with a background flake: one run in five fails at any commit.
FLAKY_ADDS = ADDS + "    import random\n    assert random.random() >= 0.2, 'background flake'\n"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["untestable next to the culprit",
                                  "background flake and an untestable commit"])
def test_untestable_commits_are_skipped_and_flakes_blame_nobody(
        make_repo, worker, store: Store, settings: Settings, case: str) -> None:
    # Given a range where calc.py does not even import at one commit (collection fails:
    # untestable), right before the regression or well before it, and test_add flaking
    # one run in five at good commits in the second case
    worker("w1")
    worker("w2")
    adjacent = case.startswith("untestable")
    repo = make_repo(_suite(ADDS if adjacent else FLAKY_ADDS))
    name = str(repo.path)
    broken = REGRESSION - 1 if adjacent else 3
    _, shas = _tested_then_range(settings, store, repo, REGRESSION, broken=broken)
    assert wait_report(store, name, shas[-1], timeout=90).status == "failed"

    # When the search ends
    record = _search(store, name, shas[-1], timeout=100)
    assert record.answer is not None, record.to_dict()
    print(f"\n{case}: {record.meta['line']}")

    # Then the untestable commit was skipped (if probed at all), never blamed alone
    assert shas[broken] not in record.search.good | set(record.search.fails)
    if adjacent:  # no probe can tell it from the regression: the pair
        assert shas[broken] in record.search.untestable
        assert record.answer.kind == "range", record.to_dict()
        assert record.answer.commits == (shas[broken], shas[REGRESSION])
        assert "one of" in record.meta["line"]
    else:
        assert record.answer.kind == "culprit", record.to_dict()
        assert record.answer.commits == (shas[REGRESSION],)


@pytest.mark.slow
def test_a_failure_that_does_not_reproduce_is_reported_as_a_flake(
        make_repo, worker, store: Store, settings: Settings, tmp_path: Path) -> None:
    # Given a test that fails on its first four runs only (the run and its three reruns:
    # confirmed), on the last commit of an untested range where nothing changed it
    worker("w1")
    worker("w2")
    counter = tmp_path / "shared" / "runs"
    flaky = f"""\
import pathlib

COUNT = pathlib.Path({str(counter)!r})

def test_add():
    if COUNT.parent.is_dir() and len(COUNT.read_text() if COUNT.exists() else "") < 4:
        with COUNT.open("a") as fh:
            fh.write("x")
        raise AssertionError("fails four times")
"""
    repo = make_repo(_suite(ADDS))
    name = str(repo.path)
    _, shas = _tested_then_range(settings, store, repo, None, {"tests/test_calc.py": flaky})
    failing = wait_report(store, name, shas[-1], timeout=90)
    assert failing.status == "failed", failing.message
    assert [t.verdict for t in failing.tests if t.id.endswith("test_add")] == ["confirmed"]

    # When the search probes the failing commit again
    record = _search(store, name, shas[-1], timeout=60)

    # Then it passes there: a flake, nothing bisected, nobody blamed
    assert record.answer is not None and record.answer.kind == "flake", record.to_dict()
    assert shas[-1] in record.search.good and not record.search.fails
    assert "a flake, not bisected" in record.meta["line"]


def test_a_probe_whose_taker_dies_is_sent_again_and_counted_once(store: Store,
                                                                settings: Settings) -> None:
    # Given a search of 8 commits on real Redis, its coordinator's parts, no worker
    repo, commits = "/srv/git/project", tuple(f"{i:040x}" for i in range(1, 9))
    searches = Searches(store)
    sender, shards = Sender.for_store(settings, store), Shards(store, 2.0, 60.0, 1000)
    assert searches.start(repo, commits[-1], "main", ["tests/test_x.py::test_y"],
                          Search(commits), {"good_end": None, "line": ""})
    assert not searches.start(repo, commits[-1], "main", [], Search(commits), {})

    def step() -> Record:
        advance(settings, store, searches, sender, shards, repo, commits[-1])
        found = searches.record(repo, commits[-1])
        assert found is not None
        return found

    # When the coordinator sends its first probe (the failing commit again) and a
    # worker takes it, then dies: its lease lapses with no result
    first = step()
    (pid,) = first.pending
    assert first.pending[pid]["commit"] == commits[-1]
    assert store.client.llen(settings.queue) == 1
    assert searches.probe(repo, commits[-1], pid) == (commits[-1], 1,
                                                      ["tests/test_x.py::test_y"])
    assert searches.take(repo, commits[-1], pid, "w1 a", ttl=0.3) == 1
    assert searches.take(repo, commits[-1], pid, "w2 b", ttl=0.3) == 0
    assert set(step().pending) == {pid}  # a live lease: nothing sent again
    time.sleep(0.4)
    again = step()

    # Then the probe is sent again under a new id; the dead taker's copy is dropped
    (new,) = again.pending
    assert new != pid and again.pending[new]["sends"] == 2
    assert store.client.llen(settings.queue) == 2
    assert not searches.beat(repo, commits[-1], pid, "w1 a", 0.3, {"outcomes": ["failed"]})
    assert searches.take(repo, commits[-1], pid, "w1 a", ttl=0.3) == -1

    # and the result of the new probe is counted once: it passed, a flake
    assert searches.take(repo, commits[-1], new, "w2 c", ttl=2.0) == 1
    assert searches.beat(repo, commits[-1], new, "w2 c", 2.0, {"outcomes": ["passed"],
                                                               "worker": "w2"})
    done = step()
    assert done.status == "done" and done.answer is not None and done.answer.kind == "flake"
    assert done.search.probes == 1 and done.search.runs == 1 and not done.pending
    assert done.log == [{"commit": commits[-1], "outcomes": ["passed"], "worker": "w2",
                         "seconds": None, "message": "", "sends": 2}]
    assert searches.active(10) == []
    assert "a flake, not bisected" in done.meta["line"]


@pytest.mark.slow
def test_a_worker_killed_mid_probe_changes_nothing(make_repo, worker, store: Store,
                                                   settings: Settings, tmp_path: Path) -> None:
    # Given two workers, and a range whose failing commit's test hangs on its fifth run
    # (the run and its three reruns came first: the fifth is the search's first probe)
    workers = {w.name: w for w in (worker("w1"), worker("w2"))}
    count, hung = tmp_path / "shared" / "count", tmp_path / "shared" / "hung"
    hangs = f"""\
import pathlib, time
from calc import add

COUNT, HUNG = pathlib.Path({str(count)!r}), pathlib.Path({str(hung)!r})

def test_add():
    if COUNT.parent.is_dir():
        with COUNT.open("a") as fh:
            fh.write("x")
        if len(COUNT.read_text()) == 5:
            HUNG.touch()
            time.sleep(60)
    assert add(2, 2) == 4
"""
    repo = make_repo(_suite(ADDS))
    name = str(repo.path)
    _, shas = _tested_then_range(settings, store, repo, REGRESSION, {"tests/test_calc.py": hangs})
    assert wait_report(store, name, shas[-1], timeout=90).status == "failed"
    searches = Searches(store)

    # When the worker making the first probe is killed in the middle of it
    def taker() -> str | None:
        record = searches.record(name, shas[-1])
        if record is None or not hung.exists():
            return None
        return next((who.split("@")[0] for pid, who in record.taken.items()
                     if record.pending.get(pid, {}).get("commit") == shas[-1]), None)

    killed = workers[wait_for(taker, 60, "a worker to take the first probe")]
    os.killpg(killed.pid, signal.SIGKILL)

    # Then its probe is sent again and made by the other worker, and the search names
    # the regressing commit all the same
    record = _search(store, name, shas[-1], timeout=100)
    assert record.answer is not None and record.answer.commits == (shas[REGRESSION],)
    again = [e for e in record.log if e["commit"] == shas[-1] and e["sends"] == 2]
    assert len(again) == 1 and not again[0]["worker"].startswith(killed.name), record.log
    assert again[0]["outcomes"][0] == "failed"  # made in full, not cut short


def test_a_probe_message_is_the_one_celery_sends(store: Store, settings: Settings) -> None:
    # Given the same probe sent by Celery's own send_task
    import base64
    import json
    import uuid

    from ciq.celery import create_app
    from ciq.message import PROBE_TASK, probe_message

    repo, sha, pid = "/srv/repo", "a" * 40, uuid.uuid4().hex
    app = create_app(settings)
    app.send_task(PROBE_TASK, args=[repo, sha, pid], task_id=str(uuid.UUID(hex=pid)),
                  queue="q")
    theirs = json.loads(store.client.lpop("q"))
    ours = json.loads(probe_message(repo, sha, pid, "q"))
    # Then the payloads agree on everything but per-send values
    volatile = {"delivery_tag", "reply_to", "argsrepr", "origin"}
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(theirs["body"]))
    for part in ("headers", "properties"):
        assert {k: v for k, v in ours[part].items() if k not in volatile} == {
            k: v for k, v in theirs[part].items() if k not in volatile}, part
    app.close()  # not app.pool.force_close_all(): that pool is kombu's, shared by apps
