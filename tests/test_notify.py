"""Notifications: the transition table, the messages, and real deliveries — a real HTTP
server and a real SMTP server (aiosmtpd) on 127.0.0.1 receiving what real workers and a
real Redis decide and send."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from ciq.errors import ConfigError
from ciq.notify import targets
from ciq.notify.delivery import Deliverer, backoff
from ciq.notify.events import KINDS, WANTED, headline, kind_of, wanted
from ciq.repoconfig import RepoConfig, from_checkout, operator_file
from ciq.report import Report, Summary, TestResult
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.events import event_of
from ciq.store.keys import DEAD, DUE, EVENTS, INFLIGHT, branch_state, repo_id
from ciq.urls import repo_name

from .helpers import PASSING, free_port, run_ciq, wait_for, wait_report

RED = {"tests/test_ok.py": "def test_ok():\n    assert 1 == 2, 'one is not two'\n"}
SECRET = "It's a Secret to Everybody"


# -- Real receivers -------------------------------------------------------------------------

@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    at: float
    #: What the receiver's ``on_request`` said when the request came (e.g. "was the
    #: report stored by then?").
    seen: Any = None

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver: an HTTP server on 127.0.0.1 in a thread of the test. Answers
    with ``codes`` in turn (then 200), after ``delay`` seconds for the first request."""

    codes: list[int] = field(default_factory=list)
    delay: float = 0.0
    on_request: Callable[[], Any] | None = None
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                seen = receiver.on_request() if receiver.on_request else None
                if receiver.delay and not receiver.hits:
                    time.sleep(receiver.delay)
                receiver.hits.append(Hit(dict(self.headers), body, time.monotonic(), seen))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/token-in-path"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


class Mailbox:
    """aiosmtpd handler keeping every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[str, Mailbox]]:
    """A real SMTP server on 127.0.0.1: its smtp:// URL and its mailbox."""
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield f"smtp://127.0.0.1:{port}", box
    finally:
        controller.stop()


# -- Pure parts -------------------------------------------------------------------------------

@pytest.mark.parametrize(("previous", "status", "kind"), [
    (None, "passed", "passed"),
    (None, "failed", "broken"),
    (None, "error", "broken"),
    ("passed", "passed", "passed"),
    ("passed", "failed", "broken"),
    ("passed", "timeout", "broken"),
    ("failed", "failed", "still-failing"),
    ("error", "timeout", "still-failing"),
    ("failed", "passed", "fixed"),
    ("timeout", "passed", "fixed"),
])  # fmt: skip
def test_transitions(previous: str | None, status: str, kind: str):
    assert kind_of(previous, status) == kind


def test_what_each_on_setting_sends():
    sent = {on: [k for k in KINDS if wanted(k, on)] for on in WANTED}
    assert sent == {
        "change": ["broken", "fixed"],
        "failure": ["broken", "still-failing", "fixed"],
        "always": ["broken", "still-failing", "fixed", "passed"],
        "never": [],
    }


