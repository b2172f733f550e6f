"""Quarantine: tests an operator muted, with an owner, a reason and an expiry.

A quarantined test still runs and its outcome is kept as it was; it only stops deciding
its commit's status. This module is pure (no Redis): what an entry is and what a valid
one looks like (:func:`entry`), and what a report becomes under the entries in force
(:func:`apply`). The entries live in Redis (:mod:`ciq.store.quarantine`).

Only test failures are muted. A run that could not check the commit (``error``: a
collection error, an environment build, lost tests; ``timeout``) keeps its status, and
so does a ``failed`` run with tests that did not run (fail fast) or that failed for
another reason than its tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import BadInput, ConfigError
from .report import Report
from .urls import email_problem

#: Days an entry lasts when not told.
DEFAULT_DAYS = 30
#: Days an entry may last at most: a test muted for longer than a year is a deleted test.
MAX_DAYS = 365
#: Characters of an entry's reason, and of its owner's address.
MAX_REASON_CHARS = 500
MAX_OWNER_CHARS = 254
#: Entries one repository may have (the worker reads them all for each report).
MAX_ENTRIES = 1000
#: Days an expired entry is still listed (as expired) before it is deleted.
PRUNE_AFTER_DAYS = 30

#: Who an automatic entry names (:class:`Policy`): never an e-mail address, so no entry
#: a person made through :func:`entry` is ever taken for one.
AUTO_OWNER = "ciq"
AUTO_BY = "ciq auto-quarantine"
#: Modes of a repository's automatic quarantine: "suggest" only shows candidates (the
#: default: muting a test is a person's call until they opt in), "auto" quarantines and
#: releases them, "off" neither.
MODES = ("suggest", "auto", "off")
#: Reported commits the automatic quarantine looks at most (each is a whole report).
MAX_WINDOW = 100

#: The message a run's verdict writes for failing tests (:func:`ciq.runner.outcome.verdict`,
#: the merge of a sharded run): recounted here without the quarantined ones.
_COUNTED = re.compile(r"^\d+ of \d+ tests failed$")
_FAILING = ("failed", "error")


@dataclass(frozen=True)
class Entry:
    """One quarantined test of a repository."""

    test: str
    owner: str
    reason: str
    added_at: str
    expires_at: str
    added_by: str = ""

    def in_force(self, now: datetime | None = None) -> bool:
        return _time(self.expires_at) > (now or datetime.now(UTC))

    @property
    def auto(self) -> bool:
        """Made by the automatic quarantine (and so released by it); a person's never."""
        return self.owner == AUTO_OWNER and self.added_by == AUTO_BY

    @property
    def added(self) -> datetime:
        """When the entry was made (an unreadable time: long ago)."""
        return _time(self.added_at)

    def prunable(self, now: datetime | None = None) -> bool:
        """Expired for :data:`PRUNE_AFTER_DAYS` or more: no longer worth listing."""
        gone = _time(self.expires_at) + timedelta(days=PRUNE_AFTER_DAYS)
        return gone <= (now or datetime.now(UTC))

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """The entry as the CLI's JSON and the API show it, with its state."""
        return {"test": self.test, "owner": self.owner, "reason": self.reason,
                "added_at": self.added_at, "expires_at": self.expires_at,
                "added_by": self.added_by, "auto": self.auto,
                "state": "in force" if self.in_force(now) else "expired"}

    def stored(self) -> dict[str, str]:
        """What Redis keeps (the test id is the field's name)."""
        return {"owner": self.owner, "reason": self.reason, "added_at": self.added_at,
                "expires_at": self.expires_at, "added_by": self.added_by}

    @classmethod
    def from_stored(cls, test: str, data: Mapping[str, Any]) -> Entry:
        return cls(test=test, owner=str(data.get("owner", "")),
                   reason=str(data.get("reason", "")), added_at=str(data.get("added_at", "")),
                   expires_at=str(data.get("expires_at", "")),
                   added_by=str(data.get("added_by", "")))

    def mark(self) -> dict[str, str]:
        """What a report keeps of the entry that muted one of its tests."""
        return {"owner": self.owner, "reason": self.reason, "expires_at": self.expires_at}


def _time(iso: str) -> datetime:
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)  # unreadable: never in force
    return then if then.tzinfo else then.replace(tzinfo=UTC)


def check_test_id(test: str) -> str:
    """A test id as reports spell it (``tests/test_x.py::test_y[1]``), or :class:`BadInput`."""
    from .junit import MAX_ID_CHARS  # here: `ciq --help` need not load the XML parsers

    if not test or test != test.strip():
        raise BadInput("a test id must not be empty nor start or end with spaces; "
                       "give it as `ciq report` shows it (tests/test_x.py::test_y)")
    if len(test) > MAX_ID_CHARS:
        raise BadInput(f"a test id has at most {MAX_ID_CHARS} characters (this one has "
                       f"{len(test)})")
    if not test.isprintable():
        raise BadInput("a test id must be printable text (no control characters)")
    return test


def entry(test: str, owner: str, reason: str, days: int = DEFAULT_DAYS, added_by: str = "",
          now: datetime | None = None) -> Entry:
    """A new entry from what an operator gave; :class:`BadInput` names what is wrong."""
    check_test_id(test)
    owner = owner.strip()
    problem = email_problem(owner)
    if problem or len(owner) > MAX_OWNER_CHARS:
        raise BadInput(f"owner {owner[:80]!r} {problem or 'is too long'}: give the e-mail "
                       "address of who looks after the test")
    reason = " ".join(reason.split())
    if not reason:
        raise BadInput("give a reason: why the test is muted (a ticket, what flakes)")
    if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise BadInput(f"a reason is one line of at most {MAX_REASON_CHARS} printable "
                       "characters")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise BadInput(f"days must be a whole number from 1 to {MAX_DAYS} (not {days!r})")
    start = now or datetime.now(UTC)
    end = start + timedelta(days=days)
    return Entry(test, owner, reason, start.isoformat(timespec="seconds"),
                 end.isoformat(timespec="seconds"), added_by[:200])


