"""Per-test statistics over a repository's last reported commits, and what the automatic
quarantine makes of them. Pure functions: no Redis (the reports come from
:mod:`ciq.store`, the entries from :mod:`ciq.store.quarantine`).

Rates come with a 95 % Wilson score interval, not a bare ratio: "1 flake in 3 runs" and
"300 in 900" are both 33 %, and only the second one says much. A test is *flaky* on a
commit only by same-commit evidence (it failed, then passed when rerun: :mod:`ciq.flaky`);
a deterministic regression or a break fixed later never is. The flip count across
commits stays, as *unstable*, for ranking only.

A *run* of a test is a report in which it passed, failed or errored (skipped and absent
are no evidence). It is *clean* when it passed at once: neither failing nor flaky.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .quarantine import Entry, Policy
from .report import Report

#: z of a two-sided 95 % interval.
Z95 = 1.959963984540054
#: Confidence of :func:`release_bound`.
CONFIDENCE = 0.95

_BAD = ("failed", "error")
_RAN = ("passed", *_BAD)


def _when(iso: str | None) -> datetime | None:
    try:
        then = datetime.fromisoformat(iso or "")
    except ValueError:
        return None
    return then if then.tzinfo else then.replace(tzinfo=UTC)


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a rate of ``hits`` in ``n`` trials (95 % by default);
    (0, 1) when there were none: nothing is known."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def release_bound(n: int, confidence: float = CONFIDENCE) -> float:
    """The upper bound of a flake rate after 0 failures in ``n`` runs: 1 - 0.05**(1/n) at
    95 %, about 3/n (the "rule of three"); 1 for no runs."""
    return 1.0 if n <= 0 else 1 - (1 - confidence) ** (1 / n)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0 to 100) of ``values``, linearly interpolated between
    the closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def flips(outcomes: Sequence[str | None]) -> int:
    """How often a test's outcome changed between passing and failing (skipped and not
    run are skipped over): the *unstable* score."""
    states = [o in _BAD for o in outcomes if o in _RAN]
    return sum(a != b for a, b in zip(states, states[1:], strict=False))


def percent(rate: float) -> str:
    """A rate as people read it: "9.5 %", "0.3 %"."""
    return f"{rate * 100:.1f} %" if rate >= 0.001 or rate == 0 else f"{rate * 100:.2f} %"


def bound_text(n: int) -> str:
    """"0 failures in 30 runs: flake rate below 9.5 % (95 % confidence)"."""
    return (f"0 failures in {n} runs: flake rate below {percent(release_bound(n))} "
            f"({CONFIDENCE:.0%} confidence)")


@dataclass(frozen=True)
class TestStats:
    """One test over the window; counts are of runs (see the module's docstring)."""

    id: str
    runs: int
    failures: int
    flakes: int
    unstable: int
    last_flaky: str | None
    last_failing: str | None
    p50: float | None
    p95: float | None
    #: Clean runs in a row, newest first.
    streak: int
    quarantine: dict[str, Any] | None = None

    __test__ = False  # not a pytest test class

    @property
    def flake_rate(self) -> float:
        return self.flakes / self.runs if self.runs else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.flakes, self.runs)

    def to_dict(self) -> dict[str, Any]:
        """The test as the API shows it."""
        low, high = self.interval
        return {"id": self.id, "runs": self.runs, "failures": self.failures,
                "flakes": self.flakes, "flake_rate": round(self.flake_rate, 4),
                "flake_interval": [round(low, 4), round(high, 4)],
                "unstable": self.unstable, "last_flaky": self.last_flaky,
                "last_failing": self.last_failing, "duration_p50": self.p50,
                "duration_p95": self.p95, "clean_streak": self.streak,
                "clean_bound": round(release_bound(self.streak), 4) if self.streak else None,
                "quarantine": self.quarantine}


def _run_of(report: Report, test: str) -> tuple[str, bool, float] | None:
    """(outcome, flaky, duration) of ``test`` in ``report``; None when it did not run."""
    found = next((t for t in report.tests if t.id == test), None)
    if found is None or found.outcome not in _RAN:
        return None
    return found.outcome, found.flaky, found.duration


def _indexed(reports: Sequence[Report]) -> dict[str, list[tuple[str, str, bool, float]]]:
    """Each test's runs, newest first: (commit, outcome, flaky, duration)."""
    runs: dict[str, list[tuple[str, str, bool, float]]] = {}
    for report in reports:
        for t in report.tests:
            runs.setdefault(t.id, []).append((report.commit, t.outcome, t.flaky, t.duration))
    return runs


def _state(reports: Sequence[Report], entry: Entry | None,
           now: datetime) -> dict[str, Any] | None:
    """A test's quarantine as the statistics show it: with, since the entry was made,
    its clean runs in a row and the bound they put on its flake rate (what releases an
    automatic entry)."""
    if entry is None:
        return None
    clean = clean_since(reports, entry.test, entry.added)
    return {"state": "in force" if entry.in_force(now) else "expired", "auto": entry.auto,
            "owner": entry.owner, "reason": entry.reason, "expires_at": entry.expires_at,
            "clean_runs": clean, "clean_bound": round(release_bound(clean), 4)}


