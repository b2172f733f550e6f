"""The `first-failure` notification: made once per commit when a run that still holds it
stores the commit's first failure (the same script as the first failure itself, in the
batch's round trip), never for a stale run; delivered through the due set like every
event, to webhooks when CIQ_NOTIFY_FIRST_FAILURE (or the repository's
`notify.first_failure`) says `webhook`, and never by mail. Real Redis, a real HTTP and
SMTP server, and once with a real worker."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest

from ciq.errors import ConfigError
from ciq.notify import targets
from ciq.notify.delivery import Deliverer
from ciq.notify.events import KINDS, LIVE_KINDS, headline, mailed, malformed, wanted
from ciq.repoconfig import Notify
from ciq.settings import Settings
from ciq.store import Store, keys
from ciq.store.keys import DUE, EVENTS, repo_id
from ciq.store.live import LiveResults, first_failure

from .helpers import run_ciq, wait_for, wait_report
from .test_live import EARLY_FAILURE
from .test_notify import receiver, smtp_server  # noqa: F401 - fixtures

REPO = "/srv/git/lib"
RUN = "run-1"


def running(store: Store, sha: str, run_id: str = RUN, branch: str | None = "main") -> str:
    assert store.claim(REPO, sha, branch, {"subject": "break it", "author": "Dev"})
    assert store.acquire(REPO, sha, run_id, 30, "w1@host") == 1
    return sha


def failing(test: str = "tests/test_a.py::test_a", message: str = "AssertionError: nope"
            ) -> dict[str, Any]:
    return {"id": test, "outcome": "failed", "duration": 0.1, "when": time.time(),
            "message": message}


def passing(test: str = "tests/test_a.py::test_ok") -> dict[str, Any]:
    return {"id": test, "outcome": "passed", "duration": 0.01, "when": time.time()}


def events(store: Store) -> list[dict[str, Any]]:
    return [json.loads(store.client.hget(EVENTS, i)) for i in store.client.zrange(DUE, 0, -1)]


# -- Made in Redis with the first failure -------------------------------------------------

def test_the_first_failure_makes_one_event_naming_the_test(store: Store):
    sha = running(store, "a" * 40)
    live = LiveResults(store, REPO, sha, RUN)
    # When a run reports a pass, two failures, then more failures in a later batch
    live([passing(), failing(), failing("tests/test_b.py::test_b")])
    live([failing("tests/test_c.py::test_c")])
    # Then one event, of the first failure, with what the commit's hash knows
    (event,) = events(store)
    assert event["kind"] == "first-failure" and event["status"] == "running"
    assert event["commit"] == sha and event["rid"] == repo_id(REPO) and event["repo"] == REPO
    assert event["branch"] == "main" and event["subject"] == "break it"
    assert event["author"] == "Dev" and event["worker"] == "w1@host"
    assert event["run_id"] == RUN
    assert event["test"] == {"id": "tests/test_a.py::test_a", "outcome": "failed",
                             "message": "AssertionError: nope", "duration": 0.1}
    assert event["failures"] == [event["test"]]
    assert malformed(event) is None
    assert first_failure(store, REPO, sha)["id"] == "tests/test_a.py::test_a"
    # And another run of the commit (it died and ran again) makes none: once per commit
    store.client.delete(keys.lease(repo_id(REPO), sha))
    assert store.acquire(REPO, sha, "run-2", 30, "w2@host") == 2
    LiveResults(store, REPO, sha, "run-2")([failing("tests/test_d.py::test_d")])
    assert len(events(store)) == 1


def test_a_stale_run_stores_no_first_failure_and_makes_no_event(store: Store):
    # Given a commit another run holds now (this one lost its lease)
    sha = running(store, "b" * 40, run_id="the-live-run")
    LiveResults(store, REPO, sha, "a-stale-run")([failing()])
    assert first_failure(store, REPO, sha) is None and events(store) == []
    # Nor a run whose commit is reported already
    done = running(store, "c" * 40)
    store.client.set(keys.report(REPO, done), "{}")
    LiveResults(store, REPO, done, RUN)([failing()])
    assert first_failure(store, REPO, done) is None and events(store) == []
    # But the stream keeps every outcome, marked with its run
    assert store.client.xlen(keys.live(repo_id(REPO), sha)) == 1


def test_a_lapsed_lease_still_counts_when_no_other_run_took_the_commit(store: Store):
    sha = running(store, "d" * 40)
    store.client.delete(keys.lease(repo_id(REPO), sha))  # Redis stalled past its lifetime
    LiveResults(store, REPO, sha, RUN)([failing()])
    assert [e["kind"] for e in events(store)] == ["first-failure"]


def test_a_chunk_of_a_sharded_commit_is_its_run(store: Store):
    # Given a sharded commit: its lease held by the plan, chunk 1 by this run
    sha = running(store, "e" * 40, run_id="planner")
    rid = repo_id(REPO)
    store.client.set(keys.lease(rid, sha), keys.PLAN_HOLDER + "planner")
    store.client.hset(keys.plan(rid, sha), "k", 2)
    store.client.set(keys.chunk_lease(rid, sha, 1), "chunk-run")
    LiveResults(store, REPO, sha, "someone-else")([failing()])
    assert events(store) == []
    LiveResults(store, REPO, sha, "chunk-run")([failing()])
    assert [e["run_id"] for e in events(store)] == ["chunk-run"]


def test_no_branch_no_event_but_the_first_failure_is_kept(store: Store):
    sha = running(store, "f" * 40, branch=None)
    LiveResults(store, REPO, sha, RUN)([failing()])
    assert first_failure(store, REPO, sha)["run_id"] == RUN and events(store) == []


def test_hostile_ids_and_messages_are_bounded_in_the_event(store: Store):
    sha = running(store, "1" * 40)
    LiveResults(store, REPO, sha, RUN)([failing("t.py::" + "x" * 999,
                                                "\x1b[31m" + "boom " * 100 + "\nsecond")])
    (event,) = events(store)
    assert len(event["test"]["id"]) == 300 and len(event["test"]["message"]) == 200
    assert "second" not in event["test"]["message"]
    title = headline(event)
    assert len(title) < 200 and "\x1b" not in title and "\n" not in title


# -- Policy and delivery -------------------------------------------------------------------

def test_only_its_own_setting_sends_it_and_never_by_mail():
    assert LIVE_KINDS == ("first-failure",) and "first-failure" not in KINDS
    ons = ("change", "failure", "always", "never")
    assert [on for on in ons if wanted("first-failure", on)] == []
    assert [on for on in ons if wanted("first-failure", on, "webhook")] == [
        "change", "failure", "always"]
    assert not any(wanted("passed", on, "webhook") for on in ("change", "failure"))
    assert not mailed("first-failure") and all(mailed(k) for k in KINDS)


def test_a_repository_turns_it_on_or_off_over_the_setting(settings: Settings):
    on = Notify.parse({"first_failure": "webhook"}, "ops")
    assert targets.Targets.of(settings, on).first_failure == "webhook"
    off = Notify.parse({"first_failure": "off"}, "ops")
    assert targets.Targets.of(replace(settings, notify_first_failure="webhook"),
                              off).first_failure == "off"
    assert targets.Targets.of(settings, None).first_failure == "off"  # the default
    with pytest.raises(ConfigError, match="'notify.first_failure' must be \"off\" or"):
        Notify.parse({"first_failure": 1}, "ops")
    with pytest.raises(ConfigError, match="CIQ_NOTIFY_FIRST_FAILURE='mail' must be one of"):
        Settings.from_env({"CIQ_NOTIFY_FIRST_FAILURE": "mail"})


def test_it_goes_to_the_webhook_and_not_to_the_mailbox(
    store: Store, settings: Settings, receiver, smtp_server  # noqa: F811 - fixtures
):
    # Given a webhook and a mail address, first failures asked for
    hook = receiver()
    url, box = smtp_server
    s = replace(settings, webhook_url=hook.url, webhook_secret="s", smtp_url=url,
                notify_email="dev@example.org", notify_first_failure="webhook",
                web_url="http://ci.example.org")
    sha = running(store, "2" * 40)
    LiveResults(store, REPO, sha, RUN)([failing()])
    # When delivered
    assert Deliverer(store, s).run_once() == 1
    # Then the webhook got it, signed, with its headline and the commit's page; no mail
    (hit,) = hook.hits
    assert hit.headers["X-Ciq-Event"] == "first-failure"
    assert hit.headers["X-Ciq-Signature"] == targets.signature("s", hit.body)
    body = hit.json
    assert body["title"] == f"main first failure: tests/test_a.py::test_a at {'2' * 12} (lib)"
    assert body["url"] == f"http://ci.example.org/repos/{repo_id(REPO)}/commits/{sha}"
    assert box.messages == [] and not store.client.hlen(EVENTS)


def test_by_default_it_is_dropped_unsent(
    store: Store, settings: Settings, receiver  # noqa: F811 - a fixture
):
    hook = receiver()
    sha = running(store, "3" * 40)
    LiveResults(store, REPO, sha, RUN)([failing()])
    assert Deliverer(store, replace(settings, webhook_url=hook.url)).run_once() == 1
    assert hook.hits == [] and not store.client.hlen(EVENTS)


# -- A real worker -------------------------------------------------------------------------

@pytest.mark.slow
def test_a_real_run_posts_its_first_failure_long_before_its_report(
    make_repo, worker, store: Store, settings: Settings, receiver, smtp_server  # noqa: F811
):
    # Given a worker posting first failures to a webhook and mailing, and a suite whose
    # first test fails and whose other tests take 5 s
    repo = make_repo(EARLY_FAILURE)
    path, sha = str(repo.path), repo.head()
    hook = receiver(on_request=lambda: store.report(path, sha) is not None)
    smtp_url, box = smtp_server
    worker(CIQ_WEBHOOK_URL=hook.url, CIQ_NOTIFY_FIRST_FAILURE="webhook",
           CIQ_SMTP_URL=smtp_url, CIQ_NOTIFY_EMAIL="dev@example.org")
    # When it runs
    assert run_ciq(settings, "enqueue", path).returncode == 0
    report = wait_report(store, path, sha, timeout=60)
    wait_for(lambda: len(hook.hits) >= 2 and box.messages, 15, "both events")
    # Then the webhook heard of the first failure before the report was stored, then of
    # the report; the mailbox only of the report
    first, broken = hook.hits
    assert first.headers["X-Ciq-Event"] == "first-failure" and first.seen is False
    assert first.json["test"]["id"] == "tests/test_a.py::test_fails"
    assert "early on purpose" in first.json["test"]["message"]
    assert first.json["run_id"] == report.run_id
    assert broken.headers["X-Ciq-Event"] == "broken" and broken.seen is True
    assert broken.at - first.at > 3  # the other tests took 5 s
    assert [m["X-Ciq-Event"] for _, _, m in box.messages] == ["broken"]
