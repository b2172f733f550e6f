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

from .errors import BadInput
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

    def prunable(self, now: datetime | None = None) -> bool:
        """Expired for :data:`PRUNE_AFTER_DAYS` or more: no longer worth listing."""
        gone = _time(self.expires_at) + timedelta(days=PRUNE_AFTER_DAYS)
        return gone <= (now or datetime.now(UTC))

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """The entry as the CLI's JSON and the API show it, with its state."""
        return {"test": self.test, "owner": self.owner, "reason": self.reason,
                "added_at": self.added_at, "expires_at": self.expires_at,
                "added_by": self.added_by,
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
