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

import redis

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


#: What Redis answers when it cannot take any report now (away, a replica after a
#: failover, out of memory): the pass stops and every file waits for the next one.
TRY_LATER = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
             redis.OutOfMemoryError)


def deliver_pending(store: Store, data_dir: Path) -> int:
    """Store every report left in the outbox; returns how many were delivered. Raises
    :data:`TRY_LATER` errors (the files stay); a file that cannot be read, or whose
    report Redis refuses, is logged and moved aside (``.bad``) for an operator, and the
    others are delivered."""
    folder = _folder(data_dir)
    if not folder.is_dir():
        return 0
    count = 0
    for path in sorted(folder.glob("*.json")):
        try:
            report = Report.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            continue  # its run stored it meanwhile
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            _set_aside(path, f"unreadable report ({exc})")
            continue
        try:
            written = store.finish(report)
        except TRY_LATER:
            raise
        except Exception as exc:  # refused by a script, a bug: the others go all the same
            _set_aside(path, f"could not store it ({exc!r})", trace=True)
            continue
        if written:
            logger.warning("outbox: delivered the report of %s kept while Redis was away",
                           report.commit[:12])
        path.unlink(missing_ok=True)
        count += 1
    return count


def _set_aside(path: Path, why: str, trace: bool = False) -> None:
    """Log a report that cannot be delivered and rename it, so that it is tried (and
    logged) once, not at every pass."""
    aside = path.with_suffix(".bad")
    try:
        path.rename(aside)
        outcome = f"moved aside to {aside.name}"
    except OSError as exc:
        outcome = f"could not move it aside ({exc})"
    logger.error("outbox: %s: %s; %s", path.name, why, outcome, exc_info=trace)
