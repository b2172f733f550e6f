"""Delivering notification events: webhooks and mail, from a thread of every worker.

Events wait in the due set (see :mod:`ciq.store.events` for how they are made). A worker's
delivery thread (started by its housekeeping bootstep, never in the pool, so no test run
waits for a webhook) claims one due event at a time: one script moves it from the due
set to the in-flight set, scored by a deadline. The thread sends it to every target,
then deletes it; if a target fails (a connection error, a non-2xx answer, an SMTP error)
the event goes back to the due set with exponential backoff (1, 2, 4 … 64 s), and after
:data:`MAX_TRIES` failed tries into the dead list, logged. An unexpected error (a bug, a
damaged detail of an event) is a failed try like these; an event that cannot be read at
all goes to the dead list at once. A worker that dies holding an event loses nothing:
once the claim's deadline passes, any delivery thread claims it again. Delivery is thus
at least once; a receiver drops copies by ``X-Ciq-Delivery`` (a mail's Message-ID is the
same on each try too). Targets that took an event are remembered, so a retry sends only
to those that failed.
"""

from __future__ import annotations

import http.client
import logging
import os
import smtplib
import ssl
import threading
import urllib.error
import urllib.request
from typing import Any

import redis

from ..errors import ConfigError, DeliveryError
from ..repoconfig import RepoConfig
from ..settings import Settings
from ..store.events import Claimed, Events
from ..store.keys import DEAD
from ..store.store import Store
from ..urls import SmtpURL, repo_name
from . import targets
from .events import mailed, malformed, wanted
from .targets import Targets, Webhook

logger = logging.getLogger(__name__)

#: Seconds before the first retry of a failed event; each next one waits twice as long.
BACKOFF = 1.0
#: The longest wait between two tries, in backoffs: 64 × 1 s.
MAX_BACKOFF = 64
#: Failed tries of an event before it is given up (1 + 2 + … + 64 s = about 2 minutes).
MAX_TRIES = 8
#: Seconds a claim lasts at least: a worker that died holding an event is replaced after
#: that long. It must outlast one event's delivery (two webhooks and a mail, each up to
#: CIQ_NOTIFY_TIMEOUT), or another worker would send a second copy meanwhile.
MIN_CLAIM = 60.0


def backoff(tries: int, base: float = BACKOFF) -> float:
    """Seconds to wait after the ``tries``-th failed try: base, 2 base, … 64 base."""
    return base * min(2 ** (tries - 1), MAX_BACKOFF)


# -- Senders ---------------------------------------------------------------------------------

class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect of a POST would be followed as a GET without the body: a 3xx is an error.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def post_webhook(hook: Webhook, event: dict[str, Any], web_url: str | None,
                 timeout: float) -> None:
    """POST the event to a webhook; raises DeliveryError unless it answers 2xx."""
    body = targets.webhook_body(event, web_url)
    request = urllib.request.Request(hook.url, data=body, method="POST",
                                     headers=targets.webhook_headers(event, body, hook.secret))
    try:
        with _opener.open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:  # the message names no URL: it may hold a token
        raise DeliveryError(f"cannot connect ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"failed ({type(exc).__name__}: {exc})") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"answered HTTP {status}")


def send_mail(smtp: SmtpURL, sender: str, recipients: tuple[str, ...],
              event: dict[str, Any], web_url: str | None, timeout: float) -> None:
    """Send the event's mail; raises DeliveryError if the server took it for nobody."""
    message = targets.email_message(event, sender, recipients, web_url)
    try:
        client: smtplib.SMTP
        if smtp.scheme == "smtps":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout,
                                      context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
        with client:
            if smtp.scheme == "smtp+starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                client.login(smtp.username, smtp.password or "")
            refused = client.send_message(message, from_addr=sender, to_addrs=list(recipients))
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"failed ({type(exc).__name__}: {exc})") from None
    if refused:  # some took it: a retry would send the others a second copy
        logger.warning("notify: mail of event %s refused for %s", event["id"],
                       ", ".join(sorted(refused)))


# -- The delivery thread ------------------------------------------------------------------------

