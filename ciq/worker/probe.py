"""A probe of a culprit search: the failing tests run at one commit of the range.

Task ``ciq.probe`` (:func:`run_probe`). A probe is an ordinary leased run: the worker
takes its lease (:mod:`ciq.store.culprit`), beats while it runs, checks the commit out
in its cached environment (:func:`ciq.runner.commit.prepare`) and runs only the
search's tests, up to the probe's number of runs, stopping at the first pass (one pass
proves the commit good). The outcomes are written once, under the lease; a worker that
dies mid-probe writes nothing, its lease lapses, and the coordinator sends the probe
again (:mod:`.culprits`). A message that comes late finds the probe done, or gone, and
is dropped.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..report import Report
from ..runner.commit import Checkout, run_tests
from ..settings import Settings
from ..store.culprit import Searches
from ..store.store import Store
from .lease import patiently
from .spec import held_checkout

logger = logging.getLogger(__name__)

#: pytest's exit status when it collected nothing: the tests do not exist there.
NO_TESTS = 5
#: Characters of a probe's message kept with its result.
MESSAGE = 300


@dataclass
class _Taken:
    """A taker's hold on a probe, renewed by a :class:`~.lease.Heartbeat`."""

    searches: Searches
    repo: str
    sha: str
    run_id: str
    who: str
    ttl: float
    chunk: None = None

    @property
    def what(self) -> str:
        return f"probe {self.run_id[:8]}"

    def take(self) -> int:
        return self.searches.take(self.repo, self.sha, self.run_id, self.who, self.ttl)

    def renew(self) -> bool:
        return self.searches.beat(self.repo, self.sha, self.run_id, self.who, self.ttl)

    def release(self) -> None:
        pass  # the result, or the lapse of the lease, lets it go


def outcome(report: Report, tests: Sequence[str], worktree: Path) -> str:
    """One run's outcome for the search (:data:`ciq.culprit.OUTCOMES`): `failed` when
    any of ``tests`` failed (or the run hit its time limit: a hang is a failure of the
    code), `passed` when those that ran passed, `missing` when none exists at this
    commit, `untestable` when they could not be collected or run."""
    seen = {t.id: t.outcome for t in report.tests}
    ran = [seen[t] for t in tests if t in seen]
    if any(o in ("failed", "error") for o in ran):
        return "failed"
    if ran:
        return "passed"  # skipped ones did not fail either
    if report.status == "timeout":
        return "failed"
    files = {t.split("::", 1)[0] for t in tests}
    if report.exit_code == NO_TESTS or not any((worktree / f).is_file() for f in files):
        return "missing"
    return "untestable"


def probe_runs(ready: Checkout, tests: list[str], runs: int,
               stopped: Callable[[], bool]) -> tuple[list[str], str]:
    """Run ``tests`` in ``ready`` up to ``runs`` times, until one passes or cannot be
    judged; the outcomes and the last run's message."""
    outcomes: list[str] = []
    message = ""
    for _ in range(runs):
        if stopped():
            break
        report = run_tests(ready, list(tests), live=False)
        got = outcome(report, tests, ready.worktree)
        outcomes.append(got)
        message = report.message
        if got != "failed":
            break
    return outcomes, message


def run_probe(settings: Settings, store: Store, repo: str, sha: str, probe_id: str,
              worker: str) -> str:
    """The taking side (task ``ciq.probe``): make probe ``probe_id`` of the search of
    failing commit ``sha``, if it still waits for it. Returns what happened, in a few
    words."""
    own = uuid.uuid4().hex
    tag = f"probe {probe_id[:8]}"
    searches = Searches(store)
    held = _Taken(searches, repo, sha, probe_id, f"{worker} {own}", settings.lease_ttl)
    if patiently(tag, held.take) != 1:
        return "probe taken elsewhere, or no longer wanted"
    asked = patiently(tag, lambda: searches.probe(repo, sha, probe_id))
    if asked is None:
        return "probe no longer wanted"
    commit, runs, tests = asked
    t0 = time.monotonic()
    with held_checkout(settings, store, held, commit, None, worker, tag,
                       settings.lease_ttl) as (ready, heartbeat):
        if isinstance(ready, Report):  # the environment or the checkout failed
            outcomes, message = ["untestable"], ready.message
        else:
            outcomes, message = probe_runs(ready, tests, runs, heartbeat.is_lost)
    seconds = round(time.monotonic() - t0, 3)
    result = {"outcomes": outcomes, "worker": worker, "seconds": seconds,
              "message": message[:MESSAGE]}
    if heartbeat.is_lost() or not outcomes or not patiently(
            tag, lambda: searches.beat(repo, sha, probe_id, held.who, settings.lease_ttl,
                                       result)):
        logger.info("%s: the search of %s no longer waits for it; dropping it", tag,
                    sha[:12])
        return "probe dropped"
    logger.info("%s: %s at %s for the search of %s: %s (%.2fs)", tag, ", ".join(tests),
                commit[:12], sha[:12], " ".join(outcomes), seconds)
    return f"probed {commit[:12]}: {' '.join(outcomes)}"
