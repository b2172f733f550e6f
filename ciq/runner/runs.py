"""A run: what it does (:class:`RunSpec`), its folder on the worker's disk, and cleaning
up after runs and after their dead workers.

Each run has ``CIQ_DATA_DIR/runs/<run id>/``: ``run.json`` (which worker process runs
it), ``src/`` (the worktree at the commit), ``out/`` (its home, JUnit XML, its own
virtual environment) and ``pgid`` (the process group of its test tree, for the sweeper
when the supervisor itself is killed). No Redis, no Celery.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CiqError
from ..gitrepo import Mirror
from ..ordering import OrderHints
from ..repoconfig import RepoConfig
from ..store.keys import repo_id
from .box import Limits
from .cgroups import remove_left
from .process import kill_recorded_group, proc_start

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """What one run does; everything but the commit comes from settings."""

    repo: str
    sha: str
    branch: str | None
    run_id: str
    worker: str
    attempts: int
    data_dir: Path
    time_limit: float
    output_limit: int
    min_free_bytes: int = 0
    #: User the tests run as (see Settings.run_as); None: the worker's user.
    run_as: str | None = None
    #: The operator's settings of this repository (the commit's own ones win).
    operator: RepoConfig | None = None
    #: Cache of run environments on this host (see .environments); None: DATA/envs.
    env_root: Path | None = None
    env_cache_size: int = 10
    #: What each of the run's boxes may use.
    limits: Limits = Limits()
    #: Package index hosts (``host[:port]``) build steps may reach besides the default.
    index_hosts: tuple[str, ...] = ()
    #: A host folder every box may write (CIQ_BOX_SHARED); None: none.
    shared: Path | None = None
    #: True once the run lost its lease: its boxes stop at once, its report is dropped.
    cancelled: Callable[[], bool] | None = field(default=None, compare=False)
    #: Where the tests' outcomes go as they happen (the worker puts them in Redis).
    live: Callable[[list[dict[str, Any]]], None] | None = field(default=None,
                                                                compare=False)
    #: Where the run's failures likely are (:mod:`ciq.ordering`): they run first. None:
    #: pytest's own order.
    order_hints: OrderHints | None = None


def runs_dir(data_dir: Path) -> Path:
    return data_dir / "runs"


def start(data_dir: Path, run_id: str, repo: str, sha: str) -> Path:
    """Make the run's folder and say in it which worker process runs it; returns it."""
    run_dir = runs_dir(data_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": run_id, "repo": repo, "sha": sha, "host": os.uname().nodename,
        "pid": os.getpid(), "pid_start": proc_start(os.getpid()),
    }  # fmt: skip
    # Whole or not at all (the sweeper sets a half-written record aside as damaged).
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, run_dir / "run.json")
    return run_dir


def chown_tree(top: Path, user: tuple[int, int]) -> None:
    """Give ``top`` and everything under it to ``user`` (uid, gid), links themselves."""
    os.lchown(top, *user)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), *user)


def hand_over(run_dir: Path, user: tuple[int, int], data_dir: Path) -> None:
    """Give a run's checkout and output folder to the user the tests run as, and keep
    the rest of the data folder out of its reach: it may pass through ``data_dir`` and
    ``runs/`` (0711) but list neither, read the mirrors (0755, root's) but not change
    them, and not enter the outbox (0700)."""
    for folder, mode in ((data_dir, 0o711), (runs_dir(data_dir), 0o711),
                         (data_dir / "mirrors", 0o755), (data_dir / "outbox", 0o700)):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(mode)
    run_dir.chmod(0o755)  # root's: run.json and pgid stay the worker's own
    for top in (run_dir / "src", run_dir / "out"):
        chown_tree(top, user)


def mirror_for(data_dir: Path, repo: str) -> Mirror:
    return Mirror(data_dir / "mirrors", repo, repo_id(repo))


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    repo: str
    sha: str


