"""The worker's side of the in-box pytest plugin (:mod:`.selection`): its read-only folder
in a run, the files the worker gives it there (a chunk's ids, the ordering hints) and the
files it writes back, read with bounds (the box wrote them: they are anything).

Plain functions over files and git; no Redis.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

from ..errors import BadInput
from ..gitrepo import SAFE_GIT_ENV, validate_sha
from ..ordering import OrderHints
from .outcome import SELECTION_PLUGIN

logger = logging.getLogger(__name__)

#: The in-box pytest plugin (its file, never imported by the worker).
SELECTION_SOURCE = Path(__file__).with_name("selection.py")
#: The ordering rule the plugin imports in the box (as ``ciq_order_rule``).
RULE_SOURCE = Path(__file__).parent.parent / "order_rule.py"
RULE_MODULE = "ciq_order_rule"
#: Bytes of the plugin's list of changed test files and their importers read.
MAX_ORDER_OUT_BYTES = 8 << 20
#: Files of a commit's change kept for ordering (a huge change: its first ones).
MAX_CHANGED = 50_000
#: Seconds git may take to list a commit's changed files.
DIFF_SECONDS = 30.0


def read_box_file(path: Path, limit: int, tail: bool = False) -> str | None:
    """A file the box wrote, read by the worker: never through a link the box made (it
    could point at the worker's files), only a plain file of at most ``limit`` bytes
    (with ``tail``, of any size: its last ``limit`` bytes)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or (st.st_size > limit and not tail):
            return None
        fh.seek(max(st.st_size - limit, 0))
        return fh.read(limit).decode("utf-8", "replace")


def selection_folder(run_dir: Path, chunk: list[str] | None = None) -> Path:
    """The run's folder of the in-box selection plugin (:mod:`.selection`) and of the
    ids of its ``chunk`` (``chunk.json``): the worker's, not in out/ (the box may have
    left a link there), read-only in the box, holding nothing else importable."""
    folder = run_dir / "selection"
    plugin = folder / f"{SELECTION_PLUGIN}.py"
    if not plugin.is_file():  # readable by the tests' user (CIQ_RUN_AS), whatever umask
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)
        for source, copy in ((RULE_SOURCE, folder / f"{RULE_MODULE}.py"),
                             (SELECTION_SOURCE, plugin)):  # the plugin last: it marks done
            shutil.copyfile(source, copy)
            copy.chmod(0o644)
    if chunk is not None:
        _give(folder / "chunk.json", chunk)
    return folder


def with_selection(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` in which pytest finds the selection plugin (last on the path: it shadows
    nothing of the project's)."""
    path = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(folder)) if p)
    return {**env, "PYTHONPATH": path}


def order_file(folder: Path, hints: OrderHints, mirror: Path, sha: str,
               worktree: Path) -> Path:
    """Write the plugin's ordering hints (``order.json`` in the selection ``folder``):
    ``hints`` and the files ``sha`` changed (from the ``mirror``); its path."""
    path = folder / "order.json"
    if not path.is_file():  # collected first (sharding), then run: the same hints
        _give(path, hints.to_dict(changed_files(mirror, sha), str(worktree)))
    return path


def order_out(path: Path) -> tuple[set[str], set[str]] | None:
    """The test files (node id form) the commit changed and those that import a change,
    as the plugin wrote them to ``path``; None if it wrote nothing usable."""
    try:
        data = json.loads(read_box_file(path, MAX_ORDER_OUT_BYTES) or "null")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    lists = [data.get("changed"), data.get("importers")]
    if not all(isinstance(x, list) and all(isinstance(f, str) for f in x) for x in lists):
        return None
    return set(lists[0]), set(lists[1])  # type: ignore[arg-type]


def changed_files(mirror: Path, sha: str) -> list[str] | None:
    """The paths ``sha`` changed against its first parent (every file of a root commit:
    all of it is new), from the bare ``mirror``; None if git cannot say."""
    try:
        sha = validate_sha(sha)
        parents = _git(mirror, "rev-list", "--parents", "-n", "1", sha, "--").split()
        if len(parents) > 1:
            out = _git(mirror, "diff", "--name-only", "--no-renames", "-z", parents[1], sha,
                       "--")
        else:
            out = _git(mirror, "ls-tree", "-r", "-z", "--name-only", sha)
    except (BadInput, OSError, subprocess.SubprocessError) as exc:
        logger.warning("ordering: no changed files of %s: %s", sha[:12], exc)
        return None
    return [f for f in out.split("\0") if f][:MAX_CHANGED]


def _git(mirror: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", "--git-dir", str(mirror), *args],
        env={**os.environ, **SAFE_GIT_ENV}, stdin=subprocess.DEVNULL, capture_output=True,
        timeout=DIFF_SECONDS, check=True)
    return done.stdout.decode("utf-8", "replace")


def _give(path: Path, data: object) -> None:
    """A JSON file of the worker's for the box to read (whatever the tests' user)."""
    path.write_text(json.dumps(data))
    path.chmod(0o644)
