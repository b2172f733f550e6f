"""Where a commit's failures likely are, from what Redis remembers (:mod:`ciq.ordering`):
the tests that failed on the branch's last report, those that were flaky lately and the
durations measured. The runner adds the commit's changed files and the in-box plugin
the import graph; nobody is told to skip anything, only what to run first.
"""

from __future__ import annotations

import logging

import redis

from ..ordering import MAX_HINT_IDS, OrderHints
from ..store.shards import Shards
from ..store.store import Store

logger = logging.getLogger(__name__)

#: Reports of the repository looked through for flaky tests (newest first).
FLAKY_REPORTS = 10
#: What a test's outcome is when it failed for the ordering's sake.
FAILING = ("failed", "error")


def gather(store: Store, shards: Shards, repo: str, sha: str, branch: str | None,
           tag: str) -> OrderHints | None:
    """The hints of run ``tag`` of ``sha``; None (pytest's own order) when Redis cannot
    say: they only speed up the feedback, never worth a wait."""
    try:
        return OrderHints(failed=_failed_last(store, repo, sha, branch),
                          flaky=_flaky(store, repo), durations=shards.durations(repo))
    except (redis.RedisError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: no ordering hints (%s); pytest's own order", tag, exc)
        return None


def _failed_last(store: Store, repo: str, sha: str, branch: str | None) -> tuple[str, ...]:
    """The failing tests of the newest report of ``branch`` (not this commit's own)."""
    if not branch:
        return ()
    last = store.branch_state(repo).get(branch, {}).get("commit")
    if not last or last == sha:
        return ()
    report = store.report(repo, last)
    if report is None:
        return ()
    return tuple(t.id for t in report.tests if t.outcome in FAILING)[:MAX_HINT_IDS]


def _flaky(store: Store, repo: str) -> tuple[str, ...]:
    """Tests found flaky or order-dependent in the newest reports of any branch (a flaky
    test is flaky wherever it runs)."""
    shas = store.reported(repo, FLAKY_REPORTS)
    found = {t.id for r in store.reports(repo, shas) if r is not None for t in r.tests
             if t.flaky}
    return tuple(sorted(found))[:MAX_HINT_IDS]