def sweep_stale_runs(data_dir: Path, host: str) -> list[DeadRun]:
    """Clean the runs of this host whose worker process is gone: kill the test tree that
    may still run and delete the worktree. Returns the runs cleaned, so that the caller
    can free their leases at once rather than wait for them to expire.

    Each record stands alone: one that is damaged, or whose clean-up fails, is logged and
    set aside (``run.json.bad``, its folder kept for an operator), and the sweep goes on.
    """
    cleaned: list[DeadRun] = []
    runs = runs_dir(data_dir)
    if not runs.is_dir():
        return cleaned
    for record_path in runs.glob("*/run.json"):
        try:
            record = _read_record(record_path)
        except FileNotFoundError:
            continue  # its run just ended and removed its folder
        except (OSError, ValueError) as exc:
            _set_aside(record_path, f"unusable record ({exc})")
            continue
        if record["host"] != host:
            continue
        if proc_start(record["pid"]) == record["pid_start"]:
            continue  # its worker process is alive
        try:
            _clean_dead(data_dir, record_path.parent, record)
        except Exception as exc:  # the other dead runs are cleaned all the same
            _set_aside(record_path, f"cleaning up its dead run failed ({exc!r})", trace=True)
            continue
        logger.warning("runner: cleaned up run %s of a dead worker process", record["run_id"])
        cleaned.append(DeadRun(record["run_id"], record["repo"], record["sha"]))
    return cleaned


#: The fields of a run record the sweeper reads, and their types (see :func:`start`).
_RECORD = {"run_id": str, "repo": str, "sha": str, "host": str, "pid": int}


def _read_record(path: Path) -> dict[str, Any]:
    """A run's ``run.json`` as :func:`start` wrote it; raises ValueError saying what is
    wrong with it otherwise (OSError if it cannot be read)."""
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    for name, kind in _RECORD.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{name!r} should be {kind.__name__}, is {value!r}")
    if record["pid"] <= 0:
        raise ValueError(f"'pid' should be positive, is {record['pid']}")
    # Not a string, it would never match a live process's start: the live run looked dead.
    if not isinstance(record.get("pid_start"), str | None):
        raise ValueError(f"'pid_start' should be str, is {record['pid_start']!r}")
    # The run id names cgroups to remove: only the folder's own (no "../" from a record).
    if record["run_id"] != path.parent.name:
        raise ValueError(f"'run_id' is {record['run_id']!r}, not its folder's name")
    return record


def _clean_dead(data_dir: Path, run_dir: Path, record: dict[str, Any]) -> None:
    kill_recorded_group(run_dir / "pgid")
    remove_left(record["run_id"])
    remove_tree(run_dir)
    try:
        mirror_for(data_dir, record["repo"]).prune_worktrees()
    except (CiqError, OSError):
        pass  # the run is gone all the same; a later clean-up prunes its worktree entry


def _set_aside(record_path: Path, why: str, trace: bool = False) -> None:
    """Log a record the sweeper cannot use (``trace``: with the exception being handled)
    and rename it, so that it is read and logged once, not at every sweep."""
    try:
        record_path.rename(record_path.with_name("run.json.bad"))
        outcome = "renamed run.json.bad, its folder kept"
    except FileNotFoundError:
        outcome = "its folder is gone"
    except OSError as exc:
        outcome = f"could not rename it ({exc}): it is read again at the next sweep"
    logger.error("runner: run record %s: %s; %s", record_path, why, outcome, exc_info=trace)


def clean_up(data_dir: Path, run_id: str, repo: str) -> None:
    """Delete a run's folder and worktree; called once its report is stored, since a
    report delayed by clean-up is feedback delayed."""
    remove_tree(runs_dir(data_dir) / run_id)
    try:
        mirror_for(data_dir, repo).prune_worktrees()
    except CiqError as exc:
        logger.warning("runner: could not prune worktrees of %s: %s", repo, exc)


def remove_tree(path: Path) -> None:
    """Delete a run's folder even if the code under test made parts of it read-only."""

    def onerror(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    if path.exists():
        shutil.rmtree(path, onerror=onerror)
