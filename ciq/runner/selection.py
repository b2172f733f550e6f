"""The box's end of a sharded run's test selection: a pytest plugin, loaded in the box as
``-p ciq_selection`` from a read-only folder of the run that holds a copy of this file
alone (so that nothing else of ciq can be imported there, or shadow a module of the
project's). Never imported by the worker.

* ``--ciq-collected=FILE``: once collection is over (and any plugin of the project's has
  deselected what it deselects), the ids of the tests pytest would run go to FILE as a
  JSON list: pytest's own node ids, whatever characters they hold. The ``-q`` listing
  on the output is one line per id, and a line is not a safe separator.
* ``--ciq-ids=FILE``: only the tests whose ids FILE (a JSON list) names are kept; the
  rest are deselected as ``-k`` would do it, so that pytest's summary and its JUnit XML
  count just the chunk. The command line names only the files those ids are in: the
  ids themselves never pass through argv (its size limits, and the odd characters of
  parametrised ids).
* ``--ciq-live=FILE``: each test's outcome is appended to FILE as it happens, one JSON
  line (``id``, ``outcome``, ``duration``, ``message`` for a failure, ``when``: epoch
  seconds), flushed at once, so that the worker's tail of it (``ciq.runner.live``) shows
  the first failure long before the report. Bounded: nothing more after
  :data:`LIVE_LINES` lines or :data:`LIVE_BYTES` bytes (the report has every test).

Standard library and pytest only, nothing of ``ciq``: it runs in the commit's
environment, whose pytest may be older than the worker's (7.0 and later).
"""

from __future__ import annotations

import json
import os
import time
from typing import IO, Any

import pytest

#: Most lines and bytes a run's live file gets; the rest of the run is in its report.
LIVE_LINES = 100_000
LIVE_BYTES = 16 << 20
#: Characters of a failure's message in its live line.
LIVE_MESSAGE = 500


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ciq", "ciq's sharded runs")
    group.addoption("--ciq-ids", metavar="FILE", default=None,
                    help="run only the tests whose ids FILE (a JSON list) names")
    group.addoption("--ciq-in-order", action="store_true", default=False,
                    help="run them in the order of that list (a rerun in order)")
    group.addoption("--ciq-collected", metavar="FILE", default=None,
                    help="write the ids of the collected tests to FILE (a JSON list)")
    group.addoption("--ciq-live", metavar="FILE", default=None,
                    help="append each test's outcome to FILE as it happens (JSON lines)")


class _Live:
    """The live file of a run (a plugin of its own once configured): one flushed JSON
    line per test outcome, up to the bounds."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh, self.lines, self.size = fh, 0, 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = _entry(report)
        if entry is None:
            return
        line = json.dumps(entry) + "\n"
        if self.lines >= LIVE_LINES or self.size + len(line) > LIVE_BYTES:
            return
        self.lines, self.size = self.lines + 1, self.size + len(line)
        try:
            self.fh.write(line)
            self.fh.flush()
        except OSError:  # a full disk, say: the report is what counts
            self.lines = LIVE_LINES

    def pytest_unconfigure(self) -> None:
        self.fh.close()


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("ciq_live", None)
    if path:
        config.pluginmanager.register(_Live(open(path, "a", encoding="utf-8")), "ciq-live")


def _entry(report: pytest.TestReport) -> dict[str, Any] | None:
    """What a phase's report says of its test: the call's outcome; a setup's that did
    not pass (an error, a skip); a teardown's error. None for the phases that say
    nothing new."""
    outcome: str
    if report.when == "call":
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "skipped" if report.skipped else "failed"  # xfail / xpass strict
    elif report.when == "setup" and not report.passed:
        outcome = "skipped" if report.skipped else "error"
    elif report.when == "teardown" and report.failed:
        outcome = "error"
    else:
        return None
    entry: dict[str, Any] = {"id": report.nodeid, "outcome": outcome,
                             "duration": round(report.duration, 6), "when": time.time()}
    if outcome in ("failed", "error"):
        entry["message"] = _message(report)
    return entry


def _message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or report.longreprtext.strip().splitlines()[-1:]
    if isinstance(text, list):
        text = text[0] if text else ""
    return str(text)[:LIVE_MESSAGE]


@pytest.hookimpl(trylast=True)  # after the project's own selection and reordering
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = config.getoption("ciq_ids")
    if not path:
        return
    with open(path, encoding="utf-8") as fh:
        listed = json.load(fh)
    wanted = set(listed)
    keep = [item for item in items if item.nodeid in wanted]
    if config.getoption("ciq_in_order"):  # as the commit's run ran them, whatever sorts
        at = {test: i for i, test in enumerate(listed)}
        keep.sort(key=lambda item: at[item.nodeid])
        items[:] = keep
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in wanted])
        items[:] = keep
    missing = len(wanted - {item.nodeid for item in keep})
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if missing and reporter is not None:
        reporter.write_line(f"ciq: {missing} of the {len(wanted)} tests of this chunk were "
                            "not collected")


def pytest_collection_finish(session: pytest.Session) -> None:
    path = session.config.getoption("ciq_collected")
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump([item.nodeid for item in session.items], fh)
    os.replace(tmp, path)  # whole or not at all
