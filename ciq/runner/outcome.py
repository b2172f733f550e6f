"""What a run's results mean: the test command ciq runs by default, the status and message
of a report from the command's exit and its JUnit XML, what a chunk of a sharded run
points pytest at, and pytest's own count of what a collection found. Plain functions: no
processes, no Redis.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import BuildError
from ..junit import NO_JUNIT
from ..report import Summary
from .process import Completed

#: What a box's limit that stopped a run says, by limit (:attr:`.process.Completed.limit`).
LIMIT_HIT = {
    "memory": "a process went over the box's memory limit and was killed "
              "(CIQ_MEMORY_LIMIT_MB)",
    "processes": "it reached the box's process limit (a fork bomb? CIQ_PROCESS_LIMIT)",
}


#: The in-box plugin of sharded runs (:mod:`.selection`), by its module name in the box.
SELECTION_PLUGIN = "ciq_selection"
#: Bytes of a chunk's file arguments beyond which it is pointed at the whole suite.
MAX_TARGET_BYTES = 64 << 10
#: Files that may make pytest choose its rootdir and ini file (`setup.py` too, when
#: there is no ini file at all).
CONFIG_FILES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg",
                "setup.py")
#: pytest's summary of a collection, in its `-q` form.
_SUMMARY = re.compile(r"(?:(?P<none>no tests)|(?P<count>\d+)(?:/\d+)? tests?) collected\b"
                      r"(?: \(\d+ deselected\))?(?:, (?P<errors>\d+) errors?)?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def default_tests(checkout: Path) -> list[str]:
    """Where a person would point pytest: ``tests/`` or ``test/`` when there is one, else
    nowhere in particular (the whole checkout: tests inside the package, or the
    project's own ``testpaths``)."""
    return [d for d in ("tests", "test") if (checkout / d).is_dir()][:1]


def default_command(junit_path: Path, checkout: Path, python: str,
                    targets: list[str] | None = None, selection: Path | None = None,
                    live: Path | None = None, in_order: bool = False,
                    order: Path | None = None) -> list[str]:
    """pytest on ``targets`` (paths; default: :func:`default_tests`), writing JUnit; with
    ``selection`` (a JSON list of test ids), only those tests run; with ``live``, each
    outcome goes to that file as it happens (both by :mod:`.selection`, which must then
    be importable as ``ciq_selection``); ``in_order``: in the order of ``selection``, with
    pytest-randomly kept out (a rerun in order replays the commit's run); ``order``: a
    file of hints by which the plugin runs likely failures first (:mod:`ciq.ordering`)."""
    chosen = ["-p", SELECTION_PLUGIN] if selection or live or order else []
    chosen += [f"--ciq-order={order}"] if order and not in_order else []
    chosen += [f"--ciq-ids={selection}"] if selection else []
    chosen += ["--ciq-in-order", "-p", "no:randomly"] if selection and in_order else []
    chosen += [f"--ciq-live={live}"] if live else []
    return [
        python, "-m", "pytest", *(default_tests(checkout) if targets is None else targets),
        f"--junitxml={junit_path}", "-o", "junit_family=xunit1", "-p", "no:cacheprovider",
        *chosen,
    ]  # fmt: skip


def chunk_targets(checkout: Path, ids: Sequence[str]) -> list[str]:
    """What the pytest of a chunk is pointed at: the distinct files of its test ids, in
    order, so that it collects only those. :func:`default_tests` instead (slower, the
    plugin deselects the rest; never wrong) when the files could make pytest find other
    ids than the whole suite's collection did: one not there as named (pytest's root is
    not the checkout), a configuration file between them and where the collection
    started (another rootdir or ini file), or more of them than a command line holds."""
    default = default_tests(checkout)
    files = list(dict.fromkeys(i.split("::", 1)[0] for i in ids))
    if not files or sum(len(f) + 1 for f in files) > MAX_TARGET_BYTES:
        return default
    top = checkout / default[0] if default else checkout
    for name in files:
        rel = Path(name)
        if (name.startswith("-") or rel.is_absolute() or ".." in rel.parts
                or top not in (checkout / rel).parents or not (checkout / rel).is_file()):
            return default
    # pytest looks for its configuration from the folder the files have in common up.
    below = Path(os.path.commonpath([str((checkout / f).parent) for f in files]))
    for folder in (below, *below.parents):
        if folder == top:
            return files
        if any((folder / c).exists() for c in CONFIG_FILES):
            return default
    return default


def verdict(done: Completed, tests_found: bool, junit_error: str | None, summary: Summary,
            pytest_codes: bool = True) -> tuple[str, str]:
    """A run's status and one-line message. Exit statuses 2, 4 and 5 mean something only
    for pytest itself (``pytest_codes``); any other command fails or passes."""
    if done.timed_out:
        return "timeout", "the test run was killed at the time limit"
    if done.disk_full:
        return "error", ("the test run was stopped: the disk of its checkout was nearly full "
                         "(does a test fill the disk? see CIQ_MIN_FREE_MB)")
    code = done.exit_code
    if done.limit == "processes" or (done.limit and code != 0):
        return "error", f"the test run was stopped: {LIMIT_HIT[done.limit]}"
    if code in (0, 1) and junit_error and (
            pytest_codes or not junit_error.startswith(NO_JUNIT)):
        # pytest writes it whenever it ran tests: without a readable one, `passed`
        # would be a guess; junk from any command is never read as a pass.
        return "error", f"the test results cannot be read: {junit_error}"
    if code == 0:
        return "passed", ""
    if code == 1 and (summary.failed or summary.errors):
        return "failed", f"{summary.failed + summary.errors} of {summary.total} tests failed"
    if code == 1:
        return "failed", "the test command exited with status 1"
    if code in (126, 127):
        return "error", f"the test command could not be run (exit status {code})"
    if not pytest_codes and 0 < code < 128:
        return "failed", f"the test command exited with status {code}"
    if code == 2:
        return "error", "test collection failed or the run was interrupted (pytest exit 2)"
    if code == 4:
        return "error", "pytest could not start: bad usage or missing test path (exit 4)"
    if code == 5:
        return "error", ("no tests were collected (pytest exit 5); set `test` in ciq.toml "
                         "or [tool.ciq] to say how this project is tested")
    if code < 0 or code > 128:
        sig = -code if code < 0 else code - 128
        return "error", f"the test command was killed by signal {sig}"
    return "error", f"the test command exited with status {code}" + (
        f"; {junit_error}" if junit_error and not tests_found else ""
    )


def collected_count(output: str) -> tuple[int, int] | None:
    """pytest's own count of the tests and of the errors a ``--collect-only -q`` found,
    from the summary line that ends its output ("3000 tests collected in 1.20s", "1 test
    collected", "3/5 tests collected (2 deselected)", "no tests collected", with ", 2
    errors" after any of them); None when there is no such line."""
    for line in reversed(output.splitlines()):
        found = _SUMMARY.match(_ANSI.sub("", line).strip(" =\t"))  # `=` at -v
        if found:
            count = 0 if found["none"] else int(found["count"])
            return count, int(found["errors"] or 0)
    return None


def collected_ids(text: str | None) -> list[str] | None:
    """The test ids in the list the selection plugin wrote (JSON); None if it is not one."""
    try:
        ids = json.loads(text) if text is not None else None
    except ValueError:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return None
    return ids


def not_to_plan(ids: list[str] | None, counted: tuple[int, int] | None) -> str | None:
    """Why a collection's ``ids`` are not to be cut into chunks, given pytest's own count
    of the tests and errors (:func:`collected_count`); None: plan away."""
    if ids is None:
        return "the collection wrote no readable list of test ids"
    if counted is None:
        return "pytest's output ends without its count of the tests collected"
    if counted[1]:
        return f"pytest counted {counted[1]} collection errors"
    if counted[0] != len(ids):
        return f"pytest counted {counted[0]} tests but listed {len(ids)}"
    if len(set(ids)) != len(ids):
        return f"pytest collected {len(ids)} tests under {len(set(ids))} distinct ids"
    return None


def build_failure(exc: BuildError, lines: int = 12, chars: int = 1500) -> str:
    """The failing step and the end of its output, for a message read at a glance."""
    tail = "\n".join(exc.output.rstrip().splitlines()[-lines:])[-chars:]
    return f"{exc}\n{tail}" if tail else str(exc)
