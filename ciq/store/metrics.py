"""What happens to commits, counted in Redis by the steps where it happens, so that any
`ciq web` reads the whole cluster's figures (``/metrics``, :mod:`ciq.web.metrics`).

Each repository has one hash (``keys.metrics``). The Lua steps write it in the same
atomic step as the event they count, so a claim, a run or a report is counted exactly
once, whichever host made it:

- ``claim.lua``: ``c:enqueued``;
- ``acquire.lua``: ``c:attempt:<reason>`` (one of :data:`ATTEMPT_REASONS`) and, for a
  commit's first run, the queue wait (its lease taken, less its claim);
- ``finish.lua``: whatever :func:`finish_args` says of the report (its status, run and
  environment setup seconds, cache hit or miss, shard imbalance, the verdicts of its
  failing tests, its quarantined failures, its reruns and their seconds) and the times
  from the claim: to the report (the report stored, less the claim) and to the first
  failure (the same, less the seconds the run went on after its first failure).

A counter is the field ``c:<name>`` or ``c:<name>:<label value>``; a histogram has one
field per bucket, ``h:<name>:<upper bound>`` (counts per bucket, not cumulative: the
reader adds them up) and ``h:<name>:sum``. Label values are a fixed set per counter:
never a SHA, a test id or a process id. Something new to count goes in the same way: a
name in :data:`COUNTERS` or :data:`HISTOGRAMS`, and a count or an observation in
:func:`finish_args` (or a reason in :data:`ATTEMPT_REASONS`).

Gauges (queues, waiting commits, runs, workers) are read at scrape time (:mod:`.scrape`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..flaky import VERDICTS
from ..report import STATUSES, Report
from ..urls import redacted

#: Why a run of a commit starts: its first run; a rerun after its worker died (the
#: watcher or the sweeper counted the death); a rerun after its last run's lease lapsed
#: or was given back with no report and no death seen (a Redis stall, a host that went
#: silent, a stopped worker); a rerun of failing tests to tell a flake (one per pytest
#: run, counted with the report).
ATTEMPT_REASONS = ("first", "worker_lost", "lease_lapsed", "deflake")
#: Environment setups: a cached environment, or one built for the run.
CACHE = ("hit", "miss")

#: Counters: the label each one has and its values (None: no label).
COUNTERS: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "enqueued": None,
    "outcome": ("status", STATUSES),
    "attempt": ("reason", ATTEMPT_REASONS),
    "environment": ("cache", CACHE),
    # One per failing test rerun to tell a flake from a break (ciq.flaky).
    "deflaked": ("verdict", VERDICTS),
    # Failing tests that were quarantined: they decided nothing.
    "quarantined_failures": None,
}

#: Seconds, the buckets of the time histograms: from a warm cache to an hour's wait.
_SECONDS = ("0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "120", "300", "600",
            "1800", "3600")
#: Histograms: the upper bounds of their buckets (strings, as they name hash fields).
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "queue_wait": _SECONDS,
    "time_to_report": _SECONDS,
    "run_seconds": _SECONDS,
    "setup_seconds": _SECONDS,
    # From the claim to the first failing test's outcome (commits with a failure only).
    "time_to_first_failure": _SECONDS,
    # Seconds a commit's reruns of failing tests took (commits with reruns only).
    "rerun_seconds": _SECONDS,
    # The longest chunk's seconds over the mean chunk's (1: perfectly even).
    "imbalance": ("1.05", "1.1", "1.25", "1.5", "2", "3", "5"),
}


def acquire_args() -> str:
    """What ``acquire.lua`` is given to count a queue wait: its buckets (JSON)."""
    return json.dumps(HISTOGRAMS["queue_wait"])


def finish_args(report: Report) -> str:
    """What ``finish.lua`` counts of a report once it is stored (JSON): counters to add
    one to (a name as often as it counts), observations ([histogram, value, bounds]),
    times from the claim to a moment this many seconds before the report
    ([histogram, seconds, bounds]) and the buckets of the time to report, which the
    script times itself."""
    count = [f"outcome:{report.status}"]
    observe: list[list[Any]] = [["run_seconds", float(report.duration)]]
    hit = report.environment.get("cache_hit")
    if isinstance(hit, bool):
        count.append(f"environment:{'hit' if hit else 'miss'}")
    setup = report.timings.get("setup")
    if isinstance(setup, int | float):
        observe.append(["setup_seconds", float(setup)])
    count += [f"deflaked:{t.verdict}" for t in report.tests if t.verdict in VERDICTS]
    count += ["quarantined_failures" for t in report.tests
              if t.id in report.quarantined and t.outcome in ("failed", "error")]
    runs, rerun = _number(report.deflake.get("runs")), _number(report.deflake.get("seconds"))
    if runs is not None and rerun is not None:
        count += ["attempt:deflake"] * min(int(runs), 1000)
        observe.append(["rerun_seconds", rerun])
    # The run went on for this long after its first failure (its own clock, from the
    # run's start; then the reruns): the script takes it off the time to the report.
    first = _number(report.timings.get("first_failure"))
    after: list[list[Any]] = [] if first is None else [
        ["time_to_first_failure", max(0.0, report.duration - first) + (rerun or 0.0)]]
    imbalance = report.shards.get("imbalance")
    if isinstance(imbalance, int | float) and not isinstance(imbalance, bool):
        observe.append(["imbalance", float(imbalance)])
    for item in observe + after:
        item.append(HISTOGRAMS[str(item[0])])
    return json.dumps({"count": count, "observe": observe, "before_report": after,
                       "time_to_report": HISTOGRAMS["time_to_report"]})


def _number(value: Any) -> float | None:
    """``value`` when it is a number of seconds or runs (not negative), else None."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else None


