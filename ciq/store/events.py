"""Notification events in Redis: the event a stored report makes, and the due set that
delivery threads claim events from (:mod:`ciq.notify.delivery` sends them).

The final-report script (``lua/finish.lua``) makes at most one event per report, in the
same atomic step that stores it: what :func:`event_of` says of the report, completed by
the script with ``kind`` (see :mod:`ciq.notify.events`), ``previous``, ``subject`` and
``author``. An event holds no secret: secrets are read from the settings when it is
sent. Claims expire: a worker that dies holding an event loses nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..report import Report
from ..text import first_line
from . import keys
from .scripts import EVENT_ACK, EVENT_CLAIM, EVENT_RETRY, register

#: Failing tests an event lists (the report has them all).
MAX_FAILURES = 20
#: Characters of a failing test's message kept (its first line).
MESSAGE_CHARS = 200
#: Events kept in the dead list at most, newest first.
DEAD_CAP = 1000


def ms(seconds: float = 0.0) -> int:
    """Milliseconds since the epoch, ``seconds`` from now: the scores of the due set."""
    return int((time.time() + seconds) * 1000)


def new_event_id() -> str:
    """Time first: events due in the same millisecond are then claimed in order."""
    return f"{keys.now_us():014x}{uuid.uuid4().hex[:18]}"


def event_of(report: Report, event_id: str) -> dict[str, Any]:
    """What the event of a report says of the report itself (the script adds the rest)."""
    failing = [t for t in report.tests if t.outcome in ("failed", "error")]
    return {
        "id": event_id,
        "repo": report.repo,
        "rid": keys.repo_id(report.repo),
        "branch": report.branch or "",
        "commit": report.commit,
        "status": report.status,
        "message": first_line(report.message, MESSAGE_CHARS),
        "summary": {"total": report.summary.total, "passed": report.summary.passed,
                    "failed": report.summary.failed, "errors": report.summary.errors,
                    "skipped": report.summary.skipped},
        "failures": [{"id": t.id, "outcome": t.outcome,
                      "message": first_line(t.message, MESSAGE_CHARS)}
                     for t in failing[:MAX_FAILURES]],
        "duration": report.duration,
        "worker": report.worker or "",
        "finished_at": report.finished_at or "",
    }  # fmt: skip


@dataclass
class Claimed:
    """An event one delivery thread holds until its claim's deadline."""

    id: str
    #: The stored event: a JSON object, unless damaged (then whatever was stored, the
    #: text itself if it is not JSON; delivery sets such an event aside).
    event: Any
    tries: int = 0
    #: Names of the targets that took it already (a retry sends to the others only).
    sent: list[str] = field(default_factory=list)


class Events:
    """The due set of notification events."""

    _QUEUES = [keys.DUE, keys.INFLIGHT, keys.EVENTS, keys.PROGRESS]

    def __init__(self, client: Any) -> None:
        self._claim = register(client, EVENT_CLAIM)
        self._ack = register(client, EVENT_ACK)
        self._retry = register(client, EVENT_RETRY)

    def claim(self, ttl: float) -> Claimed | None:
        """Take one due event (or one whose claim expired) for ``ttl`` seconds."""
        found = self._claim(keys=self._QUEUES, args=[ms(), ms(ttl)])
        if not found:
            return None
        event_id, raw, progress = found
        try:
            event = json.loads(raw)
        except ValueError:
            event = raw
        try:
            done = json.loads(progress) if progress else {}
            return Claimed(event_id, event, int(done.get("tries", 0)),
                           [str(name) for name in done.get("sent", [])])
        except (ValueError, TypeError, AttributeError):
            # Damaged progress: tried afresh (a target may get a copy: at least once).
            return Claimed(event_id, event)

    def ack(self, claimed: Claimed) -> None:
        """The event was delivered everywhere: it goes."""
        self._ack(keys=self._QUEUES, args=[claimed.id])

    def retry(self, claimed: Claimed, tries: int, error: str, delay: float,
              give_up: bool) -> int:
        """Due again in ``delay`` seconds, or (``give_up``) into the dead list. Returns 0
        when the event is gone (delivered by another worker after this claim expired), 1
        when rescheduled, 2 when given up on."""
        progress = {"tries": tries, "sent": claimed.sent, "error": error}
        dead = {"event": claimed.event, "tries": tries, "sent": claimed.sent, "error": error,
                "given_up_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return int(self._retry(
            keys=[*self._QUEUES, keys.DEAD],
            args=[claimed.id, json.dumps(progress), ms(delay), int(give_up),
                  json.dumps(dead), DEAD_CAP]))  # fmt: skip

    def set_aside(self, claimed: Claimed, error: str) -> int:
        """Into the dead list at once, as it was stored: an event delivery cannot read
        (no retry would mend it). Returns what :meth:`retry` does."""
        return self.retry(claimed, claimed.tries, error, 0.0, give_up=True)
