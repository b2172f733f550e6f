"""Delivering notification events: webhooks and mail, from a thread of every worker.

Events wait in the due set (see :mod:`ciq.notify` for how they are made). A worker's
delivery thread (started by its housekeeping bootstep, never in the pool, so no test run
waits for a webhook) claims one due event at a time: one script moves it from the due
set to the in-flight set, scored by a deadline. The thread sends it to every target,
then deletes it; if a target fails (a connection error, a non-2xx answer, an SMTP error)
the event goes back to the due set with exponential backoff (1, 2, 4 … 64 s), and after
:data:`MAX_TRIES` failed tries into the dead list, logged. A worker that dies holding an
event loses nothing: once the claim's deadline passes, any delivery thread claims it
again. Delivery is thus at least once; a receiver drops copies by ``X-Ciq-Delivery``
(a mail's Message-ID is the same on each try too). Targets that took an event are
remembered, so a retry sends only to those that failed.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import smtplib
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import redis

from . import notify
from .errors import CiqError, ConfigError
from .notify import DEAD, DEAD_CAP, DUE, EVENTS, INFLIGHT, PROGRESS, Plan, Webhook
from .repoconfig import RepoConfig
from .settings import Settings, SmtpURL
from .store import Store

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


class DeliveryError(CiqError):
    """Raised when a target did not take a notification; it is tried again later."""


# KEYS: due, inflight, events, progress. ARGV: now (ms), deadline (ms). Claims the oldest
# event whose claim expired (its worker died) or else the first due one: [id, event,
# progress], or nothing.
_CLAIM = """
local id = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1)[1]
if not id then id = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)[1] end
if not id then return nil end
redis.call('ZREM', KEYS[1], id)
local event = redis.call('HGET', KEYS[3], id)
if not event then redis.call('ZREM', KEYS[2], id); return nil end
redis.call('ZADD', KEYS[2], ARGV[2], id)
return {id, event, redis.call('HGET', KEYS[4], id) or ''}
"""

# KEYS: due, inflight, events, progress. ARGV: id.
_ACK = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return redis.call('HDEL', KEYS[3], ARGV[1])
"""

# KEYS: due, inflight, events, progress, dead. ARGV: id, progress json, due (ms), give up
# (1/0), dead entry json, dead cap. Returns 0 when the event is gone (another worker,
# after our claim expired, delivered it), 1 when rescheduled, 2 when given up.
_RETRY = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('LPUSH', KEYS[5], ARGV[5])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[6]) - 1)
  return 2
end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


def _ms(seconds: float = 0.0) -> int:
    return int((time.time() + seconds) * 1000)


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
    body = notify.webhook_body(event, web_url)
    request = urllib.request.Request(hook.url, data=body, method="POST",
                                     headers=notify.webhook_headers(event, body, hook.secret))
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
    message = notify.email_message(event, sender, recipients, web_url)
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

@dataclass
class Claimed:
    """An event this thread holds until its claim's deadline."""

    id: str
    event: dict[str, Any]
    tries: int = 0
    sent: list[str] = field(default_factory=list)


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
        client = store.client
        self._claim = client.register_script(_CLAIM)
        self._ack = client.register_script(_ACK)
        self._retry = client.register_script(_RETRY)

    # -- the due set ---------------------------------------------------------------------

    def claim(self, ttl: float | None = None) -> Claimed | None:
        """Take one due event (or one whose claim expired) for ``ttl`` seconds."""
        found = self._claim(keys=[DUE, INFLIGHT, EVENTS, PROGRESS],
                            args=[_ms(), _ms(ttl or self.claim_ttl)])
        if not found:
            return None
        event_id, raw, progress = found
        done = json.loads(progress) if progress else {}
        return Claimed(event_id, json.loads(raw), int(done.get("tries", 0)),
                       list(done.get("sent", [])))

    def ack(self, claimed: Claimed) -> None:
        self._ack(keys=[DUE, INFLIGHT, EVENTS, PROGRESS], args=[claimed.id])

    def _fail(self, claimed: Claimed, errors: list[str]) -> None:
        tries = claimed.tries + 1
        give_up = tries >= self.max_tries
        delay = backoff(tries, self.backoff)
        error = "; ".join(errors)
        progress = {"tries": tries, "sent": claimed.sent, "error": error}
        dead = {"event": claimed.event, "tries": tries, "sent": claimed.sent, "error": error,
                "given_up_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        outcome = self._retry(
            keys=[DUE, INFLIGHT, EVENTS, PROGRESS, DEAD],
            args=[claimed.id, json.dumps(progress), _ms(delay), int(give_up),
                  json.dumps(dead), DEAD_CAP],
        )  # fmt: skip
        what = f"{claimed.event['kind']} event {claimed.id} of {self._about(claimed.event)}"
        if outcome == 2:
            logger.error("notify: gave up on the %s after %d tries (kept in %s): %s",
                         what, tries, DEAD, error)
        elif outcome == 1:
            logger.warning("notify: %s; try %d of %d in %gs: %s", what, tries + 1,
                           self.max_tries, delay, error)

    @staticmethod
    def _about(event: dict[str, Any]) -> str:
        return f"{notify.repo_name(event['repo'])} {event['branch']} {event['commit'][:12]}"

    # -- sending -------------------------------------------------------------------------

    def plan_for(self, repo: str) -> Plan:
        """The targets and ``on`` of a repository: the settings, and the operator's
        ``[repo.notify]`` as stored in Redis now."""
        stored = self.store.repo_config(repo)
        own = None
        if stored is not None:
            try:
                own = RepoConfig.parse(stored[1], stored[0]).notify
            except ConfigError as exc:
                logger.warning("notify: ignoring the stored settings of %s: %s", repo, exc)
        return Plan.of(self.settings, own)

    def deliver(self, claimed: Claimed) -> bool:
        """Send a claimed event to every target that has not taken it yet, then delete it
        (True) or schedule its next try (False)."""
        event = claimed.event
        plan = self.plan_for(event["repo"])
        if not notify.wanted(event["kind"], plan.on):
            self.ack(claimed)
            return True
        web_url, timeout = self.settings.web_url, self.settings.notify_timeout
        errors = []
        for hook in plan.webhooks:
            if hook.name in claimed.sent:
                continue
            try:
                post_webhook(hook, event, web_url, timeout)
            except DeliveryError as exc:
                errors.append(f"webhook {hook.shown} {exc}")
            else:
                claimed.sent.append(hook.name)
                logger.info("notify: sent the %s event %s of %s to webhook %s", event["kind"],
                            claimed.id, self._about(event), hook.shown)
        if plan.emails and plan.mail_name not in claimed.sent:
            if self.smtp is None:
                logger.error("notify: cannot mail the %s event %s of %s: CIQ_SMTP_URL is not "
                             "set on this worker", event["kind"], claimed.id, self._about(event))
            else:
                try:
                    send_mail(self.smtp, self.sender, plan.emails, event, web_url, timeout)
                except DeliveryError as exc:
                    errors.append(f"mail through {self.smtp.host}:{self.smtp.port} {exc}")
                else:
                    claimed.sent.append(plan.mail_name)
                    logger.info("notify: mailed the %s event %s of %s to %s", event["kind"],
                                claimed.id, self._about(event), ", ".join(plan.emails))
        if errors:
            self._fail(claimed, errors)
            return False
        self.ack(claimed)
        return True

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
