"""Likely failures first: the order a commit's tests run in, so that a break shows in the
first seconds of a run rather than at its end. Every test still runs; only the order
changes. Plain data and functions, standard library only: the worker gathers the hints
(:mod:`ciq.worker.hints`), the runner hands them to the in-box plugin
(:mod:`ciq.runner.selection`, which imports the rule, :mod:`ciq.order_rule`, from
its copy beside it in the box) and the sharding plan puts the likely failures in its
first, small chunks.

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

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from .order_rule import REST, file_of, order, tiers

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
