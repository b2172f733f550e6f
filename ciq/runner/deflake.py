"""Reruns of a commit's failing tests, to tell a flake from a break (:mod:`ciq.flaky`).

Made right after the commit's run, on another worker when one is free
(:mod:`ciq.worker.rerun` checks the commit out there, in its cached environment), else
by the same worker in the same checkout and environment (the :class:`~.commit.Checkout`
is still held): each failing test by itself
:data:`~ciq.flaky.ALONE_RUNS` times, then once after the tests that ran before it. Only
those ids run (the selection plugin, as for a chunk of a sharded run). Reruns share the
run's time limit and are capped by :data:`RERUN_SECONDS`; the run in order is skipped
when the tests before the failure took longer than :data:`PREFIX_SECONDS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from ..flaky import (
    ALONE_RUNS,
    MAX_TESTS,
    RerunPlan,
    Reruns,
    confirm_order,
    judge,
    to_rerun,
)
from ..report import Attempt, Report
from .commit import Checkout, run_tests

logger = logging.getLogger(__name__)

#: Seconds all the reruns of one commit may take together: the cost of a verdict is
#: bounded whatever the suite (a few pytest starts per failing test, plus their time).
RERUN_SECONDS = 300.0
#: Seconds the tests before a failure may have taken for the run in order to be made.
PREFIX_SECONDS = 120.0
#: Seconds of the time limit kept back after the reruns (a report must still be made).
MARGIN_SECONDS = 5.0


#: Asks another worker to make the reruns (:mod:`ciq.worker.rerun`): given the plan and
#: the seconds they may take, what they found, or None to make them here.
Elsewhere = Callable[[RerunPlan, float], "Reruns | None"]


def deflake(ready: Checkout, report: Report, muted: Collection[str] = (),
            elsewhere: Elsewhere | None = None) -> Report:
    """``report`` of the run just made in ``ready``, with the verdicts of its failing
    tests (quarantined ones, ``muted``, aside); as it is when there is nothing to rerun
    (:func:`ciq.flaky.to_rerun`) or the command is the repository's own. The reruns are
    made ``elsewhere`` when it takes them, else here."""
    failing = to_rerun(report, muted)
    if not failing or ready.custom_command:
        return report
    if len(failing) > MAX_TESTS:
        note = (f"{len(failing)} tests failed, more than the {MAX_TESTS} ciq reruns: a "
                "break, confirmed without reruns")
        return judge(report, {}, muted, {"tests": 0, "runs": 0, "seconds": 0.0, "note": note})
    t0 = time.monotonic()
    end = min(t0 + RERUN_SECONDS, ready.deadline - MARGIN_SECONDS)
    plan = RerunPlan.of(report, failing)
    found = elsewhere(plan, end - t0) if elsewhere is not None else None
    if found is None or not found.runs:  # nobody free, or it could make none: here
        found = rerun(ready, plan, end)
    seconds = round(time.monotonic() - t0, 3)
    workers = sorted({a.worker or "" for runs in found.attempts.values() for a in runs})
    info = {"tests": len(found.attempts), "runs": found.runs, "seconds": seconds,
            "note": "; ".join(sorted(found.notes)), "workers": workers}
    judged = judge(report, found.attempts, muted, info)
    logger.info("run %s: reran %d failing tests of %s in %d runs on %s (%.2fs): %s",
                ready.spec.run_id, len(failing), ready.spec.sha[:12], found.runs,
                ", ".join(workers) or "-", seconds, judged.status)
    return judged


def rerun(ready: Checkout, plan: RerunPlan, end: float) -> Reruns:
    """Make the reruns of ``plan`` in ``ready`` before ``end`` (time.monotonic()): each
    failing test alone :data:`~ciq.flaky.ALONE_RUNS` times, then once after the tests
    before it (twice when that alone would make it order-dependent)."""
    end = min(end, ready.deadline - MARGIN_SECONDS)
    order, durations = list(plan.order), plan.durations
    found: dict[str, tuple[Attempt, ...]] = {}
    runs, notes = 0, set()
    for test in plan.tests:
        attempts: list[Attempt] = []
        for _ in range(ALONE_RUNS):
            if time.monotonic() + durations[test] > end:
                notes.add("out of rerun time")
                break
            runs += 1
            attempts += _once(ready, [test], test, "alone")
        prefix = order[: order.index(test) + 1]
        before = sum(durations[i] for i in prefix[:-1])
        if len(prefix) < 2:
            pass  # nothing ran before it: its runs alone say it all
        elif before > PREFIX_SECONDS:
            notes.add(f"tests before a failure took over {PREFIX_SECONDS:g}s: not rerun in "
                      "order")
        elif time.monotonic() + before + durations[test] > end:
            notes.add("out of rerun time")
        else:
            while True:  # once, and again only to confirm an order dependence
                runs += 1
                attempts += _once(ready, prefix, test, "in order")
                if not confirm_order([a.outcome for a in attempts if a.kind == "alone"],
                                     [a.outcome for a in attempts if a.kind == "in order"]):
                    break
                if time.monotonic() + before + durations[test] > end:
                    notes.add("out of rerun time")
                    break
        if attempts:
            found[test] = tuple(attempts)
        if ready.spec.cancelled is not None and ready.spec.cancelled():
            break  # nobody waits for these reruns any more
    return Reruns(found, runs, frozenset(notes))


def _once(ready: Checkout, ids: list[str], test: str, kind: str) -> list[Attempt]:
    """One rerun of ``ids``: the attempt of ``test`` in it, or none when the rerun is no
    evidence (it timed out, hit a limit, or did not run the test)."""
    # No live stream: the live results are the commit's run's.
    got = run_tests(ready, ids, live=False, in_order=kind == "in order")
    if got.status not in ("passed", "failed"):
        return []
    found = next((t for t in got.tests if t.id == test), None)
    if found is None or found.outcome == "skipped":
        return []
    return [Attempt(found.outcome, found.duration, found.message, ready.spec.worker, kind)]
