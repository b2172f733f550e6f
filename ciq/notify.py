"""Notifications: what a branch's new report means, and the messages that say so.

Plain functions and data, no Redis and no network; :mod:`ciq.delivery` sends them.

When a final report of a commit on a branch is stored, the same atomic step in Redis
(``_FINISH`` in :mod:`ciq.store`) compares it with the branch's previous report and
queues one **event** of a kind:

==================  ===============================  ===============================
previous report     new report passed                new report not passed
==================  ===============================  ===============================
none (first)        ``passed``                       ``broken``
passed              ``passed``                       ``broken``
not passed          ``fixed``                        ``still-failing``
==================  ===============================  ===============================

"Not passed" is `failed`, `error` or `timeout`. Whether an event is sent depends on the
``on`` setting (CIQ_NOTIFY_ON, or a repository's ``notify.on``), read when it is
delivered: ``change`` sends `broken` and `fixed`; ``failure`` also `still-failing`;
``always`` every event; ``never`` none.

An event is JSON (see :func:`event_of`, completed by the script with ``kind``,
``previous``, ``subject`` and ``author``). It holds no secret: secrets are read from the
settings when a message is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from .keys import repo_id

if TYPE_CHECKING:
    from .repoconfig import Notify
    from .report import Report
    from .settings import Settings

# -- Redis keys (see the table in ciq.store) -----------------------------------------------

#: Hash per repository (append the rid): branch → its newest report (JSON).
BRANCH_STATE = "ciq:branch-state:"
#: Hash: event id → event (JSON).
EVENTS = "ciq:notify:events"
#: Zset: event id scored by when it is due (ms since the epoch).
DUE = "ciq:notify:due"
#: Zset: event id scored by the deadline of the worker that claimed it (ms).
INFLIGHT = "ciq:notify:inflight"
#: Hash: event id → {tries, sent, error} of an event that failed before (JSON).
PROGRESS = "ciq:notify:progress"
#: List: events given up on, newest first (JSON), at most DEAD_CAP of them.
DEAD = "ciq:notify:dead"
DEAD_CAP = 1000

# -- Kinds and policy ------------------------------------------------------------------------

#: Kinds of event, as in the X-Ciq-Event header.
KINDS = ("broken", "still-failing", "fixed", "passed")

#: The kinds each ``on`` setting sends.
WANTED: dict[str, frozenset[str]] = {
    "change": frozenset({"broken", "fixed"}),
    "failure": frozenset({"broken", "still-failing", "fixed"}),
    "always": frozenset(KINDS),
    "never": frozenset(),
}

#: Failing tests an event lists (the report has them all).
MAX_FAILURES = 20
#: Characters of a failing test's message kept (its first line).
MESSAGE_CHARS = 200


def kind_of(previous: str | None, status: str) -> str:
    """The kind of event of a branch's new report with ``status`` after one with status
    ``previous`` (None: the branch's first). The Lua of ``_FINISH`` does the same."""
    was_red = previous is not None and previous != "passed"
    if status == "passed":
        return "fixed" if was_red else "passed"
    return "still-failing" if was_red else "broken"


def wanted(kind: str, on: str) -> bool:
    """Whether an event of ``kind`` is sent under the ``on`` setting."""
    return kind in WANTED[on]


# -- Events ----------------------------------------------------------------------------------

def _first_line(text: str) -> str:
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line[:MESSAGE_CHARS - 1] + "…" if len(line) > MESSAGE_CHARS else line


def event_of(report: Report, event_id: str) -> dict[str, Any]:
    """What the event of a report says of the report itself (the store adds the rest)."""
    failing = [t for t in report.tests if t.outcome in ("failed", "error")]
    return {
        "id": event_id,
        "repo": report.repo,
        "rid": repo_id(report.repo),
        "branch": report.branch or "",
        "commit": report.commit,
        "status": report.status,
        "message": _first_line(report.message),
        "summary": {"total": report.summary.total, "passed": report.summary.passed,
                    "failed": report.summary.failed, "errors": report.summary.errors,
                    "skipped": report.summary.skipped},
        "failures": [{"id": t.id, "outcome": t.outcome, "message": _first_line(t.message)}
                     for t in failing[:MAX_FAILURES]],
        "duration": report.duration,
        "worker": report.worker or "",
        "finished_at": report.finished_at or "",
    }  # fmt: skip


def repo_name(repo: str) -> str:
    """A repository's short name: the last part of its path or URL, without ``.git``."""
    path = urlsplit(repo).path if "://" in repo else repo
    last = path.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return last.removesuffix(".git") or repo


def commit_url(web_url: str | None, rid: str, sha: str) -> str | None:
    """The commit's page in `ciq web` (CIQ_WEB_URL), if ciq knows where that is."""
    if not web_url:
        return None
    return f"{web_url.rstrip('/')}/repos/{quote(rid)}/commits/{quote(sha)}"


def _outcome(event: dict[str, Any]) -> str:
    """A few words on the new report: "3 failed", "error", "timeout", "12 passed"."""
    s = event.get("summary", {})
    if event["status"] == "passed":
        return f"{s.get('passed', 0)} passed"
    if event["status"] == "failed":
        bad = s.get("failed", 0) + s.get("errors", 0)
        return f"{bad} failed" if bad else "failed"
    return str(event["status"])


def headline(event: dict[str, Any]) -> str:
    """One line: ``main broken: 3 failed at abc123def456 (lib)``."""
    words = {"broken": "broken", "still-failing": "still failing", "fixed": "fixed",
             "passed": "passed"}[event["kind"]]
    outcome = _outcome(event)
    what = f"{event['branch']} {words}"
    if event["kind"] != "passed":
        what += f": {outcome}"
    return f"{what} at {event['commit'][:12]} ({repo_name(event['repo'])})"


# -- Targets ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Webhook:
    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """A name of this target for Redis and logs that reveals no token."""
        return "webhook:" + hashlib.sha256(self.url.encode()).hexdigest()[:12]

    @property
    def shown(self) -> str:
        """Where it goes, for logs: the host only (a path may be a token)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


@dataclass(frozen=True)
class Plan:
    """Where a repository's events go and which ones: the global targets and the
    repository's own (both get every event sent), under the repository's ``on`` if set."""

    on: str
    webhooks: tuple[Webhook, ...] = ()
    emails: tuple[str, ...] = ()

    @classmethod
    def of(cls, settings: Settings, notify: Notify | None) -> Plan:
        hooks: list[Webhook] = []
        if settings.webhook_url:
            hooks.append(Webhook(settings.webhook_url, settings.webhook_secret))
        if notify and notify.webhook and notify.webhook not in [h.url for h in hooks]:
            hooks.append(Webhook(notify.webhook, notify.secret or settings.webhook_secret))
        emails = list(settings.notify_emails)
        if notify:
            emails += [a for a in notify.email if a not in emails]
        on = (notify.on if notify and notify.on else None) or settings.notify_on
        return cls(on, tuple(hooks), tuple(emails))

    @property
    def mail_name(self) -> str:
        return "email:" + hashlib.sha256(",".join(sorted(self.emails)).encode()).hexdigest()[:12]


# -- Messages ----------------------------------------------------------------------------------

def webhook_body(event: dict[str, Any], web_url: str | None) -> bytes:
    """The JSON a webhook receives: the event, its headline, and the commit's page."""
    body = {**event, "title": headline(event),
            "url": commit_url(web_url, event["rid"], event["commit"])}
    return json.dumps(body, sort_keys=True).encode()


def signature(secret: str, body: bytes) -> str:
    """``X-Ciq-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the body (GitHub's
    X-Hub-Signature-256 scheme): a receiver computes it over the raw body it got and
    compares with :func:`hmac.compare_digest`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_headers(event: dict[str, Any], body: bytes, secret: str | None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "ciq-notify",
        "X-Ciq-Event": event["kind"],
        # The same on every try: a receiver that got it already can drop the copy.
        "X-Ciq-Delivery": event["id"],
    }
    if secret:
        headers["X-Ciq-Signature"] = signature(secret, body)
    return headers


def email_text(event: dict[str, Any], web_url: str | None) -> str:
    """The plain-text body of a notification mail."""
    s = event.get("summary", {})
    lines = [headline(event), ""]
    if event["status"] == "failed" and s.get("total"):
        lines.append(f"{s.get('failed', 0) + s.get('errors', 0)} of {s['total']} tests failed.")
    elif event["status"] == "passed":
        lines.append(f"{s.get('passed', 0)} of {s.get('total', 0)} tests passed.")
    if event.get("message"):
        lines.append(event["message"])
    previous = event.get("previous")
    if previous:
        lines.append(f"Before: {previous.get('status')} at {str(previous.get('commit'))[:12]}.")
    else:
        lines.append(f"This is the first report of {event['branch']}.")
    failures = event.get("failures") or []
    if failures:
        lines += ["", "Failing tests:"]
        for t in failures:
            lines.append(f"  {t['id']}" + ("  (error)" if t.get("outcome") == "error" else ""))
            if t.get("message"):
                lines.append(f"      {t['message']}")
        more = s.get("failed", 0) + s.get("errors", 0) - len(failures)
        if more > 0:
            lines.append(f"  … and {more} more")
    link = commit_url(web_url, event["rid"], event["commit"])
    lines += [
        "",
        f"Commit:     {event['commit']}",
        f"Subject:    {event.get('subject') or '-'}",
        f"Author:     {event.get('author') or '-'}",
        f"Branch:     {event['branch']}",
        f"Repository: {event['repo']}",
        f"Worker:     {event.get('worker') or '-'} ({float(event.get('duration') or 0):.2f} s)",
    ]
    if link:
        lines.append(f"Report:     {link}")
    return "\n".join(lines) + "\n"


def email_message(event: dict[str, Any], sender: str, recipients: tuple[str, ...],
                  web_url: str | None) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"[ciq] {headline(event)}"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=True)
    # The same on every try, like X-Ciq-Delivery: mail readers show a copy once.
    msg["Message-ID"] = f"<ciq-{event['id']}@{sender.rpartition('@')[2]}>"
    msg["X-Ciq-Event"] = event["kind"]
    msg["X-Ciq-Delivery"] = event["id"]
    msg.set_content(email_text(event, web_url))
    return msg
