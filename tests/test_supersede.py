"""Superseded commits (ciq.supersede): the policy per branch, the marks the claim makes,
what a worker does with a superseded or backfilled commit, and end to end with real
workers: a burst on a feature branch cancels what nobody will read, a burst on `main`
runs the newest first and reports every commit. Real redis-server, real workers."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from ciq.dispatch import Sender, reconcile
from ciq.errors import ConfigError
from ciq.message import RUN_TASK, args_repr
from ciq.repoconfig import RepoConfig
from ciq.settings import Settings
from ciq.store import Store, keys
from ciq.store.keys import repo_id, task_id
from ciq.store.store import BACKFILL, RENEWED_SUPERSEDED, SUPERSEDED
from ciq.supersede import backfill_list, policy_for, reason

from .helpers import REPO, claim, finish, settings_for, sha, wait_for, wait_report

# -- the policy ----------------------------------------------------------------------------


def test_the_default_branch_is_deprioritised_and_others_cancel() -> None:
    assert policy_for("main", None) == "deprioritise"
    assert policy_for("master", {}) == "deprioritise"
    assert policy_for("feature/x", None) == "cancel"
    assert policy_for(None, None) == "none"  # `ciq enqueue` of a bare SHA
    assert policy_for("trunk", {"default_branch": "trunk"}) == "deprioritise"
    assert policy_for("main", {"default_branch": "trunk"}) == "cancel"


def test_the_operator_sets_the_policy_per_branch() -> None:
    config = {"supersede": "none", "supersede_default": "cancel",
              "supersede_branches": {"release/*": "deprioritise"}}
    assert policy_for("main", config) == "cancel"
    assert policy_for("feature", config) == "none"
    assert policy_for("release/1.2", config) == "deprioritise"


def test_policy_settings_parse_round_trip_and_bad_values_are_one_line_errors() -> None:
    config = RepoConfig.parse({"supersede": "none", "default_branch": "trunk",
                               "supersede_branches": {"wip/*": "cancel"}}, "ops.toml")
    assert config.to_dict() == {"supersede": "none", "default_branch": "trunk",
                                "supersede_branches": {"wip/*": "cancel"}}
    assert policy_for("trunk", config.to_dict()) == "deprioritise"
    with pytest.raises(ConfigError) as bad:
        RepoConfig.parse({"supersede": "kill"}, "ops.toml")
    assert "\n" not in str(bad.value)
    assert "'supersede' must be \"cancel\" or \"deprioritise\" or \"none\"" in str(bad.value)
    with pytest.raises(ConfigError, match="supersede_branches"):
        RepoConfig.parse({"supersede_branches": {"x": "sometimes"}}, "ops.toml")
    # Decided at the claim, before a commit's own settings are read: operator's only.
    with pytest.raises(ConfigError, match="only in the operator's settings file"):
        RepoConfig.parse({"supersede": "none"}, "ciq.toml", from_commit=True)


def test_the_reason_names_the_newer_commit_and_when_it_was_pushed() -> None:
    assert reason("f" * 40, "2026-01-01T00:00:00.000+00:00") == (
        "superseded by ffffffffffff, pushed at 2026-01-01T00:00:00.000+00:00")


# -- the marks, in Redis -------------------------------------------------------------------


def test_a_claim_marks_older_unreported_commits_of_its_branch_only(store: Store) -> None:
    old, reported = claim(store, 1, "feature"), claim(store, 2, "feature")
    finish(store, reported, branch="feature")
    other = claim(store, 3, "other")
    on_main = claim(store, 4, "main")
    newer = claim(store, 5, "feature")
    newest = claim(store, 6, "feature")
    claim(store, 7, "main")
    assert store.superseded(REPO, old) == (newest, store.commit(REPO, newest)["enqueued_at"])
    assert store.superseded(REPO, newer) == (newest, store.commit(REPO, newest)["enqueued_at"])
    for never in (reported, other, on_main, newest):
        assert store.superseded(REPO, never) is None
    assert store.commit(REPO, old)["supersede"] == "cancel"
    assert store.commit(REPO, on_main)["supersede"] == "deprioritise"


def test_a_worker_takes_a_superseded_commit_to_report_it_and_a_running_one_is_told(
        store: Store) -> None:
    running = claim(store, 1, "feature")
    assert store.acquire(REPO, running, "r1", 5.0, "w1", "feature") == 1
    queued = claim(store, 2, "feature")
    claim(store, 3, "feature")
    # the running one: its next renewal says so, and keeps the lease
    assert store.renew(REPO, running, "r1", 5.0) == RENEWED_SUPERSEDED
    assert store.lease_holder(REPO, running) == "r1"
    # the queued one: taken to be reported, nothing counted as an attempt
    assert store.acquire(REPO, queued, "r2", 5.0, "w1", "feature") == SUPERSEDED
    assert store.lease_holder(REPO, queued) == "r2"
    assert store.commit(REPO, queued)["attempts"] == "0"


def test_the_heartbeat_stops_a_superseded_run_and_knows_whether_it_told_it(
        store: Store) -> None:
    from ciq.worker.lease import CommitLease, Heartbeat

    running = claim(store, 1, "feature")
    lease = CommitLease(store, REPO, running, "r1", 0.6, "w1", branch="feature")
    assert lease.take() == 1
    with Heartbeat(lambda: lease, "run r1", 0.6) as heartbeat:
        assert not heartbeat.stopped()
        claim(store, 2, "feature")
        wait_for(lambda: heartbeat.superseded, 5, "the heartbeat to see the mark")
        # a run whose tests ended before anything asked keeps its own verdict
        assert not heartbeat.stopped_superseded and not heartbeat.is_lost()
        assert heartbeat.stopped() and heartbeat.stopped_superseded
    assert store.lease_holder(REPO, running) == "r1"  # renewed all along


def test_a_cancelled_report_moves_no_branch_state_and_makes_no_event(store: Store) -> None:
    first = claim(store, 1, "feature")
    finish(store, first, branch="feature", outcomes={"t::a": "failed"})
    events = store.client.hlen(keys.EVENTS)
    old = claim(store, 2, "feature")
    claim(store, 3, "feature")
    finish(store, old, branch="feature", status="cancelled", message="superseded")
    assert store.report(REPO, old).status == "cancelled"
    assert store.branch_state(REPO)["feature"]["commit"] == first
    assert store.client.hlen(keys.EVENTS) == events
    live = store.client.zrange(keys.branch_live(repo_id(REPO), "feature"), 0, -1)
    assert old not in live and first not in live


def test_an_older_commit_of_main_goes_to_the_backfill_once_while_a_newer_one_waits(
        store: Store) -> None:
    old, mid, new = (claim(store, n, "main") for n in (1, 2, 3))
    assert store.acquire(REPO, old, "r1", 5.0, "w1", "main") == BACKFILL
    assert store.lease_holder(REPO, old) is None  # no lease kept, nothing counted
    assert store.commit(REPO, old)["attempts"] == "0"
    assert store.acquire(REPO, new, "r3", 5.0, "w1", "main") == 1  # the newest runs
    # mid: nothing newer waits now (the newest started), so it runs where it is
    assert store.acquire(REPO, mid, "r2", 5.0, "w1", "main") == 1
    # old, taken again (from the backfill): it runs, once moved is enough
    assert store.acquire(REPO, old, "r4", 5.0, "w1", "main") == 1


def test_our_priority_message_is_the_one_celery_sends_on_the_list_kombu_names(
        store: Store, settings: Settings) -> None:
    # Given the same run sent by Celery's own send_task with priority 9
    from ciq.celery import create_app

    app = create_app(settings)
    app.send_task(RUN_TASK, args=[REPO, sha(1), "main"], task_id=task_id(REPO, sha(1)),
                  queue="q", priority=9, argsrepr=args_repr(REPO, sha(1), "main"))
    app.close()  # not app.pool.force_close_all(): that pool is kombu's, shared by apps
    # Then kombu put it on the list ciq names the backfill, and ours is the same message
    assert store.client.llen("q") == 0
    theirs = json.loads(store.client.lpop(backfill_list("q")))
    sender = Sender(store.conn, store.conn, "q")
    message = sender.backfill(REPO, sha(1), "main", "q")
    assert message.queue == backfill_list("q") == "q\x06\x169"
    ours = json.loads(message.body)
    volatile = {"delivery_tag", "reply_to", "argsrepr", "origin"}
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(theirs["body"]))
    for part in ("headers", "properties"):
        mine = {k: v for k, v in ours[part].items() if k not in volatile}
        celery = {k: v for k, v in theirs[part].items() if k not in volatile}
        assert mine == celery, part
    assert ours["properties"]["priority"] == 9


def test_the_reconciler_leaves_a_backfilled_commit_on_its_list_and_resends_a_lost_one(
        store: Store) -> None:
    sender = Sender(store.conn, store.conn, "q")
    old, lost = claim(store, 1, "main"), claim(store, 2, "main")
    sender.to_backfill(REPO, old, "main")
    message = sender.backfill(REPO, lost, "main")
    store.mark_sent(REPO, lost, message.queue)  # marked, then its sender died
    assert reconcile(store, sender, resend_after=0.0) == 1
    ids = sender.queued_ids(backfill_list("q"))
    assert ids == {task_id(REPO, old), task_id(REPO, lost)}
    assert store.client.llen(backfill_list("q")) == 2 and store.client.llen("q") == 0


# -- end to end ----------------------------------------------------------------------------

SLOW = {"tests/test_a.py": "def test_fast():\n    pass\n",
        "tests/test_b.py": "import time\n\ndef test_slow():\n    time.sleep(60)\n"}


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _started(store: Store, repo: str, commit: str) -> bool:
    return bool(store.commit(repo, commit).get("started_at"))


def _saw_fast_test(store: Store, repo: str, commit: str) -> bool:
    from ciq.store.live import outcomes

    return any(e.get("id", "").endswith("test_fast") for _, e in outcomes(store, repo, commit))


def _events_of(store: Store) -> set[str]:
    return {json.loads(e).get("commit", "") for e in store.client.hvals(keys.EVENTS)}


@pytest.mark.slow
def test_a_burst_on_a_feature_branch_cancels_what_nobody_will_read(
        make_repo, worker, store: Store, settings: Settings) -> None:
    # Given the only worker running the first commit of a feature branch (it sleeps)
    repo = make_repo(SLOW)
    name = str(repo.path)
    sender = Sender.for_store(settings, store)
    repo.git("checkout", "-q", "-b", "feature")
    f1 = repo.commit({"f1.txt": "1"}, "f1")
    repo.git("checkout", "-q", "-b", "side", "main")
    side = repo.commit({"tests/test_b.py": "import time\n\ndef test_slow():\n"
                                           "    time.sleep(5)\n"}, "side work")
    repo.git("checkout", "-q", "feature")
    worker()
    assert sender.submit(name, f1, "feature")
    wait_for(lambda: _saw_fast_test(store, name, f1), 60, "the first commit's first test")
    # and another branch's commit queued behind it (all workers busy)
    assert sender.submit(name, side, "side")

    # When three more commits are pushed to the feature branch, 1.5 s apart
    f2 = repo.commit({"f2.txt": "2"}, "f2")
    assert sender.submit(name, f2, "feature")
    time.sleep(1.5)
    f3 = repo.commit({"f3.txt": "3"}, "f3")
    assert sender.submit(name, f3, "feature")
    time.sleep(1.5)
    f4 = repo.commit({"tests/test_b.py": "def test_slow():\n    pass\n"}, "f4")
    assert sender.submit(name, f4, "feature")
    newest_claim = _at(store.commit(name, f4)["enqueued_at"])

    # Then the running one is stopped with what it had, within seconds
    running = wait_report(store, name, f1, 30)
    assert running.status == "cancelled"
    assert running.message.startswith(f"superseded by {f2[:12]}")
    assert "stopped while running, 1 tests had finished" in running.message
    assert [(t.id, t.outcome) for t in running.tests] == [("tests/test_a.py::test_fast",
                                                           "passed")]
    stop_after = _at(running.finished_at) - _at(store.commit(name, f2)["enqueued_at"])
    assert _at(running.finished_at) - newest_claim < 10
    # the two in the middle never start and name the newest commit
    for middle in (f2, f3):
        report = wait_report(store, name, middle, 30)
        assert report.status == "cancelled" and report.tests == () and report.attempts == 0
        assert report.message.startswith(f"superseded by {f4[:12]}, pushed at ")
        assert not _started(store, name, middle)
    # the newest starts within 15 s and reports normally
    newest = wait_report(store, name, f4, 30)
    assert newest.status == "passed" and newest.summary.total == 2
    start_latency = _at(newest.started_at) - newest_claim
    assert start_latency < 15
    assert wait_report(store, name, side, 5).status == "passed"
    # and no notification for the cancelled ones; the branch's state is the newest's
    assert _events_of(store) & {f1, f2, f3} == set()
    assert store.branch_state(name)["feature"]["commit"] == f4
    print(f"\nrunning one stopped {stop_after:.2f} s after the claim that superseded it; "
          f"newest started {start_latency:.2f} s after its claim")


@pytest.mark.slow
def test_a_burst_on_main_runs_the_newest_first_and_reports_every_commit(
        make_repo, worker, store: Store, settings: Settings) -> None:
    # Given the only worker busy with a commit of main
    repo = make_repo({"tests/test_a.py": "def test_fast():\n    pass\n",
                      "tests/test_b.py": "import time\n\ndef test_slow():\n"
                                         "    time.sleep(4)\n"})
    name = str(repo.path)
    sender = Sender.for_store(settings, store)
    m1 = repo.head()
    worker()
    assert sender.submit(name, m1, "main")
    wait_for(lambda: _started(store, name, m1), 60, "the first commit to start")

    # When three more commits land on main
    quick = {"tests/test_b.py": "def test_slow():\n    pass\n"}
    burst = []
    for i in (2, 3, 4):
        burst.append(repo.commit({**quick, f"m{i}.txt": str(i)}, f"m{i}"))
        assert sender.submit(name, burst[-1], "main")
    m2, m3, m4 = burst

    # Then nothing is cancelled, all four are reported, and the newest ran first
    reports = {c: wait_report(store, name, c, 60) for c in (m1, m2, m3, m4)}
    assert {r.status for r in reports.values()} == {"passed"}
    order = sorted(reports, key=lambda c: reports[c].started_at or "")
    assert order == [m1, m4, m2, m3]
    assert [store.commit(name, c).get("backfill") for c in (m1, m2, m3, m4)] == [
        None, "1", "1", None]
    assert all(reports[c].attempts == 1 for c in reports)
    wait = _at(reports[m4].started_at) - _at(reports[m1].finished_at)
    print(f"\nnewest of main started {wait:.2f} s after the busy worker was free "
          f"(behind 2 older commits)")


@pytest.mark.slow
def test_a_cancellation_survives_a_killed_worker(
        make_repo, worker, store: Store, settings: Settings, tmp_path: Path) -> None:
    # Given a worker running a feature branch's commit
    repo = make_repo(SLOW)
    name = str(repo.path)
    sender = Sender.for_store(settings, store)
    repo.git("checkout", "-q", "-b", "feature")
    f1 = repo.commit({"f1.txt": "1"}, "f1")
    w = worker("w1", data_dir=tmp_path / "h1")
    assert sender.submit(name, f1, "feature")
    wait_for(lambda: _started(store, name, f1), 60, "the first commit to start")

    # When a newer commit is claimed and the worker is killed at once (SIGKILL), before
    # any heartbeat of it could see the mark
    f2 = repo.commit({"tests/test_b.py": "def test_slow():\n    pass\n"}, "f2")
    assert sender.submit(name, f2, "feature")
    os.killpg(w.proc.pid, signal.SIGKILL)
    w.proc.wait()
    worker("w2", data_dir=tmp_path / "h2")

    # Then the new worker finds the mark in Redis: the old one is cancelled, not rerun
    old = wait_report(store, name, f1, 60)
    assert old.status == "cancelled" and old.message.startswith(f"superseded by {f2[:12]}")
    assert old.attempts == 1 and old.worker.startswith("w2@")  # the killed run, no other
    assert wait_report(store, name, f2, 60).status == "passed"


@pytest.mark.slow
def test_a_running_commit_is_cancelled_after_a_redis_restart(
        make_repo, worker, own_redis, tmp_path: Path) -> None:
    # Given a worker on a Redis of its own running a feature branch's commit
    settings = settings_for(own_redis.url, tmp_path / "data")
    store = Store.from_url(own_redis.url)
    repo = make_repo(SLOW)
    name = str(repo.path)
    sender = Sender.for_store(settings, store)
    repo.git("checkout", "-q", "-b", "feature")
    f1 = repo.commit({"f1.txt": "1"}, "f1")
    worker(CIQ_BROKER_URL=own_redis.url, CIQ_RESULT_BACKEND=own_redis.url)
    assert sender.submit(name, f1, "feature")
    wait_for(lambda: _saw_fast_test(store, name, f1), 60, "the first commit's first test")

    # When Redis restarts (its data kept) and then a newer commit is claimed
    own_redis.stop()
    own_redis.start()
    f2 = repo.commit({"tests/test_b.py": "def test_slow():\n    pass\n"}, "f2")
    assert sender.submit(name, f2, "feature")

    # Then the reconnected worker stops the old run, keeps what it had, and goes on
    old = wait_report(store, name, f1, 30)
    assert old.status == "cancelled"
    assert [t.outcome for t in old.tests] == ["passed"]
    assert _at(old.finished_at) - _at(store.commit(name, f2)["enqueued_at"]) < 10
    assert wait_report(store, name, f2, 60).status == "passed"
    store.client.close()


@pytest.mark.slow
def test_the_newest_commit_of_main_waits_for_no_backlog(
        make_repo, worker, store: Store, settings: Settings) -> None:
    # Given one worker and a repository whose commits alternate a slow and quick suites
    repo = make_repo({"tests/test_a.py": "def test_fast():\n    pass\n"})
    name = str(repo.path)
    sender = Sender.for_store(settings, store)
    worker()
    slow = {"tests/test_b.py": "import time\n\ndef test_slow():\n    time.sleep(2)\n"}
    quick = {"tests/test_b.py": "def test_slow():\n    pass\n"}

    def burst(n: int) -> tuple[float, list[str], list[str]]:
        """Five commits pushed while the worker is busy: the seconds the newest waited
        once the worker was free, the commits in the order they started, and pushed."""
        busy = repo.commit(slow, "busy")
        assert sender.submit(name, busy, "main")
        wait_for(lambda: _started(store, name, busy), 60, "the busy commit to start")
        shas = [repo.commit({**quick, "n.txt": f"{n}-{i}"}, f"c{i}") for i in range(5)]
        for commit in shas:
            assert sender.submit(name, commit, "main")
        reports = {c: wait_report(store, name, c, 60) for c in [busy, *shas]}
        assert {r.status for r in reports.values()} == {"passed"}
        free = _at(reports[busy].finished_at)
        return (_at(reports[shas[-1]].started_at) - free,
                sorted(shas, key=lambda c: reports[c].started_at or ""), shas)

    # When the operator turns the policy off, then the newest waits behind the backlog
    store.set_repo_config(name, "ops.toml", {"supersede_default": "none"})
    waited_none, order, pushed = burst(1)
    assert order == pushed
    # When it is on (the default), then the newest starts first, the rest after it
    store.client.hdel(keys.REPO_CONFIG, repo_id(name))
    waited, order, pushed = burst(2)
    assert order == [pushed[-1], *pushed[:-1]]
    assert waited < 1.0 < waited_none
    print(f"\nnewest of 5 queued commits started {waited:.2f} s after the worker was free "
          f"(deprioritise) against {waited_none:.2f} s (none)")
