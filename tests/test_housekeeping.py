"""Housekeeping that one bad thing does not stop: the sweep of dead runs, the outbox and
the delivery of notifications each log a damaged record, set it aside and go on with the
others; an unexpected error in a delivery backs off like any failed one. Real files in
temporary folders, the real redis-server of the fixtures, a real webhook receiver."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from ciq.notify.delivery import Deliverer
from ciq.report import Report, Summary, TestResult
from ciq.runner import runs
from ciq.runner.runs import DeadRun, sweep_stale_runs
from ciq.settings import Settings
from ciq.store import Store, outbox
from ciq.store.events import ms, new_event_id
from ciq.store.keys import DEAD, DUE, EVENTS, INFLIGHT, PROGRESS, REPO_CONFIG, commit, repo_id

from .helpers import free_port, sha
from .test_notify import Receiver

HOST = os.uname().nodename
REPO = "/srv/git/app"


# -- The sweep of dead runs -------------------------------------------------------------------

def write_record(data_dir: Path, name: str, text: str | None = None, **fields: Any) -> Path:
    """Run ``name``'s folder with its run.json: a dead run's record unless ``fields`` or
    ``text`` say otherwise (this process's pid, another start time: its worker is gone)."""
    record = {"run_id": name, "repo": REPO, "sha": sha(name), "host": HOST,
              "pid": os.getpid(), "pid_start": "0", **fields}
    folder = runs.runs_dir(data_dir) / name
    (folder / "src").mkdir(parents=True)
    path = folder / "run.json"
    path.write_text(json.dumps(record) if text is None else text)
    return path


def test_damaged_run_records_are_set_aside_once_and_the_good_one_is_cleaned(
    data_dir: Path, caplog: pytest.LogCaptureFixture
):
    # Given a dead run, a live one (started by this process), and damaged records
    good = write_record(data_dir, "good")
    live = runs.start(data_dir, "live", REPO, sha("live")) / "run.json"
    bad = {
        "not JSON": write_record(data_dir, "notjson", "{not json"),
        "empty": write_record(data_dir, "empty", ""),
        "a JSON list": write_record(data_dir, "list", "[1, 2]"),
        "no pid": write_record(data_dir, "nopid", pid=None),
        "pid as text": write_record(data_dir, "pidtext", pid=str(os.getpid())),
        "pid_start a number": write_record(data_dir, "startnum", pid_start=12345),
        "no repo": write_record(data_dir, "norepo", repo=None),
        "another folder's run id": write_record(data_dir, "moved", run_id="../../elsewhere"),
    }
    # When the sweeper runs
    with caplog.at_level(logging.WARNING, logger="ciq.runner.runs"):
        cleaned = sweep_stale_runs(data_dir, HOST)
    # Then the dead run is cleaned, the live one left alone...
    assert cleaned == [DeadRun("good", REPO, sha("good"))]
    assert not good.parent.exists() and live.exists()
    # ...and each damaged record is logged once, with its path, and renamed; its folder
    # stays for an operator
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == len(bad), errors
    for why, path in bad.items():
        assert not path.exists() and path.with_name("run.json.bad").exists(), why
        assert (path.parent / "src").is_dir(), why
        assert sum(str(path) in e for e in errors) == 1, (why, errors)
    assert any("'pid' should be int, is None" in e for e in errors)
    assert any("'pid_start' should be str, is 12345" in e for e in errors)
    # And the next sweep does not read (nor log) them again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ciq.runner.runs"):
        assert sweep_stale_runs(data_dir, HOST) == []
    assert caplog.records == []


def test_a_dead_run_whose_clean_up_fails_does_not_stop_the_others(
    data_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    # Given two dead runs, one of which cannot be cleaned (its cgroups will not go)
    first, second = write_record(data_dir, "first"), write_record(data_dir, "second")
    remove_left = runs.remove_left

    def failing(run_id: str) -> None:
        if run_id == "first":
            raise RuntimeError("cgroup busy")
        remove_left(run_id)

    monkeypatch.setattr(runs, "remove_left", failing)
    # When the sweeper runs, twice
    with caplog.at_level(logging.ERROR, logger="ciq.runner.runs"):
        assert sweep_stale_runs(data_dir, HOST) == [DeadRun("second", REPO, sha("second"))]
        assert sweep_stale_runs(data_dir, HOST) == []
    # Then the other run is cleaned; the failed one is logged once, with its traceback,
    # and set aside
    assert not second.parent.exists()
    assert first.with_name("run.json.bad").exists() and not first.exists()
    (error,) = caplog.records
    assert str(first) in error.getMessage() and "cgroup busy" in error.getMessage()
    assert error.exc_info is not None


# -- The outbox -------------------------------------------------------------------------------

def report_of(n: int | str, status: str = "passed", branch: str | None = "main") -> Report:
    failed = status == "failed"
    tests = (TestResult("tests/test_a.py::test_a", "failed" if failed else "passed", 0.1,
                        "AssertionError: nope" if failed else ""),)
    return Report(repo=REPO, commit=sha(n), branch=branch, status=status, tests=tests,
                  summary=Summary.of(list(tests)), run_id=f"run-{n}",
                  finished_at="2024-05-01T10:00:00.000+00:00")


def test_the_outbox_sets_aside_what_it_cannot_deliver_and_delivers_the_rest(
    store: Store, data_dir: Path, caplog: pytest.LogCaptureFixture
):
    # Given a good report in the outbox, beside one that is not a report, one Redis
    # refuses (a script's WRONGTYPE: its commit's hash is damaged) and one that cannot
    # be made into Redis's document (its repository is a number)
    good = outbox.save(data_dir, report_of(1))
    refused = outbox.save(data_dir, report_of(2))
    store.client.set(commit(repo_id(REPO), sha(2)), "not a hash")
    folder = data_dir / "outbox"
    not_a_report = folder / "list.json"
    not_a_report.write_text("[]")
    numbered = folder / "numbered.json"
    numbered.write_text(json.dumps({**report_of(3).to_dict(), "repo": 42}))
    # When housekeeping delivers the outbox
    with caplog.at_level(logging.ERROR, logger="ciq.store.outbox"):
        assert outbox.deliver_pending(store, data_dir) == 1
    # Then the good report is stored and its file gone; the others are moved aside
    # (each logged once, by name) and are not tried again
    stored = store.report(REPO, sha(1))
    assert stored is not None and stored.run_id == "run-1" and not good.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [refused.with_suffix(".bad").name, "list.bad", "numbered.bad"])
    text = caplog.text
    for path in (refused, not_a_report, numbered):
        assert text.count(f"outbox: {path.name}:") == 1, text
    assert "WRONGTYPE" in text
    caplog.clear()
    assert outbox.deliver_pending(store, data_dir) == 0 and caplog.records == []


def test_the_outbox_keeps_its_files_while_redis_is_away(store: Store, data_dir: Path):
    # Given two reports in the outbox and a Redis that does not answer
    paths = [outbox.save(data_dir, report_of(n)) for n in (1, 2)]
    away = Store.from_url(f"redis://127.0.0.1:{free_port()}/0")
    # When housekeeping tries to deliver them, the pass stops and the files stay
    try:
        with pytest.raises(redis.ConnectionError):
            outbox.deliver_pending(away, data_dir)
    finally:
        away.client.close()
    assert all(p.exists() for p in paths)
    assert not list((data_dir / "outbox").glob("*.bad"))
    # Then once Redis answers, both are delivered
    assert outbox.deliver_pending(store, data_dir) == 2
    assert not any(p.exists() for p in paths)


# -- Notifications ----------------------------------------------------------------------------

@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def good_events(store: Store) -> list[str]:
    """Two events as a worker's final reports make them: main broken, then fixed."""
    for n, status in ((1, "failed"), (2, "passed")):
        assert store.claim(REPO, sha(n), "main", {"subject": f"commit {n}", "author": "Dev"})
        assert store.finish(report_of(n, status))
    return list(store.client.zrange(DUE, 0, -1))


def stored_event(store: Store, text: str) -> str:
    """An event stored as the final-report script stores one, with any text; due first."""
    event_id = new_event_id()
    store.client.hset(EVENTS, event_id, text)
    store.client.zadd(DUE, {event_id: 0})
    return event_id


def test_a_malformed_event_is_set_aside_and_the_others_are_delivered(
    store: Store, settings: Settings, hook: Receiver, caplog: pytest.LogCaptureFixture
):
    # Given two good events (one with its delivery progress damaged) and, due before
    # them, events delivery cannot read
    good = good_events(store)
    store.client.hset(PROGRESS, good[0], "{not json")
    event = json.loads(store.client.hget(EVENTS, good[1]))
    bad = {
        stored_event(store, "{not json"): "not a JSON object",
        stored_event(store, "[1, 2]"): "not a JSON object",
        stored_event(store, json.dumps({**event, "repo": None})): "'repo' is None",
        stored_event(store, json.dumps({**event, "kind": "exploded"})): "unknown kind",
    }
    # When a worker delivers what is due
    deliverer = Deliverer(store, replace(settings, webhook_url=hook.url))
    with caplog.at_level(logging.ERROR, logger="ciq.notify.delivery"):
        assert deliverer.run_once() == len(good) + len(bad)
    # Then the good events are sent, once each...
    assert sorted(h.headers["X-Ciq-Delivery"] for h in hook.hits) == sorted(good)
    # ...and each malformed one is logged and kept, as stored, in the dead list, untried
    dead = {d["event"] if isinstance(d["event"], str) else json.dumps(d["event"]): d
            for d in map(json.loads, store.client.lrange(DEAD, 0, -1))}
    assert len(dead) == len(bad)
    for event_id in bad:
        assert f"set aside the malformed event {event_id}" in caplog.text
    for entry in dead.values():
        assert entry["tries"] == 0 and entry["error"].startswith("malformed event: ")
        assert any(why in entry["error"] for why in bad.values()), entry
    assert "{not json" in dead
    for queue in (EVENTS, PROGRESS):
        assert not store.client.hlen(queue)
    for queue in (DUE, INFLIGHT):
        assert not store.client.zcard(queue)


@pytest.mark.parametrize("damage", ["summary", "repo settings"])
def test_an_unexpected_error_in_delivery_backs_off_like_a_failed_one(
    store: Store, settings: Settings, hook: Receiver, caplog: pytest.LogCaptureFixture,
    damage: str
):
    # Given an event whose delivery raises what no target raises: a damaged detail of
    # the event (its summary a list: the message cannot be made), or damaged settings of
    # its repository in Redis (not JSON)
    assert store.claim(REPO, sha(1), "main", {"subject": "commit 1", "author": "Dev"})
    assert store.finish(report_of(1, "failed"))
    (event_id,) = store.client.zrange(DUE, 0, -1)
    if damage == "summary":
        event = json.loads(store.client.hget(EVENTS, event_id))
        store.client.hset(EVENTS, event_id, json.dumps({**event, "summary": [1]}))
    else:
        store.client.hset(REPO_CONFIG, repo_id(REPO), "{not json")
    deliverer = Deliverer(store, replace(settings, webhook_url=hook.url), backoff=0.2,
                          max_tries=3)

    def tried() -> tuple[int, int]:
        """Its due time (ms) and its tries so far, after one pass that tried it."""
        before = ms()
        with caplog.at_level(logging.WARNING, logger="ciq.notify.delivery"):
            assert deliverer.run_once() == 1
        due = store.client.zscore(DUE, event_id)
        progress = json.loads(store.client.hget(PROGRESS, event_id))
        assert "unexpected" in progress["error"], progress
        # Due again after the backoff of that try, counted from this pass
        delay = 200 * 2 ** (progress["tries"] - 1)
        assert before + delay <= due <= ms() + delay
        return int(due), progress["tries"]

    # When a worker tries it: it is due again after the backoff, its tries counted...
    first_due, tries = tried()
    assert tries == 1 and "unexpected error" in caplog.text
    # ...and the next pass does not send it again
    assert deliverer.run_once() == 0
    # Then each next try waits longer
    time.sleep(max(first_due - ms(), 0) / 1000 + 0.01)
    second_due, tries = tried()
    assert tries == 2 and second_due - first_due >= 400
    # And after max_tries it is given up like any failed event, kept in the dead list
    time.sleep(max(second_due - ms(), 0) / 1000 + 0.01)
    with caplog.at_level(logging.WARNING, logger="ciq.notify.delivery"):
        assert deliverer.run_once() == 1
    (dead,) = [json.loads(x) for x in store.client.lrange(DEAD, 0, -1)]
    assert dead["event"]["id"] == event_id and dead["tries"] == 3
    assert "unexpected" in dead["error"]
    assert not store.client.hlen(EVENTS) and not store.client.zcard(DUE)
    assert f"gave up on the broken event {event_id}" in caplog.text
    assert hook.hits == []
