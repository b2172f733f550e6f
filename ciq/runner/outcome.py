"""What a run's results mean: the test command ciq runs by default, the status and message
of a report from the command's exit and its JUnit XML, and the test ids a collection
found. Plain functions: no processes, no Redis.
"""

from __future__ import annotations

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


def default_tests(checkout: Path) -> list[str]:
    """Where a person would point pytest: ``tests/`` or ``test/`` when there is one, else
    nowhere in particular (the whole checkout: tests inside the package, or the
    project's own ``testpaths``)."""
    return [d for d in ("tests", "test") if (checkout / d).is_dir()][:1]


def default_command(junit_path: Path, checkout: Path, python: str,
                    targets: list[str] | None = None) -> list[str]:
    """pytest on ``targets`` (test ids; default: :func:`default_tests`), writing JUnit."""
    return [
        python, "-m", "pytest", *(default_tests(checkout) if targets is None else targets),
        f"--junitxml={junit_path}", "-o", "junit_family=xunit1", "-p", "no:cacheprovider",
    ]  # fmt: skip


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


def collected(output: str) -> list[str]:
    """The test ids in the output of ``pytest --collect-only -q``."""
    ids = []
    for line in output.splitlines():
        if not line.strip():
            break  # then the summary ("N tests collected") and any warnings
        if "::" in line and not line[0].isspace():
            ids.append(line.strip())
    return ids


def build_failure(exc: BuildError, lines: int = 12, chars: int = 1500) -> str:
    """The failing step and the end of its output, for a message read at a glance."""
    tail = "\n".join(exc.output.rstrip().splitlines()[-lines:])[-chars:]
    return f"{exc}\n{tail}" if tail else str(exc)
