"""Reruns of a commit's failing tests, to tell a flake from a break (:mod:`ciq.flaky`).

Made right after the commit's run, by the same worker, in the same checkout and
environment (the :class:`~.commit.Checkout` is still held): each failing test by itself
:data:`~ciq.flaky.ALONE_RUNS` times, then once after the tests that ran before it. Only
those ids run (the selection plugin, as for a chunk of a sharded run). Reruns share the
run's time limit and are capped by :data:`RERUN_SECONDS`; the run in order is skipped
when the tests before the failure took longer than :data:`PREFIX_SECONDS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from ..flaky import ALONE_RUNS, MAX_TESTS, judge, to_rerun
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


def deflake(ready: Checkout, report: Report, muted: Collection[str] = ()) -> Report:
    """``report`` of the run just made in ``ready``, with the verdicts of its failing
    tests (quarantined ones, ``muted``, aside); as it is when there is nothing to rerun
    (:func:`ciq.flaky.to_rerun`) or the command is the repository's own."""
    failing = to_rerun(report, muted)
    if not failing or ready.custom_command:
        return report
    tag = f"run {ready.spec.run_id}"
    if len(failing) > MAX_TESTS:
        note = (f"{len(failing)} tests failed, more than the {MAX_TESTS} ciq reruns: a "
                "break, confirmed without reruns")
        return judge(report, {}, muted, {"tests": 0, "runs": 0, "seconds": 0.0, "note": note})
    t0 = time.monotonic()
    end = min(t0 + RERUN_SECONDS, ready.deadline - MARGIN_SECONDS)
    order = [t.id for t in report.tests]
    durations = {t.id: t.duration for t in report.tests}
    reruns: dict[str, list[Attempt]] = {}
    runs, notes = 0, set()
    for test in failing:
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
            runs += 1
            attempts += _once(ready, prefix, test, "in order")
        if attempts:
            reruns[test] = attempts
    seconds = round(time.monotonic() - t0, 3)
    info = {"tests": len(reruns), "runs": runs, "seconds": seconds,
            "note": "; ".join(sorted(notes))}
    judged = judge(report, reruns, muted, info)
    logger.info("%s: reran %d failing tests of %s in %d runs (%.2fs): %s", tag, len(failing),
                ready.spec.sha[:12], runs, seconds, judged.status)
    return judged


def _once(ready: Checkout, ids: list[str], test: str, kind: str) -> list[Attempt]:
    """One rerun of ``ids``: the attempt of ``test`` in it, or none when the rerun is no
    evidence (it timed out, hit a limit, or did not run the test)."""
    got = run_tests(ready, ids, live=False)  # the stream is the first run's
    if got.status not in ("passed", "failed"):
        return []
    found = next((t for t in got.tests if t.id == test), None)
    if found is None or found.outcome == "skipped":
        return []
    return [Attempt(found.outcome, found.duration, found.message, ready.spec.worker, kind)]
