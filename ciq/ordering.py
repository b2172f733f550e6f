"""Likely failures first: the order a commit's tests run in, so that a break shows in the
first seconds of a run rather than at its end. Every test still runs; only the order
changes. Plain data and functions, standard library only: the worker gathers the hints
(:mod:`ciq.worker.hints`), the runner hands them to the in-box plugin
(:mod:`ciq.runner.selection`, which carries its own copy of :func:`order`, since nothing of
ciq can be imported in the box; ``tests/test_ordering.py`` holds the two to the same
answers) and the sharding plan puts the likely failures in its first, small chunks.

**The rule.** Each test gets a tier, best first:

0. it failed (or errored) in the branch's last report;
1. it is new (no duration was ever measured for it) or its file changed in the commit;
2. its file imports, transitively, a module the commit changed (a static import graph,
   built in the box at collection);
3. it was flaky or order-dependent in a recent report;
4. the rest.

When every test is in a likely tier (a root commit: all of it is new) none stands out:
all but last time's failures count as the rest.

**Granularity: whole test files.** A file runs at the best tier of its tests, and its
tests run in their own order but for the ones that failed last time, which go first
within it. Moving single tests across files would set module- and class-scoped fixtures
up once per stretch of a file instead of once per file, and could make the full run
slower than it is unordered; moving whole files never sets a fixture up twice. Files of
the likely tiers run shortest first (the first failure sooner), the rest longest first
(a long file started late holds the run's end, and the shards' balance).
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

#: The tiers of :func:`tiers`, by number.
TIERS = ("failed last", "new or changed", "imports a change", "flaky", "rest")
REST = len(TIERS) - 1
#: Test ids a hint list holds at most (the worker's bound on what Redis gave it).
MAX_HINT_IDS = 20_000
#: How a repository's tests are ordered (its `order` setting).
MODES = ("likely-failures", "none")


@dataclass(frozen=True)
class OrderHints:
    """What the worker knows before a run about where its failures likely are."""

    #: Tests that failed or errored in the branch's last report.
    failed: tuple[str, ...] = ()
    #: Tests that were flaky or order-dependent in recent reports.
    flaky: tuple[str, ...] = ()
    #: Seconds each test took when last measured; a test not here is new.
    durations: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self, changed: Sequence[str] | None, root: str) -> dict[str, object]:
        """The hints file of the in-box plugin: these and the files the commit changed
        (``None``: unknown), relative to the checkout ``root``."""
        return {"failed": list(self.failed), "flaky": list(self.flaky),
                "durations": dict(self.durations),
                "changed": None if changed is None else list(changed), "root": root}


def file_of(test_id: str) -> str:
    """The file of a pytest node id (its part before the first ``::``)."""
    return test_id.split("::", 1)[0]


def tiers(ids: Sequence[str], failed: Collection[str], changed: Collection[str],
          importers: Collection[str], flaky: Collection[str],
          durations: Mapping[str, float]) -> dict[str, int]:
    """The tier of each test id (see the module's docstring). A test counts as new only
    when some durations are known: on a repository's first run every test would be."""
    out = {}
    for i in ids:
        f = file_of(i)
        if i in failed:
            out[i] = 0
        elif f in changed or (durations and i not in durations):
            out[i] = 1
        elif f in importers:
            out[i] = 2
        elif i in flaky:
            out[i] = 3
        else:
            out[i] = REST
    if all(t < REST for t in out.values()):  # all likely (a root commit): none stands out
        out = {i: 0 if t == 0 else REST for i, t in out.items()}
    return out


def order(ids: Sequence[str], failed: Collection[str], changed: Collection[str],
          importers: Collection[str], flaky: Collection[str],
          durations: Mapping[str, float]) -> list[str]:
    """``ids`` (pytest's collection order) in the order to run them: whole files by their
    best tier, then by their seconds (shortest first in the likely tiers, longest first in
    the rest), then as collected; within a file, the tests that failed last time first,
    the others as collected. Every id once, none added."""
    ids = list(dict.fromkeys(ids))
    tier = tiers(ids, failed, changed, importers, flaky, durations)
    known = [d for d in durations.values() if d >= 0]
    # Nothing measured yet: no file is longer than another, pytest's order stays.
    default = statistics.median(known) if known else 0.0
    files: dict[str, list[str]] = {}
    for i in ids:
        files.setdefault(file_of(i), []).append(i)
    best = {f: min(tier[i] for i in tests) for f, tests in files.items()}
    seconds = {f: sum(durations.get(i, default) for i in tests) for f, tests in files.items()}
    at = {f: n for n, f in enumerate(files)}

    def key(f: str) -> tuple[int, float, int]:
        return best[f], seconds[f] if best[f] < REST else -seconds[f], at[f]

    out: list[str] = []
    for f in sorted(files, key=key):
        tests = files[f]
        out += [i for i in tests if tier[i] == 0] + [i for i in tests if tier[i] != 0]
    return out


def likely(ids: Sequence[str], failed: Collection[str], changed: Collection[str],
           importers: Collection[str], flaky: Collection[str],
           durations: Mapping[str, float]) -> list[str]:
    """The tests of :func:`order` in the files of a likely tier (0 to 3), in that order:
    what the first chunks of a sharded run carry."""
    ordered = order(ids, failed, changed, importers, flaky, durations)
    tier = tiers(ordered, failed, changed, importers, flaky, durations)
    best: dict[str, int] = {}
    for i in ordered:
        best[file_of(i)] = min(best.get(file_of(i), REST), tier[i])
    return [i for i in ordered if best[file_of(i)] < REST]
