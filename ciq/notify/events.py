"""Notification events: what a branch's new report means, and the headline that says so.

Plain functions and data, no Redis and no network: :mod:`ciq.store.events` keeps the
events, :mod:`.targets` makes the messages, :mod:`.delivery` sends them.

When a final report of a commit on a branch is stored, the same atomic step in Redis
(``lua/finish.lua`` of :mod:`ciq.store`) compares it with the branch's previous report
and queues one **event** of a kind:

==================  ===============================  ===============================
previous report     new report passed                new report not passed
==================  ===============================  ===============================
none (first)        ``passed``                       ``broken``
passed              ``passed``                       ``broken``
not passed          ``fixed``                        ``still-failing``
==================  ===============================  ===============================

"Not passed" is `failed`, `error` or `timeout`; `flaky` counts as passed. Whether an
event is sent depends on the ``on`` setting (CIQ_NOTIFY_ON, or a repository's
``notify.on``), read when it is delivered: ``change`` sends `broken` and `fixed`;
``failure`` also `still-failing`; ``always`` every event; ``never`` none.

An event is JSON (see :func:`ciq.store.events.event_of`, completed by the script with
``kind``, ``previous``, ``subject`` and ``author``). It holds no secret: secrets are read
from the settings when a message is sent.

One more kind comes before any report: ``first-failure``, made once per commit when a
run (not a stale one) stores the commit's first failing test (:mod:`ciq.store.live`),
seconds after it failed. It says ``status`` ``running`` and names the test in ``test``
(and in ``failures``). It is opt-in and for webhooks only: sent when
``CIQ_NOTIFY_FIRST_FAILURE`` (or the repository's ``notify.first_failure``) is
``webhook`` and ``on`` is not ``never``; never by mail, so nobody gets two mails per
broken commit.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ..text import printable
from ..urls import repo_name

# -- Kinds and policy ------------------------------------------------------------------------

#: Kinds of event, as in the X-Ciq-Event header.
KINDS = ("broken", "still-failing", "fixed", "passed")

#: Statuses that keep a branch green: `flaky` ("passed with flakes") is not a break, so
#: it sends no `broken` event (its report still names the tests that flaked).
GREEN = frozenset({"passed", "flaky"})

#: Kinds of event made while a commit runs, before its report (:mod:`ciq.store.live`).
LIVE_KINDS = ("first-failure",)

#: Kinds sent to webhooks only, never mailed: an early word is for chat and bots; the
#: report's own event mails the verdict a few minutes later.
WEBHOOK_ONLY = frozenset(LIVE_KINDS)

#: The kinds each ``on`` setting sends.
WANTED: dict[str, frozenset[str]] = {
    "change": frozenset({"broken", "fixed"}),
    "failure": frozenset({"broken", "still-failing", "fixed"}),
    "always": frozenset(KINDS),
    "never": frozenset(),
}


def kind_of(previous: str | None, status: str) -> str:
    """The kind of event of a branch's new report with ``status`` after one with status
    ``previous`` (None: the branch's first). ``lua/finish.lua`` does the same in Redis."""
    was_red = previous is not None and previous not in GREEN
    if status in GREEN:
        return "fixed" if was_red else "passed"
    return "still-failing" if was_red else "broken"


def wanted(kind: str, on: str, first_failure: str = "off") -> bool:
    """Whether an event of ``kind`` is sent under the ``on`` setting; a live one (a first
    failure) when ``first_failure`` asks for it too."""
    if kind in LIVE_KINDS:
        return first_failure != "off" and on != "never"
    return kind in WANTED[on]


def mailed(kind: str) -> bool:
    """Whether an event of ``kind`` may go by mail (when :func:`wanted`)."""
    return kind not in WEBHOOK_ONLY


#: What every message says of an event: text, always there (see ``lua/finish.lua``).
FIELDS = ("id", "repo", "rid", "branch", "commit", "status", "kind")


def malformed(event: Any) -> str | None:
    """Why a stored event can never be delivered (not a JSON object, a field of
    :data:`FIELDS` missing or not text, an unknown kind), or None."""
    if not isinstance(event, dict):
        return "not a JSON object"
    for name in FIELDS:
        if not isinstance(event.get(name), str):
            return f"{name!r} is {event.get(name)!r}, not a string"
    if event["kind"] not in KINDS + LIVE_KINDS:
        return f"unknown kind {event['kind']!r}"
    return None


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
    if event["status"] == "flaky":
        return f"{s.get('passed', 0)} passed with flakes"
    if event["status"] == "failed":
        bad = s.get("failed", 0) + s.get("errors", 0)
        return f"{bad} failed" if bad else "failed"
    return str(event["status"])


#: Characters of a test id a headline shows.
HEADLINE_ID = 120


def headline(event: dict[str, Any]) -> str:
    """One line: ``main broken: 3 failed at abc123def456 (lib)``; for a first failure
    ``main first failure: tests/test_x.py::test_y at abc123def456 (lib)``."""
    if event["kind"] == "first-failure":
        test = event.get("test")
        raw = test.get("id") if isinstance(test, dict) else None
        name = printable(str(raw or "a test")).replace("\n", " ")
        if len(name) > HEADLINE_ID:
            name = name[: HEADLINE_ID - 1] + "…"
        return (f"{event['branch']} first failure: {name} at {event['commit'][:12]} "
                f"({repo_name(event['repo'])})")
    words = {"broken": "broken", "still-failing": "still failing", "fixed": "fixed",
             "passed": "passed"}[event["kind"]]
    outcome = _outcome(event)
    what = f"{event['branch']} {words}"
    if event["kind"] != "passed":
        what += f": {outcome}"
    return f"{what} at {event['commit'][:12]} ({repo_name(event['repo'])})"