@dataclass(frozen=True)
class Histogram:
    #: Cumulative counts, one per bound of :data:`HISTOGRAMS` and then +Inf.
    buckets: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return self.buckets[-1]


@dataclass(frozen=True)
class RepoMetrics:
    repo: str
    #: Counter name → label value ('' for none) → value; every declared value is there.
    counters: dict[str, dict[str, int]]
    histograms: dict[str, Histogram]


def parse(repo: str, fields: dict[str, str]) -> RepoMetrics:
    """One repository's hash as counters and histograms, with only the declared names and
    label values (anything else in the hash is ignored: the series stay bounded)."""
    counters: dict[str, dict[str, int]] = {
        name: {v: 0 for v in (label[1] if label else ("",))} for name, label in COUNTERS.items()}
    raw: dict[str, list[float]] = {n: [0.0] * (len(b) + 2) for n, b in HISTOGRAMS.items()}
    for name, value in fields.items():
        kind, _, rest = name.partition(":")
        what, _, label = rest.partition(":")
        try:
            number = float(value)
        except ValueError:
            continue
        if kind == "c" and label in counters.get(what, {}):
            counters[what][label] = int(number)
        elif kind == "h" and what in raw:
            slot = _slot(HISTOGRAMS[what], label)
            if slot is not None:
                raw[what][slot] += number
    histograms = {}
    for name, counts in raw.items():
        total, cumulative = 0, []
        for n in counts[:-1]:
            total += int(n)
            cumulative.append(total)
        histograms[name] = Histogram(tuple(cumulative), counts[-1])
    return RepoMetrics(redacted(repo), counters, histograms)


def _slot(bounds: tuple[str, ...], label: str) -> int | None:
    """Where a hash field of a histogram goes: a bucket's index, len(bounds) for +Inf,
    len(bounds) + 1 for the sum. A bound that is no longer one (the buckets changed)
    falls in the first bucket that holds it."""
    if label == "sum":
        return len(bounds) + 1
    if label in bounds:
        return bounds.index(label)
    try:
        le = float(label)
    except ValueError:
        return None
    return next((i for i, b in enumerate(bounds) if le <= float(b)), len(bounds))


