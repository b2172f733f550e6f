"""The Redis side of sharded runs (ciq.store.shards) against a real redis-server: plans,
chunk leases, results written once, the reconciler's part. No workers: each step is
called as a worker would call it, and the crashes in between are played by not calling
the next step."""

from __future__ import annotations

import json
import time

from ciq.dispatch import Message, Sender
from ciq.report import Report, Summary, TestResult
from ciq.sharding.plan import ShardPlan, plan_chunks
from ciq.store import Store, keys
from ciq.store.keys import CHUNKS_STARTED, SHARDED, repo_id
from ciq.store.shards import LAST, Shards
from ciq.worker.attempt import store_chunk

REPO = "/srv/git/lib"
SHA = "b" * 40
CHUNKS = [["t::a", "t::b"], ["t::c"], ["t::d"]]


def chunk_report(ids: list[str], outcome: str = "passed") -> Report:
    tests = tuple(TestResult(i, outcome, 0.1) for i in ids)
    return Report(repo=REPO, commit=SHA, status="passed" if outcome == "passed" else "failed",
                  tests=tests, summary=Summary.of(list(tests)), worker="w", exit_code=0)


def planned(store: Store, ttl: float = 5.0, fail_fast: bool = False
            ) -> tuple[Shards, ShardPlan]:
    """A commit claimed, leased by run "r0", and sharded into CHUNKS by it, as a worker
    does: the plan and its other chunks' messages in one step."""
    store.claim(REPO, SHA, "main", {})
    assert store.acquire(REPO, SHA, "r0", 5.0, "w0") == 1
    shards = Shards(store, lease_ttl=ttl, time_limit=60, output_limit=10_000)
    head = Report(repo=REPO, commit=SHA, status="passed", branch="main", worker="w0",
                  timings={"checkout": 0.1}, duration=0.5)
    plan = ShardPlan(REPO, SHA, "main", CHUNKS, head.to_dict(), fail_fast, queue="q")
    sender = Sender(store.conn, store.conn, "q")
    messages = [sender.chunk(REPO, SHA, "main", i, "q") for i in (2, 1)]

    def step(inline: list[Message]) -> bool:
        return shards.create(plan, "r0", [m.body for m in inline])

    assert sender.along(messages, step)
    return shards, plan


def test_a_plan_queues_its_other_chunks_and_holds_the_commit(store: Store):
    shards, plan = planned(store)
    # The other chunks are on the queue, the next one taken (the right end) first
    queued = [json.loads(m)["headers"] for m in store.client.lrange("q", 0, -1)]
    assert [h["task"] for h in queued] == ["ciq.chunk", "ciq.chunk"]
    assert [h["argsrepr"].rsplit(", ", 1)[1] for h in queued] == ["2)", "1)"]
    # The commit's lease is the plan's now, so the planning run cannot take it back
    assert store.lease_holder(REPO, SHA) == "shards:r0"
    assert store.acquire(REPO, SHA, "r9", 5.0, "w9") == 0
    # A run that lost its lease cannot plan
    assert not shards.create(plan, "r0", [])
    assert shards.take(REPO, SHA, 0, "other") == 0  # chunk 0 is the planning run's


def test_the_last_result_merges_once_and_cleans_up(store: Store):
    shards, plan = planned(store)
    assert store_chunk(shards, plan, 0, chunk_report(CHUNKS[0]), "r0") is None
    assert shards.take(REPO, SHA, 1, "r1") == 1
    assert store_chunk(shards, plan, 1, chunk_report(CHUNKS[1]), "r1") is None
    # A second copy of chunk 1 finds its result there: nothing to do, nothing written
    assert shards.take(REPO, SHA, 1, "r1b") == -1
    assert store_chunk(shards, plan, 1, chunk_report(CHUNKS[1], "failed"), "r1b") is None
    assert shards.take(REPO, SHA, 2, "r2") == 1
    merged = store_chunk(shards, plan, 2, chunk_report(CHUNKS[2]), "r2")
    assert merged is not None and merged.status == "passed"
    assert sorted(t.id for t in merged.tests) == ["t::a", "t::b", "t::c", "t::d"]
    assert store.report(REPO, SHA) == merged
    rid = repo_id(REPO)
    assert not store.client.exists(keys.plan(rid, SHA))
    assert not store.client.sismember(SHARDED, f"{rid}:{SHA}")
    assert store.lease_holder(REPO, SHA) is None
    assert store.client.scard(CHUNKS_STARTED) == 0
    assert not store.client.sismember("ciq:started", f"{rid}:{SHA}")
    # The durations are kept for the next plan
    assert shards.durations(REPO) == {i: 0.1 for c in CHUNKS for i in c}


def test_the_reconciler_requeues_a_chunk_whose_run_died_and_merges_for_a_dead_merger(
    store: Store,
):
    shards, plan = planned(store, ttl=0.3)
    resent: list[tuple] = []

    def send(*args: object) -> None:
        resent.append(args)

    assert shards.take(REPO, SHA, 1, "r1") == 1
    # Chunk 1's worker dies: its lease lapses with no result; chunk 0's run lives on
    time.sleep(0.4)
    assert shards.renew(REPO, SHA, 0, "r0") is False  # r0 also missed its beat...
    assert shards.reconcile(send) == 2  # ...so both are queued again
    assert sorted(a[3] for a in resent) == [0, 1]
    assert all(a[:3] == (REPO, SHA, "main") and a[4] == "q" for a in resent)
    assert shards.reconcile(send) == 0  # once
    # The reruns: the second try of chunk 1 counts as attempt 2
    assert shards.take(REPO, SHA, 0, "r0b") == 2
    assert shards.take(REPO, SHA, 1, "r1b") == 2
    assert shards.take(REPO, SHA, 2, "r2") == 1
    for index, run in ((0, "r0b"), (1, "r1b")):
        assert store_chunk(shards, plan, index, chunk_report(CHUNKS[index]), run) is None
    # The last chunk's result is written, then its worker dies before merging
    assert shards.done(REPO, SHA, 2, chunk_report(CHUNKS[2]), "r2") == LAST
    assert store.report(REPO, SHA) is None
    shards.reconcile(send)
    report = store.report(REPO, SHA)
    assert report is not None and report.status == "passed"
    assert report.summary.total == 4 and report.shards["count"] == 3


