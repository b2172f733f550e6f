"""The Redis state of ciq, against a real redis-server."""

from __future__ import annotations

import time

from ciq.dispatch import Sender
from ciq.report import Report
from ciq.settings import Settings
from ciq.store import Store

REPO = "/srv/repo"
SHA = "a" * 40


def test_a_commit_is_claimed_once_with_its_message(store: Store, settings: Settings) -> None:
    sender = Sender.for_store(settings, store)
    assert sender.submit(REPO, SHA, "main") is True
    assert sender.submit(REPO, SHA, "main") is False
    assert store.client.llen(settings.queue) == 1
    assert store.commit(REPO, SHA)["branch"] == "main"
    assert store.client.zcard("ciq:unsent") == 0  # claim and message were one step


def test_without_the_atomic_path_an_unsent_claim_is_found(store: Store) -> None:
    # Given an enqueuer that claimed a commit and died before sending it
    assert store.claim(REPO, SHA, "main", {})
    assert store.unsent(older_than=3600) == []
    # Then after the grace period the reconciler finds it
    assert store.unsent(older_than=0) == [(REPO, SHA, "main")]
    assert store.mark_sent(REPO, SHA, "ciq")
    assert store.unsent(older_than=0) == []


def test_lease_excludes_a_second_run_and_expires(store: Store) -> None:
    store.claim(REPO, SHA, "main", {})
    assert store.acquire(REPO, SHA, "run1", 0.3, "w1") == 1
    assert store.acquire(REPO, SHA, "run2", 0.3, "w2") == 0
    assert store.renew(REPO, SHA, "run1", 0.3) and not store.renew(REPO, SHA, "run2", 0.3)
    time.sleep(0.4)
    assert store.acquire(REPO, SHA, "run2", 5, "w2") == 2  # the holder stopped renewing
    store.release(REPO, SHA, "run1")  # a stale holder cannot release it
    assert store.lease_holder(REPO, SHA) == "run2"


def test_final_report_is_written_once(store: Store) -> None:
    store.claim(REPO, SHA, "main", {})
    first = Report(repo=REPO, commit=SHA, status="passed", run_id="r1")
    assert store.finish(first)
    assert not store.finish(first.replace(status="failed", run_id="r2"))
    assert store.report(REPO, SHA) == first
    assert store.acquire(REPO, SHA, "late", 5, "w") == -1  # no run after the report


def test_orphans_are_runs_without_report_and_lease(store: Store) -> None:
    store.claim(REPO, SHA, "main", {})
    other = "b" * 40
    store.claim(REPO, other, "main", {})
    store.acquire(REPO, SHA, "dead", 0.2, "w1")
    store.acquire(REPO, other, "alive", 30, "w2")
    time.sleep(0.3)
    assert store.release_orphans() == [(REPO, SHA, "main")]
    assert store.release_orphans() == []  # handed back once
    assert store.unsent(older_than=1) == [(REPO, SHA, "main")]


def test_prefixes_resolve_to_one_known_commit(store: Store) -> None:
    store.claim(REPO, "abcd" + "1" * 36, None, {})
    store.claim(REPO, "abce" + "2" * 36, None, {})
    assert store.resolve(REPO, "abcd") == "abcd" + "1" * 36
    for prefix, words in (("abc", "ambiguous"), ("ffff", "no commit")):
        try:
            store.resolve(REPO, prefix)
        except Exception as exc:
            assert words in str(exc)
        else:
            raise AssertionError("resolved")


def test_history_keeps_claim_order_within_one_microsecond(store: Store) -> None:
    shas = [f"{i:040x}" for i in range(300, 0, -7)]  # descending: order is not by name
    for sha in shas:
        store.claim(REPO, sha, "main", {})
    assert [row["commit"] for row in store.recent(REPO, limit=100)] == list(reversed(shas))


def test_reports_left_in_the_outbox_are_delivered_once(store: Store, tmp_path) -> None:
    from ciq.store import outbox

    mine = Report(repo=REPO, commit=SHA, status="passed", run_id="r1")
    late = Report(repo=REPO, commit=SHA, status="failed", run_id="r2")
    outbox.save(tmp_path, mine)
    outbox.save(tmp_path, late)
    (tmp_path / "outbox" / "junk.json").write_text("{not json")
    assert outbox.deliver_pending(store, tmp_path) == 2
    assert store.report(REPO, SHA).run_id in ("r1", "r2")
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == ["junk.bad"]
