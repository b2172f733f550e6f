"""Prometheus metrics: counted in Redis by the steps where things happen, read by `ciq web`
at /metrics (a real `ciq web`, real redis-server, a real worker for the end-to-end burst)."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from ciq.dispatch import Sender
from ciq.processes import stop_process
from ciq.report import Report
from ciq.settings import Settings
from ciq.store import Store, keys
from ciq.store.metrics import HISTOGRAMS
from ciq.store.scrape import Reader
from ciq.store.shards import Shards
from ciq.supersede import backfill_list
from ciq.web.metrics import ClusterCollector

from .helpers import PASSING, REPO, RedisServer, Web, claim, finish, sha, start_web, wait_report

#: The only label names /metrics may have: none of them can hold a SHA, a test id or a pid.
LABELS = {"repo", "status", "reason", "cache", "queue", "le", "verdict"}


def scrape(store: Store, broker: Any = None) -> dict[str, list[Any]]:
    """/metrics as the web app makes it, parsed: family name → samples."""
    registry = CollectorRegistry()
    registry.register(ClusterCollector(Reader(store.client, broker or store.client, "ciq")))
    return parsed(generate_latest(registry).decode())


def parsed(text: str) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict[str, list[Any]], family: str, sample: str | None = None,
          **labels: str) -> float:
    """The one sample of ``family`` named ``sample`` (the family's own name by default)
    whose labels include ``labels``."""
    found = [s.value for s in families[family] if s.name == (sample or family)
             and labels.items() <= s.labels.items()]
    assert len(found) == 1, (family, sample, labels, families[family])
    return found[0]


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def get(web: Web, path: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(web.url + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def test_a_scripted_burst_is_counted_once_per_event_and_its_queue_wait_adds_up(
    web: Web, store: Store, settings: Settings
) -> None:
    # Given a burst of 12 commits over 3 repositories, claimed through the Sender, each
    # taken by a run a little later and reported (one failed, one with a cache miss)
    sender = Sender.for_store(settings, store)
    repos = [REPO, "https://example.org/b.git", "https://user:secret@example.org/c.git"]
    burst = [(repos[i % 3], sha(i)) for i in range(12)]
    for repo, commit in burst:
        assert sender.submit(repo, commit, "main")
    time.sleep(0.05)
    for i, (repo, commit) in enumerate(burst):
        time.sleep(0.01 * (i % 4))
        assert store.acquire(repo, commit, f"run-{i}", 5.0, "w1@host") == 1
        finish(store, commit, repo=repo, status="failed" if i == 4 else None,
               environment={"cache_hit": i != 7}, timings={"setup": 0.5})

    # When /metrics is scraped from a real `ciq web`
    status, headers, text = get(web, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain"), text
    families = parsed(text)

    # Then the queue wait's count is the burst and its sum is what the commits say
    hashes = [store.commit(repo, commit) for repo, commit in burst]
    waits = [seconds(h["started_at"]) - seconds(h["enqueued_at"]) for h in hashes]
    count = sum(value(families, "ciq_queue_wait_seconds", "ciq_queue_wait_seconds_count",
                      repo=r.replace("user:secret@", "user:***@")) for r in repos)
    total = sum(s.value for s in families["ciq_queue_wait_seconds"]
                if s.name == "ciq_queue_wait_seconds_sum")
    assert count == len(burst)
    assert total == pytest.approx(sum(waits), abs=0.002 * len(burst))
    # And each repository's buckets are cumulative up to +Inf = its count
    for repo in ("/srv/git/project",):
        buckets = [s.value for s in families["ciq_queue_wait_seconds"]
                   if s.name.endswith("_bucket") and s.labels["repo"] == repo]
        assert buckets == sorted(buckets) and buckets[-1] == 4
        assert len(buckets) == len(HISTOGRAMS["queue_wait"]) + 1
    # And the other counters say what happened, once each
    assert sum(s.value for s in families["ciq_commits_enqueued"]) == 12
    assert value(families, "ciq_reports", "ciq_reports_total", repo=REPO, status="passed") == 4
    b = "https://example.org/b.git"
    assert value(families, "ciq_reports", "ciq_reports_total", repo=b, status="failed") == 1
    assert value(families, "ciq_reports", "ciq_reports_total", repo=b, status="timeout") == 0
    assert sum(s.value for s in families["ciq_run_attempts"]
               if s.labels["reason"] == "first") == 12
    assert value(families, "ciq_environment_setups", "ciq_environment_setups_total", repo=b,
                 cache="miss") == 1
    assert sum(s.value for s in families["ciq_run_duration_seconds"]
               if s.name.endswith("_sum")) == pytest.approx(12 * 1.25)
    assert sum(s.value for s in families["ciq_time_to_report_seconds"]
               if s.name.endswith("_count")) == 12
    # And no password of a repository URL is shown
    assert "secret" not in text


def test_series_are_bounded_whatever_the_history(store: Store) -> None:
    # Given ten repositories with a short history each
    repos = [f"/srv/git/project{i}" for i in range(10)]
    for n, repo in enumerate(repos):
        commit = claim(store, n, repo=repo)
        store.acquire(repo, commit, f"run-{n}", 5.0, "w1")
        finish(store, commit, {f"tests/test_{n}.py::test_x": "failed"}, repo=repo)
    before = scrape(store)
    # When each gets many more commits, and a stray field with a SHA appears
    for n in range(10, 60):
        repo = repos[n % 10]
        commit = claim(store, n, repo=repo)
        store.acquire(repo, commit, f"run-{n}", 5.0, "w1")
        finish(store, commit, repo=repo)
    store.client.hset(keys.metrics(keys.repo_id(repos[0])), f"c:outcome:{sha(1)}", 1)
    after = scrape(store)
    # Then the series are the same ones, labelled only by bounded names and values
    assert {f: len(s) for f, s in after.items()} == {f: len(s) for f, s in before.items()}
    samples = [s for family in after.values() for s in family]
    assert len(samples) < 1500  # ~130 per repository, and the gauges
    for s in samples:
        assert set(s.labels) <= LABELS, s
        for label in s.labels.values():
            assert not re.search(r"[0-9a-f]{12}|::|test_", label), s
    assert sum(s.value for s in after["ciq_reports"]) == 60


def test_reruns_are_counted_by_why_they_happen(store: Store) -> None:
    # Given a commit whose first run's worker dies, then one whose lease just lapses
    commit = claim(store, 1)
    assert store.acquire(REPO, commit, "run-1", 5.0, "w1") == 1
    store.release_dead(REPO, commit, "run-1")  # the sweeper saw its process gone
    assert store.acquire(REPO, commit, "run-2", 5.0, "w2") == 2
    store.release(REPO, commit, "run-2")  # gone with no report and no death seen
    assert store.acquire(REPO, commit, "run-3", 5.0, "w2") == 3
    finish(store, commit)
    families = scrape(store)
    # Then each attempt has its reason, and the queue wait counts the first one only
    for reason, n in (("first", 1), ("worker_lost", 1), ("lease_lapsed", 1)):
        assert value(families, "ciq_run_attempts", "ciq_run_attempts_total",
                     reason=reason) == n
    assert value(families, "ciq_queue_wait_seconds", "ciq_queue_wait_seconds_count") == 1
    assert value(families, "ciq_reports", "ciq_reports_total", status="passed") == 1


def test_gauges_read_queues_waiting_commits_runs_and_workers(
    store: Store, settings: Settings, own_redis: RedisServer
) -> None:
    # Given three commits waiting on the queue, one running, and a worker of 4 processes
    sender = Sender.for_store(settings, store)
    for n in range(4):
        assert sender.submit(REPO, sha(n), "main")
    assert store.acquire(REPO, sha(0), "run-0", 5.0, "w1") == 1
    Shards(store, 5.0, 900.0, 65536).announce("w1@host", ["ciq"], 4)
    time.sleep(0.3)
    families = scrape(store)
    # Then the figures say so
    assert value(families, "ciq_queue_length", queue="ciq") == 4  # nobody popped them
    assert value(families, "ciq_commits_waiting") == 3
    assert 0.3 <= value(families, "ciq_oldest_waiting_commit_age_seconds") < 5
    assert value(families, "ciq_runs_in_progress") == 1
    assert value(families, "ciq_workers") == 1 and value(families, "ciq_worker_processes") == 4
    assert value(families, "ciq_worker_saturation") == 0.25

    # When the running commit's run is lost and it goes back to the queue
    store.release(REPO, sha(0), "run-0")
    assert [c[1] for c in store.release_orphans()] == [sha(0)]
    families = scrape(store)
    # Then it waits again, since just now (the others still wait since their claim)
    assert value(families, "ciq_commits_waiting") == 4
    assert value(families, "ciq_runs_in_progress") == 0
    assert float(store.commit(REPO, sha(0))["requeued_us"]) > float(
        store.commit(REPO, sha(0))["enqueued_us"])

    # And with the broker in another Redis, the queues are read there
    other = Store.from_url(own_redis.url)
    other.client.rpush("ciq", "x", "y")
    assert value(scrape(store, other.client), "ciq_queue_length", queue="ciq") == 2
    # And a queue's backfill list counts in its length
    other.client.rpush(backfill_list("ciq"), "z")
    assert value(scrape(store, other.client), "ciq_queue_length", queue="ciq") == 3


@pytest.mark.slow
def test_real_worker_runs_are_counted(
    web: Web, store: Store, settings: Settings, make_repo, worker
) -> None:
    # Given three commits enqueued while no worker runs, then a worker
    repo = make_repo(PASSING)
    shas = [repo.head()]
    for i in range(2):
        shas.append(repo.commit({f"tests/test_{i}.py": "def test_x():\n    pass\n"}, f"c{i}"))
    sender = Sender.for_store(settings, store)
    for commit in shas:
        assert sender.submit(str(repo.path), commit, "main")
    assert parsed(get(web, "/metrics")[2])["ciq_commits_waiting"][0].value == 3
    worker()
    reports = [wait_report(store, str(repo.path), commit) for commit in shas]
    assert all(r.status == "passed" for r in reports)
    # Then /metrics counts their queue waits as the commits' hashes do
    families = parsed(get(web, "/metrics")[2])
    hashes = [store.commit(str(repo.path), commit) for commit in shas]
    waits = [seconds(h["started_at"]) - seconds(h["enqueued_at"]) for h in hashes]
    name = str(repo.path)
    assert value(families, "ciq_queue_wait_seconds", "ciq_queue_wait_seconds_count",
                 repo=name) == 3
    assert value(families, "ciq_queue_wait_seconds", "ciq_queue_wait_seconds_sum",
                 repo=name) == pytest.approx(sum(waits), abs=0.01)
    assert value(families, "ciq_reports", "ciq_reports_total", repo=name,
                 status="passed") == 3
    assert sum(s.value for s in families["ciq_environment_setups"]) == 3
    assert value(families, "ciq_run_attempts", "ciq_run_attempts_total", repo=name,
                 reason="first") == 3
    assert value(families, "ciq_commits_waiting") == 0
    assert value(families, "ciq_workers") == 1


def test_the_token_is_required_when_set_and_redis_away_is_a_503(tmp_path: Path) -> None:
    # Given `ciq web` with a metrics token, on a Redis of its own
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings = Settings(broker_url=server.url, result_backend=server.url,
                        data_dir=tmp_path / "data")
    web = start_web(settings, tmp_path / "web.log", CIQ_METRICS_TOKEN="s3cret-token")
    try:
        # Then /metrics needs the token, and only /metrics does
        for token in (None, "wrong", "s3cret-tokenX"):
            status, headers, text = get(web, "/metrics", token)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer"), text
            assert "s3cret" not in text
        status, _, text = get(web, "/metrics", "s3cret-token")
        assert status == 200 and "ciq_queue_length" in text
        assert get(web, "/api/repos")[0] == 200
        # When Redis stops, /metrics says so in one line and the server stays up
        server.stop()
        status, headers, text = get(web, "/metrics", "s3cret-token")
        assert status == 503 and headers["content-type"].startswith("text/plain")
        assert text.startswith("cannot reach Redis") and text.count("\n") == 1, text
        assert "Traceback" not in web.log.read_text()
        # And it answers again once Redis is back
        server.start()
        assert get(web, "/metrics", "s3cret-token")[0] == 200
    finally:
        stop_process(web.proc)
        server.stop()


def test_a_report_written_without_metrics_keys_is_still_a_report(store: Store) -> None:
    # Reports of commits claimed before ciq kept enqueued_us have no queue wait or time
    # to report, and count the rest.
    commit = claim(store, 1)
    store.client.hdel(keys.commit(keys.repo_id(REPO), commit), "enqueued_us")
    assert store.acquire(REPO, commit, "run-1", 5.0, "w1") == 1
    assert store.finish(Report(repo=REPO, commit=commit, status="error", duration=0.1))
    families = scrape(store)
    assert value(families, "ciq_queue_wait_seconds", "ciq_queue_wait_seconds_count") == 0
    assert value(families, "ciq_time_to_report_seconds",
                 "ciq_time_to_report_seconds_count") == 0
    assert value(families, "ciq_reports", "ciq_reports_total", status="error") == 1


def test_commits_running_or_reported_before_the_reconciler_saw_them_do_not_wait(
    store: Store
) -> None:
    # Given commits claimed without a message (they sit in the unsent set until sent):
    # one taken by a run meanwhile, one reported, one still waiting
    running, reported, waiting = claim(store, 1), claim(store, 2), claim(store, 3)
    assert store.acquire(REPO, running, "run-1", 5.0, "w1") == 1
    assert store.acquire(REPO, reported, "run-2", 5.0, "w1") == 1
    finish(store, reported)
    store.release(REPO, reported, "run-2")
    time.sleep(0.2)
    families = scrape(store)
    # Then only the last one waits, since its claim
    assert value(families, "ciq_commits_waiting") == 1
    age = value(families, "ciq_oldest_waiting_commit_age_seconds")
    claimed = int(store.commit(REPO, waiting)["enqueued_us"]) / 1e6
    assert age == pytest.approx(time.time() - claimed, abs=0.1)


def test_reruns_quarantined_failures_and_the_first_failure_are_counted(store: Store) -> None:
    # Given a commit claimed, whose run failed first at 0.4 s of its 1.25 s, whose
    # failing test went through 4 reruns in 2.5 s, and with a quarantined failing test
    commit = claim(store, "reruns")
    store.acquire(REPO, commit, f"run-{commit[:6]}", 5.0, "w1")
    hashed = keys.commit(keys.repo_id(REPO), commit)
    claimed = float(store.client.hget(hashed, "enqueued_us")) / 1e6 - 10.0
    store.client.hset(hashed, "enqueued_us", int(claimed * 1e6))  # claimed 10 s ago
    finish(store, commit, {"tests/test_a.py::test_muted": "failed",
                           "tests/test_a.py::test_ok": "passed"},
           status="passed", quarantined={"tests/test_a.py::test_muted": {"owner": "a@b.c"}},
           deflake={"tests": 1, "runs": 4, "seconds": 2.5, "note": ""},
           timings={"first_failure": 0.4, "test": 1.0})
    stored = time.time()

    # When /metrics is read
    families = scrape(store)

    # Then the reruns, their seconds and the quarantined failure are counted
    assert value(families, "ciq_run_attempts", "ciq_run_attempts_total", reason="deflake") == 4
    assert value(families, "ciq_rerun_seconds", "ciq_rerun_seconds_count") == 1
    assert value(families, "ciq_rerun_seconds", "ciq_rerun_seconds_sum") == 2.5
    assert value(families, "ciq_quarantined_failures",
                 "ciq_quarantined_failures_total") == 1
    # And the time to the first failure is the time to the report less what came after
    # it (the rest of the run and the reruns: 0.85 + 2.5 s)
    first = value(families, "ciq_time_to_first_failure_seconds",
                  "ciq_time_to_first_failure_seconds_sum")
    to_report = value(families, "ciq_time_to_report_seconds",
                      "ciq_time_to_report_seconds_sum")
    assert value(families, "ciq_time_to_first_failure_seconds",
                 "ciq_time_to_first_failure_seconds_count") == 1
    assert 10.0 <= to_report <= stored - claimed + 0.01
    assert first == pytest.approx(to_report - 3.35, abs=1e-3)