def test_signature_is_githubs_hmac_sha256():
    # The example of GitHub's "Validating webhook deliveries" page.
    assert targets.signature(SECRET, b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


def test_backoff_doubles_up_to_64_base():
    assert [backoff(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 64, 64, 64]
    assert backoff(3, 0.5) == 2.0


def sample_event(**changes: Any) -> dict[str, Any]:
    report = Report(
        repo="/srv/git/lib.git", commit="abc123def4567890" * 2 + "abcdef01", branch="main",
        status="failed", summary=Summary(total=10, passed=6, failed=3, errors=1),
        tests=tuple(
            [TestResult(f"tests/test_x.py::test_{i}", "failed", 0.1,
                        f"AssertionError: {i} != 0\nmore detail") for i in range(3)]
            + [TestResult("tests/test_y.py::test_db", "error", 0.0, "ConnectionError: no db")]
            + [TestResult("tests/test_y.py::test_ok", "passed")]),
        finished_at="2024-05-01T10:00:00.000+00:00", duration=1.5, worker="w1@host",
    )  # fmt: skip
    event = event_of(report, "e1")
    event.update(kind="broken", subject="add red b", author="Dev",
                 previous={"status": "passed", "commit": "0123456789ab" * 3 + "0123",
                           "finished_at": "2024-05-01T09:00:00.000+00:00"})
    event.update(changes)
    return event


def test_email_subject_and_body_say_what_broke_and_link_to_the_commit():
    event = sample_event()
    msg = targets.email_message(event, "ci@example.org", ("dev@example.org",),
                               "https://ci.example.org/")
    assert msg["Subject"] == "[ciq] main broken: 4 failed at abc123def456 (lib)"
    assert msg["X-Ciq-Event"] == "broken" and msg["X-Ciq-Delivery"] == "e1"
    assert msg["Message-ID"] == "<ciq-e1@example.org>"
    body = msg.get_content()
    rid = repo_id("/srv/git/lib.git")
    for line in ("4 of 10 tests failed.", "Before: passed at 0123456789ab.",
                 "  tests/test_x.py::test_0", "      AssertionError: 0 != 0",
                 "  tests/test_y.py::test_db  (error)", "      ConnectionError: no db",
                 "Subject:    add red b", "Author:     Dev",
                 f"Report:     https://ci.example.org/repos/{rid}/commits/{event['commit']}"):
        assert line in body.splitlines(), line
    assert "more detail" not in body and "test_ok" not in body
    # The other kinds
    assert headline(sample_event(kind="fixed", status="passed",
                                        summary={"passed": 10, "total": 10})) == (
        "main fixed: 10 passed at abc123def456 (lib)")
    assert headline(sample_event(kind="still-failing", status="timeout")) == (
        "main still failing: timeout at abc123def456 (lib)")
    assert repo_name("https://git.example.org/team/service.git") == "service"
    assert repo_name("git@host:team/tool.git") == "tool"


def test_webhook_body_and_headers():
    event = sample_event()
    body = targets.webhook_body(event, None)
    data = json.loads(body)
    assert data["url"] is None and data["title"] == headline(event)
    headers = targets.webhook_headers(event, body, "s3")
    assert headers["X-Ciq-Signature"] == "sha256=" + hmac.new(
        b"s3", body, hashlib.sha256).hexdigest()
    assert "X-Ciq-Signature" not in targets.webhook_headers(event, body, None)


@pytest.mark.parametrize(("env", "message"), [
    ({"CIQ_NOTIFY_ON": "sometimes"},
     "CIQ_NOTIFY_ON='sometimes' must be one of change, failure, always, never"),
    ({"CIQ_WEBHOOK_URL": "ftp://hooks.example.org/x"},
     "CIQ_WEBHOOK_URL is not an http:// or https:// URL with a host"),
    ({"CIQ_WEB_URL": "ci.example.org"},
     "CIQ_WEB_URL is not an http:// or https:// URL with a host"),
    ({"CIQ_SMTP_URL": "imap://mail.example.org"}, "CIQ_SMTP_URL is not of the form smtp://"),
    ({"CIQ_SMTP_URL": "smtp://mail.example.org:x"}, "CIQ_SMTP_URL has a bad port"),
    ({"CIQ_NOTIFY_EMAIL": "dev@example.org"}, "CIQ_NOTIFY_EMAIL needs CIQ_SMTP_URL"),
    ({"CIQ_NOTIFY_EMAIL": "dev@example.org, nobody", "CIQ_SMTP_URL": "smtp://h"},
     "CIQ_NOTIFY_EMAIL: 'nobody' is not an address"),
    ({"CIQ_NOTIFY_TIMEOUT": "0"}, "CIQ_NOTIFY_TIMEOUT must be a positive number"),
])  # fmt: skip
def test_bad_notification_settings_are_one_line_errors(env: dict[str, str], message: str):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_settings_keep_secrets_out_of_their_repr():
    s = Settings.from_env({
        "CIQ_WEBHOOK_URL": "https://hooks.example.org/T0K3N", "CIQ_WEBHOOK_SECRET": "s3cr3t",
        "CIQ_SMTP_URL": "smtps://ci:pa%40ss@mail.example.org",
        "CIQ_NOTIFY_EMAIL": "a@x.org, b@y.org", "CIQ_NOTIFY_ON": "failure"})  # fmt: skip
    assert s.notify_emails == ("a@x.org", "b@y.org") and s.notify_on == "failure"
    for secret in ("T0K3N", "s3cr3t", "pa%40ss", "pa@ss"):
        assert secret not in repr(s)


def test_operator_file_notify_table(tmp_path: Path):
    path = tmp_path / "repos.toml"
    path.write_text('[[repo]]\nurl = "/srv/git/lib"\n[repo.notify]\n'
                    'webhook = "https://hooks.example.org/T0K3N"\nsecret = "s3cr3t"\n'
                    'email = ["dev@example.org"]\non = "failure"\n')
    (config,) = operator_file(path)
    assert config.notify is not None and config.notify.on == "failure"
    assert config.notify.email == ("dev@example.org",)
    assert "s3cr3t" not in repr(config) and "T0K3N" not in repr(config)
    again = RepoConfig.parse(config.to_dict(), "stored")
    assert again.notify == config.notify
    plan = targets.Targets.of(Settings(webhook_url="https://all.example.org/h",
                                       webhook_secret="global"), config.notify)
    assert [(h.url, h.secret) for h in plan.webhooks] == [
        ("https://all.example.org/h", "global"), ("https://hooks.example.org/T0K3N", "s3cr3t")]
    assert plan.on == "failure" and plan.emails == ("dev@example.org",)


@pytest.mark.parametrize(("table", "message"), [
    ('on = "sometimes"',
     "'notify.on' must be \"change\" or \"failure\" or \"always\" or \"never\", not 'sometimes'"),
    ('webhook = "file:///etc/passwd"', "'notify.webhook' must be an http:// or https:// URL"),
    ('email = "dev@example.org"', "'notify.email' must be a list of addresses"),
    ('secret = ""', "'notify.secret' must be a non-empty string"),
    ('channel = "#ci"',
     "unknown key 'notify.channel' (known: email, first_failure, on, secret, webhook)"),
])  # fmt: skip
def test_bad_notify_tables_are_one_line_errors(tmp_path: Path, table: str, message: str):
    path = tmp_path / "repos.toml"
    path.write_text(f'[[repo]]\nurl = "/srv/git/lib"\n[repo.notify]\n{table}\n')
    with pytest.raises(ConfigError) as info:
        operator_file(path)
    assert f"{path} [[repo]] #1: {message}" in str(info.value) and "\n" not in str(info.value)


def test_a_commit_may_not_set_notify(tmp_path: Path):
    (tmp_path / "ciq.toml").write_text('[notify]\nwebhook = "https://evil.example.org/"\n')
    with pytest.raises(ConfigError, match="ciq.toml: 'notify' may be set only in the "
                                          "operator's settings file"):
        from_checkout(tmp_path)


# -- The decision, in Redis -------------------------------------------------------------------

REPO = "/srv/git/lib"


def seen(store: Store, sha: str, branch: str | None = "main") -> None:
    """Record a commit as the observer would (its index score orders it)."""
    assert store.claim(REPO, sha, branch, {"subject": f"commit {sha[:4]}", "author": "Dev"})


def report(sha: str, status: str, branch: str | None = "main") -> Report:
    failed = status == "failed"
    tests = (TestResult("tests/test_a.py::test_a", "failed" if failed else "passed", 0.1,
                        "AssertionError: nope" if failed else ""),)
    return Report(repo=REPO, commit=sha, branch=branch, status=status, tests=tests,
                  summary=Summary.of(list(tests)), finished_at="2024-05-01T10:00:00.000+00:00")


def events(store: Store) -> list[dict[str, Any]]:
    ids = store.client.zrange(DUE, 0, -1)
    return [json.loads(store.client.hget(EVENTS, i)) for i in ids]


def test_each_report_of_a_branch_makes_one_event_decided_with_the_report(store: Store):
    shas = [c * 40 for c in "abcd"]
    for sha in shas:
        seen(store, sha)
    for sha, status in zip(shas, ["passed", "failed", "failed", "passed"], strict=True):
        assert store.finish(report(sha, status))
        # The same report again (a redelivered run, the outbox): not written, no event
        assert not store.finish(report(sha, status))
    got = events(store)
    assert [e["kind"] for e in got] == ["passed", "broken", "still-failing", "fixed"]
    assert [e["commit"] for e in got] == shas
    broken = got[1]
    assert broken["previous"]["status"] == "passed" and broken["previous"]["commit"] == shas[0]
    assert got[0]["previous"] is None
    assert broken["subject"] == "commit bbbb" and broken["author"] == "Dev"
    assert broken["failures"] == [{"id": "tests/test_a.py::test_a", "outcome": "failed",
                                   "message": "AssertionError: nope"}]
    assert broken["rid"] == repo_id(REPO) and broken["branch"] == "main"
    assert store.branch_state(REPO)["main"]["commit"] == shas[-1]


def test_a_late_report_of_an_older_commit_changes_nothing(store: Store):
    # Given two commits of main seen in order, the newer one reported first (failed)
    old, new = "1" * 40, "2" * 40
    seen(store, old)
    seen(store, new)
    assert store.finish(report(new, "failed"))
    # When the older one's report comes late (passed)
    assert store.finish(report(old, "passed"))
    # Then the branch stays broken at the newer commit: no "fixed" from old news
    assert [e["kind"] for e in events(store)] == ["broken"]
    state = store.branch_state(REPO)["main"]
    assert state["commit"] == new and state["status"] == "failed"


def test_reports_without_a_branch_make_no_event(store: Store):
    seen(store, "3" * 40, branch=None)
    assert store.finish(report("3" * 40, "failed", branch=None))
    assert events(store) == [] and store.branch_state(REPO) == {}


def test_a_damaged_branch_state_does_not_stop_the_report(store: Store):
    store.client.hset(branch_state(repo_id(REPO)), "main", "{not json")
    seen(store, "7" * 40)
    assert store.finish(report("7" * 40, "failed"))
    assert [(e["kind"], e["previous"]) for e in events(store)] == [("broken", None)]
    assert store.branch_state(REPO)["main"]["commit"] == "7" * 40


# -- Delivery in this process, to a real HTTP server ----------------------------------------

def one_broken_event(store: Store, sha: str = "4" * 40) -> str:
    seen(store, sha)
    assert store.finish(report(sha, "failed"))
    (event,) = events(store)
    return event["id"]


def test_an_event_claimed_by_a_worker_that_died_is_delivered_after_the_deadline(
    store: Store, settings: Settings, receiver
):
    hook = receiver()
    s = replace(settings, webhook_url=hook.url)
    event_id = one_broken_event(store)
    # Given a worker that claimed the event for 1 s and died before sending it
    dying = Deliverer(store, s, claim_ttl=1.0)
    assert dying.claim().id == event_id
    assert store.client.zscore(INFLIGHT, event_id) and not store.client.zcard(DUE)
    # Then nobody else takes it before its deadline...
    other = Deliverer(store, s)
    assert other.run_once() == 0 and hook.hits == []
    # ...and another worker delivers it once the deadline passed
    time.sleep(1.1)
    assert other.run_once() == 1
    (hit,) = hook.hits
    assert hit.headers["X-Ciq-Delivery"] == event_id and hit.json["kind"] == "broken"
    assert not store.client.hlen(EVENTS) and not store.client.zcard(INFLIGHT)


def test_a_retry_goes_only_to_the_targets_that_failed_and_the_repos_settings_count(
    store: Store, settings: Settings, receiver
):
    # Given a global webhook, and the operator's own webhook (and secret) for this
    # repository with on = "failure"; the repository's hook fails once
    everyone, own = receiver(), receiver(codes=[503])
    s = replace(settings, webhook_url=everyone.url, webhook_secret="global-secret")
    store.set_repo_config(REPO, "repos.toml", {"notify": {
        "webhook": own.url, "secret": "mine", "on": "failure"}})
    seen(store, "5" * 40)
    seen(store, "6" * 40)
    store.finish(report("5" * 40, "failed"))
    store.finish(report("6" * 40, "failed"))  # still failing: sent under on = "failure"
    deliverer = Deliverer(store, s, backoff=0.2)
    # When delivered, and once more after the backoff
    deliverer.run_once()
    time.sleep(0.3)
    deliverer.run_once()
    # Then each target got each event exactly once, signed with its own secret
    assert sorted(h.json["kind"] for h in everyone.hits) == ["broken", "still-failing"]
    assert sorted(h.json["kind"] for h in own.hits[1:]) == ["broken", "still-failing"]
    assert own.hits[0].headers["X-Ciq-Delivery"] in [h.headers["X-Ciq-Delivery"]
                                                     for h in own.hits[1:]]
    for hook, secret in ((everyone, "global-secret"), (own, "mine")):
        for hit in hook.hits:
            assert hit.headers["X-Ciq-Signature"] == targets.signature(secret, hit.body)
            assert secret not in hit.body.decode()
    assert not store.client.hlen(EVENTS)


def test_an_event_no_target_takes_is_given_up_and_kept(
    store: Store, settings: Settings, receiver, caplog: pytest.LogCaptureFixture
):
    hook = receiver(codes=[500] * 10)
    s = replace(settings, webhook_url=hook.url, webhook_secret="s3cr3t")
    event_id = one_broken_event(store)
    deliverer = Deliverer(store, s, backoff=0.01, max_tries=3)
    with caplog.at_level(logging.WARNING, logger="ciq.notify.delivery"):
        wait_for(lambda: deliverer.run_once() == 0 and store.client.llen(DEAD), 5,
                 "the event to be given up")
    assert len(hook.hits) == 3
    (dead,) = [json.loads(x) for x in store.client.lrange(DEAD, 0, -1)]
    assert dead["event"]["id"] == event_id and dead["tries"] == 3
    assert "answered HTTP 500" in dead["error"]
    assert not store.client.hlen(EVENTS) and not store.client.zcard(DUE)
    assert f"gave up on the broken event {event_id}" in caplog.text
    # The webhook's path and secret appear neither in the logs nor in Redis
    everything = caplog.text + json.dumps(dead)
    assert "token-in-path" not in everything and "s3cr3t" not in everything


def test_mail_reaches_the_smtp_server(store: Store, settings: Settings, smtp_server):
    url, box = smtp_server
    s = replace(settings, smtp_url=url, notify_email="dev@example.org",
                mail_from="ci@example.org", web_url="http://ci.example.org")
    store.set_repo_config(REPO, "repos.toml", {"notify": {"email": ["lead@example.org"]}})
    event_id = one_broken_event(store)
    assert Deliverer(store, s).run_once() == 1
    ((sender, rcpt, msg),) = box.messages
    assert sender == "ci@example.org" and rcpt == ["dev@example.org", "lead@example.org"]
    assert msg["Subject"] == "[ciq] main broken: 1 failed at 444444444444 (lib)"
    assert msg["X-Ciq-Delivery"] == event_id
    body = msg.get_content()
    assert "tests/test_a.py::test_a" in body and "AssertionError: nope" in body
    assert f"http://ci.example.org/repos/{repo_id(REPO)}/commits/{'4' * 40}" in body


# -- Real workers ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_branch_that_breaks_and_is_fixed_notifies_twice(
    make_repo, worker, store: Store, settings: Settings, receiver, smtp_server
):
    # Given a worker that posts to a webhook with a secret and mails through SMTP
    hook = receiver()
    smtp_url, box = smtp_server
    worker(CIQ_WEBHOOK_URL=hook.url, CIQ_WEBHOOK_SECRET=SECRET, CIQ_SMTP_URL=smtp_url,
           CIQ_NOTIFY_EMAIL="dev@example.org", CIQ_WEB_URL="http://ci.example.org")
    repo = make_repo(PASSING)
    name = str(repo.path)

    def test_commit(files: dict[str, str] | None, message: str) -> str:
        sha = repo.commit(files, message) if files else repo.head()
        assert run_ciq(settings, "enqueue", name).returncode == 0
        wait_report(store, name, sha)
        return sha

    # When main passes, fails, fails again and passes
    green = test_commit(None, "initial")
    red = test_commit(RED, "break it")
    test_commit({"tests/test_ok.py": RED["tests/test_ok.py"] + "\n"}, "still broken")
    fixed = test_commit(PASSING, "fix it")

    # Then the webhook got two posts: "broken" at the first red commit, "fixed" at the end
    wait_for(lambda: len(hook.hits) >= 2 and len(box.messages) >= 2, 15, "two notifications")
    time.sleep(1)  # nothing more comes
    assert [h.headers["X-Ciq-Event"] for h in hook.hits] == ["broken", "fixed"]
    broken, back = (h.json for h in hook.hits)
    assert broken["commit"] == red and broken["previous"]["commit"] == green
    assert broken["subject"] == "break it" and broken["author"] == "Dev"
    assert broken["failures"][0]["message"].startswith("AssertionError: one is not two")
    assert broken["url"] == f"http://ci.example.org/repos/{repo_id(name)}/commits/{red}"
    assert back["commit"] == fixed and back["previous"]["status"] == "failed"
    for hit in hook.hits:
        expected = hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(hit.headers["X-Ciq-Signature"], f"sha256={expected}")
        assert hit.headers["Content-Type"] == "application/json"
    # And the same two as mail
    subjects = [m["Subject"] for _, _, m in box.messages]
    assert subjects == [f"[ciq] main broken: 1 failed at {red[:12]} ({repo.path.name})",
                        f"[ciq] main fixed: 1 passed at {fixed[:12]} ({repo.path.name})"]
    assert "tests/test_ok.py::test_ok" in box.messages[0][2].get_content()


@pytest.mark.slow
def test_a_failing_webhook_is_retried_without_holding_up_the_run(
    make_repo, worker, store: Store, settings: Settings, receiver
):
    # Given a webhook that answers slowly and 500 twice, then 200
    repo = make_repo(RED)
    name, sha = str(repo.path), repo.head()
    hook = receiver(codes=[500, 500], delay=1.0,
                    on_request=lambda: store.report(name, sha) is not None)
    worker(CIQ_WEBHOOK_URL=hook.url)
    # When a red commit is tested
    assert run_ciq(settings, "enqueue", name).returncode == 0
    report_seen = wait_report(store, name, sha)
    # Then the report was stored before the first post came (the run did not wait), and
    # the event was posted three times with the same delivery id, backing off 1 s, 2 s
    wait_for(lambda: len(hook.hits) >= 3 and not store.client.hlen(EVENTS), 20,
             "the third post")
    assert report_seen.status == "failed" and all(h.seen for h in hook.hits)
    assert len({h.headers["X-Ciq-Delivery"] for h in hook.hits}) == 1
    gaps = [b.at - a.at for a, b in zip(hook.hits, hook.hits[1:], strict=False)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
    time.sleep(1)
    assert len(hook.hits) == 3