def test_fail_fast_reports_at_the_first_failure_and_later_chunks_stand_down(store: Store):
    shards, plan = planned(store, fail_fast=True)
    assert shards.take(REPO, SHA, 1, "r1") == 1
    merged = store_chunk(shards, plan, 1, chunk_report(CHUNKS[1], "failed"), "r1")
    assert merged is not None and merged.status == "failed"
    assert set(merged.not_run) == {"t::a", "t::b", "t::d"}
    assert shards.take(REPO, SHA, 2, "r2") == -1
    assert store_chunk(shards, plan, 0, chunk_report(CHUNKS[0]), "r0") is None
    assert store.report(REPO, SHA) == merged


def test_workers_are_counted_by_queue_while_they_announce_themselves(store: Store):
    shards = Shards(store, 5, 60, 1000)
    shards.announce("a@h", ["ciq"], 4)
    shards.announce("b@h", ["ciq", "heavy"], 2)
    assert shards.processes("ciq") == 6 and shards.processes("heavy") == 2
    assert shards.processes("ciq", now=time.time() + 60) == 0  # gone quiet: not counted


def test_the_durations_of_a_suite_of_twenty_thousand_tests_are_kept(store: Store):
    shards = Shards(store, 5.0, 60.0, 4096)
    ids = [f"tests/test_{i // 100}.py::test_{i}" for i in range(20_000)]
    report = Report(repo=REPO, commit="d" * 40, status="passed",
                    tests=tuple(TestResult(i, "passed", 0.25) for i in ids))
    shards.record_durations(report)
    kept = shards.durations(REPO)
    assert len(kept) == 20_000 and set(kept.values()) == {0.25}


class RoundTrips:
    """Counts the commands a redis-py client sends (a script's EVALSHA is one)."""

    def __init__(self, client) -> None:
        self.count = 0
        self._send = client.execute_command

        def counted(*args, **options):
            self.count += 1
            return self._send(*args, **options)

        client.execute_command = counted

    def of(self, call, *args):
        """What ``call(*args)`` returns, and the round trips it took."""
        before = self.count
        value = call(*args)
        return value, self.count - before


def test_plans_and_durations_of_any_size_take_the_same_round_trips(store: Store):
    trips = RoundTrips(store.client)
    seen: dict[int, dict[str, int]] = {}
    for n in (50, 100, 50_000):  # the first loads the scripts (NOSCRIPT, SCRIPT LOAD)
        # Given a commit leased by run "r0" whose collection found n tests
        sha = f"{n:040d}"
        ids = [f"tests/test_{i // 100}.py::test_{i}[{i % 3} x]" for i in range(n)]
        store.claim(REPO, sha, "main", {})
        assert store.acquire(REPO, sha, "r0", 30.0, "w0") == 1
        shards = Shards(store, lease_ttl=30.0, time_limit=600, output_limit=10_000)
        chunks = plan_chunks(ids, {}, workers=4, min_chunk=0.1)
        head = Report(repo=REPO, commit=sha, status="passed", branch="main", worker="w0")
        plan = ShardPlan(REPO, sha, "main", chunks, head.to_dict(), queue="q")
        sender = Sender(store.conn, store.conn, "q")
        messages = [sender.chunk(REPO, sha, "main", i, "q").body
                    for i in range(len(chunks) - 1, 0, -1)]
        shards.create(plan, "r-warm", [])  # loads the script once (NOSCRIPT)

        # When it is planned, every chunk reports, the last merges
        created, seen.setdefault(n, {})["create"] = trips.of(shards.create, plan, "r0",
                                                             messages)
        assert created
        stored, seen[n]["plan"] = trips.of(shards.plan, REPO, sha)
        assert stored is not None
        flat = [i for c in stored.chunks for i in c]
        assert len(flat) == n and set(flat) == set(ids)  # each in exactly one chunk
        assert store.client.llen("q") == len(chunks) - 1
        store.client.delete("q")
        for index, chunk in enumerate(chunks):
            if index:
                assert shards.take(REPO, sha, index, f"r{index}") == 1
            shards.done(REPO, sha, index, chunk_report(chunk, "passed"), f"r{index}")
        merged, seen[n]["finish"] = trips.of(shards.finish, REPO, sha)
        # Then the report has every collected test once, and each one's duration is kept
        assert merged is not None and merged.status == "passed", merged.message
        assert merged.summary.total == n == len({t.id for t in merged.tests})
        kept, seen[n]["durations"] = trips.of(shards.durations, REPO)
        assert len(kept) == n and set(kept) == set(ids)
        _, seen[n]["record"] = trips.of(shards.record_durations, merged)
        store.client.delete(keys.durations(repo_id(REPO)))
    # And no step took more round trips for a thousand times the tests
    assert seen[100] == seen[50_000], seen
    assert all(v <= 6 for v in seen[50_000].values()), seen