def per_test(reports: Sequence[Report], entries: Mapping[str, Entry] | None = None,
               now: datetime | None = None) -> list[TestStats]:
    """Statistics of every test of ``reports`` (newest first), quarantine state from
    ``entries`` (by test id); the flakiest first, then the failing, then by id."""
    now = now or datetime.now(UTC)
    entries = entries or {}
    found = []
    for test, all_runs in _indexed(reports).items():
        ran = [r for r in all_runs if r[1] in _RAN]
        streak = next((i for i, r in enumerate(ran) if r[1] != "passed" or r[2]), len(ran))
        durations = [r[3] for r in ran]
        found.append(TestStats(
            id=test, runs=len(ran), failures=sum(r[1] in _BAD for r in ran),
            flakes=sum(r[2] for r in ran), unstable=flips([r[1] for r in all_runs]),
            last_flaky=next((r[0] for r in ran if r[2]), None),
            last_failing=next((r[0] for r in ran if r[1] in _BAD), None),
            p50=percentile(durations, 50), p95=percentile(durations, 95), streak=streak,
            quarantine=_state(reports, entries.get(test), now)))
    found.sort(key=lambda s: (-s.flakes, -s.failures, -s.unstable, s.id))
    return found


def repo_stats(reports: Sequence[Report]) -> dict[str, Any]:
    """Per repository: the share of commits with flakes (with its interval) and the
    seconds spent rerunning failing tests (``report.deflake["seconds"]``)."""
    flaky = sum(1 for r in reports if r.flaky)
    low, high = wilson(flaky, len(reports))
    seconds = sum(float(r.deflake.get("seconds") or 0.0) for r in reports)
    rerun = sum(1 for r in reports if r.deflake)
    return {"commits": len(reports), "flaky_commits": flaky,
            "flaky_share": round(flaky / len(reports), 4) if reports else 0.0,
            "flaky_interval": [round(low, 4), round(high, 4)],
            "rerun_commits": rerun, "rerun_seconds": round(seconds, 3),
            "rerun_seconds_per_commit": round(seconds / rerun, 3) if rerun else 0.0}


@dataclass(frozen=True)
class Suggestion:
    """A test the policy would quarantine: flaky on ``flaky`` of ``window`` commits."""

    test: str
    flaky: int
    window: int

    @property
    def reason(self) -> str:
        return f"auto: flaky on {self.flaky} of the last {self.window} commits"

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "flaky_commits": self.flaky, "window": self.window,
                "reason": self.reason}


@dataclass(frozen=True)
class Release:
    """An automatic entry the policy ends: ``clean`` runs in a row since it was made."""

    test: str
    clean: int

    @property
    def bound(self) -> float:
        return release_bound(self.clean)

    @property
    def reason(self) -> str:
        return f"auto-released: {bound_text(self.clean)}"

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "clean_runs": self.clean,
                "flake_rate_bound": round(self.bound, 4), "reason": self.reason}


def suggestions(reports: Sequence[Report], policy: Policy,
                entries: Mapping[str, Entry] | None = None,
                now: datetime | None = None) -> list[Suggestion]:
    """Tests flaky on at least ``policy.flaky_commits`` distinct commits of the newest
    ``policy.window`` reports and not quarantined now; none in mode "off". A test whose
    newest ``release_after`` runs are clean is left alone: it would be released at once
    (it was fixed, or its flakes are old)."""
    if policy.mode == "off":
        return []
    now = now or datetime.now(UTC)
    entries = entries or {}
    window = list(reports[: policy.window])
    runs = _indexed(window)
    found = []
    for s in per_test(window):
        flaky_on = len({c for c, _, flaky, _ in runs[s.id] if flaky})
        held = s.id in entries and entries[s.id].in_force(now)
        if flaky_on >= policy.flaky_commits and not held and s.streak < policy.release_after:
            found.append(Suggestion(s.id, flaky_on, len(window)))
    return sorted(found, key=lambda g: (-g.flaky, g.test))


def clean_since(reports: Sequence[Report], test: str, since: datetime) -> int:
    """Clean runs in a row of ``test``, newest first, among the reports finished after
    ``since`` (a report without a finish time is not counted)."""
    streak = 0
    for report in reports:
        finished = _when(report.finished_at)
        if finished is None or finished <= since:
            break
        run = _run_of(report, test)
        if run is None:
            continue
        outcome, flaky, _ = run
        if outcome != "passed" or flaky:
            break
        streak += 1
    return streak


def releases(reports: Sequence[Report], policy: Policy, entries: Mapping[str, Entry],
             now: datetime | None = None) -> list[Release]:
    """Automatic entries in force whose test ran clean ``policy.release_after`` times in
    a row since the entry was made; never a person's entry; none in mode "off"."""
    if policy.mode == "off":
        return []
    now = now or datetime.now(UTC)
    found = []
    for test, e in sorted(entries.items()):
        if not e.auto or not e.in_force(now):
            continue
        clean = clean_since(reports, test, e.added)
        if clean >= policy.release_after:
            found.append(Release(test, clean))
    return found