class Deliverer:
    """Claims due events and sends them. One per worker; as many as you like at once.

    ``backoff``, ``max_tries`` and ``claim_ttl`` (seconds; default from the settings) are
    the module's constants unless given (tests make them short).
    """

    def __init__(self, store: Store, settings: Settings, *, backoff: float = BACKOFF,
                 max_tries: int = MAX_TRIES, claim_ttl: float | None = None) -> None:
        self.store = store
        self.settings = settings
        self.backoff = backoff
        self.max_tries = max_tries
        self.claim_ttl = claim_ttl or max(MIN_CLAIM, 4 * settings.notify_timeout)
        self.smtp = SmtpURL.parse(settings.smtp_url) if settings.smtp_url else None
        self.sender = settings.mail_from or f"ciq@{os.uname().nodename}"
        self.events = Events(store.client)

    # -- the due set ---------------------------------------------------------------------

    def claim(self, ttl: float | None = None) -> Claimed | None:
        """Take one due event (or one whose claim expired) for ``ttl`` seconds."""
        return self.events.claim(ttl or self.claim_ttl)

    def ack(self, claimed: Claimed) -> None:
        self.events.ack(claimed)

    def _fail(self, claimed: Claimed, errors: list[str]) -> None:
        tries = claimed.tries + 1
        delay = backoff(tries, self.backoff)
        error = "; ".join(errors)
        outcome = self.events.retry(claimed, tries, error, delay, tries >= self.max_tries)
        what = f"{claimed.event['kind']} event {claimed.id} of {self._about(claimed.event)}"
        if outcome == 2:
            logger.error("notify: gave up on the %s after %d tries (kept in %s): %s",
                         what, tries, DEAD, error)
        elif outcome == 1:
            logger.warning("notify: %s; try %d of %d in %gs: %s", what, tries + 1,
                           self.max_tries, delay, error)

    @staticmethod
    def _about(event: dict[str, Any]) -> str:
        return f"{repo_name(event['repo'])} {event['branch']} {event['commit'][:12]}"

    # -- sending -------------------------------------------------------------------------

    def targets_of(self, repo: str) -> Targets:
        """The targets and ``on`` of a repository: the settings, and the operator's
        ``[repo.notify]`` as stored in Redis now."""
        stored = self.store.repo_config(repo)
        own = None
        if stored is not None:
            try:
                own = RepoConfig.parse(stored[1], stored[0]).notify
            except ConfigError as exc:
                logger.warning("notify: ignoring the stored settings of %s: %s", repo, exc)
        return Targets.of(self.settings, own)

    def deliver(self, claimed: Claimed) -> bool:
        """Send a claimed event to every target that has not taken it yet, then delete it
        (True), or schedule its next try or set it aside (False).

        An unexpected error is a failed try like any: it backs off, and is given up after
        ``max_tries``, rather than stop the pass and come back at every claim's deadline.
        An event that cannot be read at all (see :func:`.events.malformed`) goes to the
        dead list at once, unsent and as it was stored: no retry would mend it, and there
        an operator sees what was stored. Redis away stops the pass: the claim expires
        and the event is tried again then."""
        problem = malformed(claimed.event)
        if problem is not None:
            if self.events.set_aside(claimed, f"malformed event: {problem}"):
                logger.error("notify: set aside the malformed event %s (kept in %s): %s",
                             claimed.id, DEAD, problem)
            return False
        try:
            errors = self._send(claimed)
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # not this event's fault: no try is counted
        except Exception as exc:
            logger.exception("notify: unexpected error delivering event %s", claimed.id)
            errors = [f"unexpected {type(exc).__name__}: {exc}"]
        if errors:
            self._fail(claimed, errors)
            return False
        self.ack(claimed)
        return True

    def _send(self, claimed: Claimed) -> list[str]:
        """Send the event to the targets that want it and have not taken it yet; returns
        the errors of those that failed."""
        event = claimed.event
        to = self.targets_of(event["repo"])
        if not wanted(event["kind"], to.on, to.first_failure):
            return []
        web_url, timeout = self.settings.web_url, self.settings.notify_timeout
        errors = []
        for hook in to.webhooks:
            if hook.name in claimed.sent:
                continue
            try:
                post_webhook(hook, event, web_url, timeout)
            except Exception as exc:
                errors.append(self._failure(claimed, f"webhook {hook.shown}", exc))
            else:
                claimed.sent.append(hook.name)
                logger.info("notify: sent the %s event %s of %s to webhook %s", event["kind"],
                            claimed.id, self._about(event), hook.shown)
        if to.emails and to.mail_name not in claimed.sent and mailed(event["kind"]):
            if self.smtp is None:
                logger.error("notify: cannot mail the %s event %s of %s: CIQ_SMTP_URL is not "
                             "set on this worker", event["kind"], claimed.id, self._about(event))
            else:
                try:
                    send_mail(self.smtp, self.sender, to.emails, event, web_url, timeout)
                except Exception as exc:
                    where = f"mail through {self.smtp.host}:{self.smtp.port}"
                    errors.append(self._failure(claimed, where, exc))
                else:
                    claimed.sent.append(to.mail_name)
                    logger.info("notify: mailed the %s event %s of %s to %s", event["kind"],
                                claimed.id, self._about(event), ", ".join(to.emails))
        return errors

    @staticmethod
    def _failure(claimed: Claimed, target: str, exc: Exception) -> str:
        """What a failed send to ``target`` says in the log and in Redis. Not only a
        DeliveryError: a bug or a damaged detail of the event fails this target's try
        alike, and the other targets still get the event."""
        if isinstance(exc, DeliveryError):
            return f"{target} {exc}"
        logger.error("notify: unexpected error sending event %s to %s", claimed.id, target,
                     exc_info=exc)
        return f"{target} failed unexpectedly ({type(exc).__name__}: {exc})"

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Deliver every event due now; returns how many were tried."""
        count = 0
        while not (stop and stop.is_set()):
            claimed = self.claim()
            if claimed is None:
                break
            count += 1
            self.deliver(claimed)
        return count

    def run(self, stop: threading.Event, interval: float) -> None:
        """Deliver due events every ``interval`` seconds until ``stop`` is set."""
        while True:
            try:
                self.run_once(stop)
            except Exception as exc:  # Redis away...: log, try next time (a claimed event
                # is claimed again once its deadline passes)
                logger.warning("notify: delivery pass failed: %s", exc,
                               exc_info=not isinstance(exc, redis.RedisError))
            if stop.wait(interval):
                return
