"""The rule of likely failures first (:mod:`ciq.ordering` tells it in full): each test's
tier, and the order of whole test files it gives.

Standard library only and no import of ciq: the same file serves ciq (as
``ciq.order_rule``) and the box, where the worker copies it beside the in-box plugin
(:mod:`ciq.runner.selection`, as ``ciq_order_rule``), so the rule is written once.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping, Sequence

#: The tiers of :func:`tiers`, by number.
TIERS = ("failed last", "new or changed", "imports a change", "flaky", "rest")
REST = len(TIERS) - 1


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
