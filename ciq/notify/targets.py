"""Where notifications go and what they say there: webhooks (signed JSON) and mail.

Plain functions and data, no Redis and no network: :mod:`.delivery` sends them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .events import commit_url, headline

if TYPE_CHECKING:
    from ..repoconfig import Notify
    from ..settings import Settings


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
class Targets:
    """Where a repository's events go and which ones: the global targets and the
    repository's own (both get every event sent), under the repository's ``on`` if set."""

    on: str
    webhooks: tuple[Webhook, ...] = ()
    emails: tuple[str, ...] = ()
    #: Whether a first failure goes to the webhooks (one of settings.FIRST_FAILURE).
    first_failure: str = "off"

    @classmethod
    def of(cls, settings: Settings, notify: Notify | None) -> Targets:
        hooks: list[Webhook] = []
        if settings.webhook_url:
            hooks.append(Webhook(settings.webhook_url, settings.webhook_secret))
        if notify and notify.webhook and notify.webhook not in [h.url for h in hooks]:
            hooks.append(Webhook(notify.webhook, notify.secret or settings.webhook_secret))
        emails = list(settings.notify_emails)
        if notify:
            emails += [a for a in notify.email if a not in emails]
        on = (notify.on if notify and notify.on else None) or settings.notify_on
        first = (notify.first_failure if notify else None) or settings.notify_first_failure
        return cls(on, tuple(hooks), tuple(emails), first)

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
    elif event["status"] in ("passed", "flaky"):
        lines.append(f"{s.get('passed', 0)} of {s.get('total', 0)} tests passed"
                     + (", some only when rerun." if event["status"] == "flaky" else "."))
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
