"""Reports waiting for Redis.

A finished run's report is written to ``CIQ_DATA_DIR/outbox`` before it is stored, and
removed once stored (or once another run's report is there). A report made while Redis
is away, or by a worker process killed while it waited for Redis, is not lost: the run
keeps retrying, and the worker's housekeeping delivers what is left in the outbox.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..report import Report
from .keys import repo_id
from .store import Store

logger = logging.getLogger(__name__)


def _folder(data_dir: Path) -> Path:
    return data_dir / "outbox"


def save(data_dir: Path, report: Report) -> Path:
    """Write the report durably (temporary file, fsync, rename); returns its path."""
    folder = _folder(data_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{repo_id(report.repo)}-{report.commit}-{report.run_id}.json"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        json.dump(report.to_dict(), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def deliver(store: Store, path: Path, report: Report) -> bool:
    """Store one saved report; True if the stored report is this one (written now, or
    earlier by the worker's housekeeping). Raises if Redis is away."""
    written = store.finish(report, fenced=True)
    path.unlink(missing_ok=True)
    if written:
        return True
    stored = store.report(report.repo, report.commit)
    return stored is not None and stored.run_id == report.run_id


def deliver_pending(store: Store, data_dir: Path) -> int:
    """Store every report left in the outbox; returns how many were delivered."""
    folder = _folder(data_dir)
    if not folder.is_dir():
        return 0
    count = 0
    for path in sorted(folder.glob("*.json")):
        try:
            report = Report.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.error("outbox: unreadable report %s (%s); moved aside", path.name, exc)
            path.rename(path.with_suffix(".bad"))
            continue
        if store.finish(report):
            logger.warning("outbox: delivered the report of %s kept while Redis was away",
                           report.commit[:12])
        path.unlink(missing_ok=True)
        count += 1
    return count