def auto_entry(test: str, flaky: int, window: int, days: int = DEFAULT_DAYS,
               now: datetime | None = None) -> Entry:
    """The entry the automatic quarantine makes for a test flaky on ``flaky`` of the last
    ``window`` reported commits."""
    start = now or datetime.now(UTC)
    end = start + timedelta(days=days)
    return Entry(test, AUTO_OWNER, f"auto: flaky on {flaky} of the last {window} commits",
                 start.isoformat(timespec="seconds"), end.isoformat(timespec="seconds"),
                 AUTO_BY)


#: Keys of a ``[repo.quarantine]`` table: (what it holds, smallest, largest).
_POLICY_KEYS: dict[str, tuple[str, int, int]] = {
    "flaky_commits": ("distinct commits a test flaked on to be a candidate", 1, MAX_WINDOW),
    "window": ("reported commits looked at", 1, MAX_WINDOW),
    "release_after": ("consecutive clean runs that release an automatic entry", 1,
                      MAX_WINDOW),
    "days": ("days an automatic entry lasts", 1, MAX_DAYS),
}


@dataclass(frozen=True)
class Policy:
    """A repository's automatic quarantine (``[repo.quarantine]`` of the operator's
    file): tests that flaked on ``flaky_commits`` distinct commits of the newest
    ``window`` reported ones are candidates; an automatic entry ends after
    ``release_after`` consecutive runs without a failure. Manual entries are never
    touched."""

    mode: str = "suggest"
    flaky_commits: int = 3
    window: int = 50
    release_after: int = 30
    days: int = DEFAULT_DAYS

    @classmethod
    def parse(cls, data: Any, source: str) -> Policy:
        """The policy of a ``quarantine`` table; :class:`ConfigError` names the bad key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: 'quarantine' must be a table with mode, "
                              "flaky_commits, window, release_after, days")
        for key, value in data.items():
            if key == "mode":
                if value not in MODES:
                    raise ConfigError(f"{source}: 'quarantine.mode' must be one of "
                                      f"{', '.join(MODES)}, not {value!r}")
                continue
            if key not in _POLICY_KEYS:
                known = ", ".join(sorted(["mode", *_POLICY_KEYS]))
                raise ConfigError(f"{source}: unknown key 'quarantine.{key}' (known: "
                                  f"{known})")
            what, low, high = _POLICY_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    low <= value <= high):
                raise ConfigError(f"{source}: 'quarantine.{key}' ({what}) must be a whole "
                                  f"number from {low} to {high}, not {value!r}")
        policy = cls(**data)
        if policy.flaky_commits > policy.window:
            raise ConfigError(f"{source}: 'quarantine.flaky_commits' ({policy.flaky_commits}) "
                              f"must not exceed 'quarantine.window' ({policy.window})")
        return policy

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "flaky_commits": self.flaky_commits,
                "window": self.window, "release_after": self.release_after,
                "days": self.days}

    @property
    def reads(self) -> int:
        """Reported commits to read: the window, and enough for a release's streak."""
        return min(MAX_WINDOW, max(self.window, self.release_after))


def plural(n: int) -> str:
    return f"{n} quarantined failure{'' if n == 1 else 's'}"


def apply(report: Report, entries: Mapping[str, Entry]) -> Report:
    """``report`` with the failures of its quarantined tests (``entries``: those in force,
    by test id) no longer deciding its status. The tests keep their outcomes;
    ``report.quarantined`` names the quarantined ones that ran (any outcome).

    Every failing test quarantined: ``passed``, "passed, N quarantined failures".
    Otherwise the status the other tests give, with the quarantined failures counted
    apart in the message. ``error`` and ``timeout`` are never changed, nor a ``failed``
    run with tests that did not run or an exit status other than pytest's "tests failed".
    Applying it twice with the same entries changes nothing more.
    """
    marks = {t.id: entries[t.id].mark() for t in report.tests if t.id in entries}
    out = report.replace(quarantined=marks)
    if report.status not in ("passed", "failed"):
        return out
    failing = [t for t in report.tests if t.outcome in _FAILING]
    muted = sum(1 for t in failing if t.id in marks)
    real = len(failing) - muted
    total = report.summary.total
    if report.status == "passed":
        if real and report.shards:
            # A chunk muted before its entry was removed: a merged run's own pytest
            # passes only without failures, so these are real.
            return out.replace(status="failed", message=_counted(real, total, muted))
        if muted and not report.message:
            return out.replace(message=f"passed, {plural(muted)}")
        return out
    if not muted:
        return out
    if not real and not report.not_run and report.exit_code in (None, 1):
        return out.replace(status="passed", message=f"passed, {plural(muted)}")
    if _COUNTED.match(report.message) and real:
        return out.replace(message=_counted(real, total, muted))
    if plural(muted) in report.message:
        return out
    return out.replace(message=f"{report.message}; {plural(muted)}" if report.message
                       else plural(muted))


def _counted(real: int, total: int, muted: int) -> str:
    return f"{real} of {total} tests failed" + (f", and {plural(muted)}" if muted else "")


def until(iso: str, now: datetime | None = None) -> str:
    """When an entry ends, as "in 29d" or "expired 3d ago"."""
    now = now or datetime.now(UTC)
    seconds = (_time(iso) - now).total_seconds()
    span = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if span >= size or unit == "s":
            text = f"{int(span // size)}{unit}"
            break
    return f"in {text}" if seconds > 0 else f"expired {text} ago"
