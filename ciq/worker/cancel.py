"""What a worker does with a superseded commit (:mod:`ciq.supersede`): the `cancelled`
report of one it took before it started (no checkout), the `cancelled` report of one
stopped mid-run (with the results it had), and the move of an older commit of the
default branch to its queue's backfill.

The marks are data in Redis (the commit's hash), never a worker's memory: a worker
restarted, or a Redis that went away and came back, finds them where they were.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..dispatch import Sender
from ..report import Report, Summary, TestResult, utcnow
from ..store import outbox
from ..store.live import outcomes
from ..store.store import Store
from ..supersede import reason
from .lease import Lease, patiently

logger = logging.getLogger(__name__)


def why(store: Store, repo: str, sha: str, tag: str) -> str:
    """The reason of a superseded commit's report ("superseded by <sha12>, pushed at
    <time>")."""
    found = patiently(tag, lambda: store.superseded(repo, sha))
    by, at = found or ("", "")
    return reason(by, at) if by else "superseded by a newer commit of its branch"


def report_unstarted(store: Store, lease: Lease, branch: str | None, worker: str,
                     data_dir: Path) -> str:
    """Store the `cancelled` report of a superseded commit whose lease this run took
    before it started: at once, without checking it out. Then let the lease go."""
    tag = f"run {lease.run_id}"
    now = utcnow()
    # Runs it had before (0 unless a run of it died before the newer commit came).
    attempts = int(patiently(tag, lambda: store.commit(lease.repo, lease.sha)).get(
        "attempts") or 0)
    report = Report(repo=lease.repo, commit=lease.sha, branch=branch, status="cancelled",
                    worker=worker, attempts=attempts, run_id=lease.run_id, started_at=now,
                    finished_at=now, message=why(store, lease.repo, lease.sha, tag))
    try:
        return _store(store, report, data_dir, tag)
    finally:
        try:
            lease.release()
        except Exception as exc:  # it expires by itself
            logger.warning("%s: could not release the lease of %s: %s", tag, lease.what, exc)


def stopped(store: Store, report: Report, tag: str) -> Report:
    """The `cancelled` report of a run stopped mid-run because a newer commit superseded
    it: the results it had. A killed pytest writes no JUnit file, so its tests are then
    the outcomes its live stream saw of this run (none if it saw none); its output's
    tail is kept as it was."""
    tests = report.tests
    if not tests:
        seen = patiently(tag, lambda: outcomes(store, report.repo, report.commit))
        last: dict[str, TestResult] = {}
        for _entry, e in seen:
            if e.get("run_id") == report.run_id and isinstance(e.get("id"), str) and \
                    e.get("outcome") in ("passed", "failed", "error", "skipped"):
                last[e["id"]] = TestResult(id=e["id"], outcome=e["outcome"],
                                           duration=float(e.get("duration") or 0.0),
                                           message=str(e.get("message") or ""))
        tests = tuple(last.values())
    done = sum(t.outcome != "skipped" for t in tests)
    message = (f"{why(store, report.repo, report.commit, tag)}; stopped while running, "
               f"{done} tests had finished")
    return report.replace(status="cancelled", tests=tests, summary=Summary.of(list(tests)),
                          message=message, deflake={}, not_run=())


def to_backfill(sender: Sender, lease: Lease, branch: str | None) -> str:
    """Move a commit that a newer commit of its branch waits behind to its queue's
    backfill list (lua/acquire.lua kept no lease and marked it: taken from there, it
    runs)."""
    tag = f"run {lease.run_id}"
    message = patiently(tag, lambda: sender.to_backfill(lease.repo, lease.sha, branch))
    logger.info("%s: a newer commit of %s waits; %s goes to the backfill (%r)", tag,
                branch, lease.what, message.queue)
    return "backfill"


def _store(store: Store, report: Report, data_dir: Path, tag: str) -> str:
    saved = outbox.save(data_dir, report)
    if not patiently(tag, lambda: outbox.deliver(store, saved, report)):
        logger.info("%s: %s was reported meanwhile; dropping its cancelled report", tag,
                    report.commit[:12])
        return "dropped: reported meanwhile"
    logger.info("%s: %s cancelled: %s", tag, report.commit[:12], report.message)
    return "cancelled"
