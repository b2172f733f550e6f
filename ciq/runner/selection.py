"""The box's end of a sharded run's test selection: a pytest plugin, loaded in the box as
``-p ciq_selection`` from a read-only folder of the run that holds a copy of this file
and of the ordering rule alone (so that nothing else of ciq can be imported there, or
shadow a module of the project's). Never imported by the worker.

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
* ``--ciq-order=FILE``: likely failures first (:mod:`ciq.ordering`; the rule,
  :mod:`ciq.order_rule`, is copied beside this file as ``ciq_order_rule``): FILE (JSON,
  the worker's) names the tests that failed last time, the flaky ones, the known
  durations and the files the commit changed; the plugin builds the static import
  graph of the project's files (:func:`importers`) and reorders the items, whole files
  at a time. ``--ciq-order-out=FILE`` gets the changed files and
  their importers as test files (the sharding plan's likely failures). Ordering is best
  effort: whatever goes wrong leaves pytest's own order.

Standard library and pytest only, nothing of ``ciq``: it runs in the commit's
environment, whose pytest may be older than the worker's (7.0 and later).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
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
    group.addoption("--ciq-order", metavar="FILE", default=None,
                    help="run likely failures first, from the hints in FILE (JSON)")
    group.addoption("--ciq-order-out", metavar="FILE", default=None,
                    help="write the changed test files and their importers to FILE")


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
    _select(config, items)
    _reorder(config, items)


def _select(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the items ``--ciq-ids`` names (in its order with ``--ciq-in-order``)."""
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


def _reorder(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Likely failures first (``--ciq-order``); pytest's own order if anything fails."""
    path = config.getoption("ciq_order", None)
    if not path:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    try:
        ordered, changed, imp = _ordered(path, str(config.rootpath), items)
        out = config.getoption("ciq_order_out", None)
        if out:
            _write_json(out, {"changed": sorted(changed)[:MAX_FILES],
                              "importers": sorted(imp)[:MAX_FILES]})
    except Exception as exc:  # the project's files are anything: never crash its run
        if reporter is not None:
            reporter.write_line(f"ciq: not ordering the tests: {exc!r}"[:300])
        return
    by_id = {item.nodeid: item for item in items}
    if len(by_id) == len(items):  # duplicate ids (a plugin's items): leave them be
        items[:] = [by_id[i] for i in ordered]


def _ordered(path: str, rootpath: str,
             items: list[pytest.Item]) -> tuple[list[str], set[str], set[str]]:
    """The items' ids in their order, and the test files (in node id form) that the
    commit changed and that import a change."""
    # The rule, written once (ciq.order_rule), copied beside this file in the box.
    from ciq_order_rule import file_of, order

    with open(path, encoding="utf-8") as fh:
        hints = json.load(fh)
    ids = [item.nodeid for item in items]
    root = os.path.realpath(hints["root"])
    files = {file_of(i) for i in ids}
    where = {f: os.path.realpath(os.path.join(rootpath, f)) for f in files}
    changed_abs = {os.path.realpath(os.path.join(root, c)) for c in hints["changed"] or ()}
    changed = {f for f in files if where[f] in changed_abs}
    reached = importers(root, sorted(set(where.values())), changed_abs)
    imp = {f for f in files if where[f] in reached}
    durations = {k: float(v) for k, v in hints["durations"].items()}
    return (order(ids, set(hints["failed"]), changed, imp, set(hints["flaky"]), durations),
            changed, imp)


def _write_json(path: str, data: object) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)  # whole or not at all


# -- the import graph (static: the project's code is parsed, never imported) -------------

#: Bounds of the graph: bytes of a file parsed, files parsed, seconds, files written out.
MAX_SOURCE = 1 << 20
MAX_PARSED = 20_000
GRAPH_SECONDS = 10.0
MAX_FILES = 100_000


def importers(root: str, test_files: list[str], changed: set[str]) -> set[str]:
    """Which of ``test_files`` (real paths) import, transitively through module-level
    ``import``/``from … import`` of the checkout's own files, one of ``changed`` (real
    paths), or sit under a changed ``conftest.py``. Files over :data:`MAX_SOURCE`, that do
    not parse, or outside ``root`` add no edge; the walk stops at :data:`MAX_PARSED`
    files or :data:`GRAPH_SECONDS` (an answer in part only orders in part)."""
    if not changed:
        return set()
    bases = [root, os.path.join(root, "src")] + [
        os.path.realpath(p) for p in sys.path
        if p and os.path.realpath(p).startswith(root + os.sep)]
    deadline = time.monotonic() + GRAPH_SECONDS
    edges: dict[str, set[str]] = {}
    todo = list(test_files)
    while todo and len(edges) < MAX_PARSED and time.monotonic() < deadline:
        f = todo.pop()
        if f in edges:
            continue
        edges[f] = _imports_of(f, root, bases)
        todo += [g for g in edges[f] if g not in edges]
    users: dict[str, set[str]] = {}
    for f, deps in edges.items():
        for g in deps:
            users.setdefault(g, set()).add(f)
    seen, todo = set(changed), list(changed)
    while todo:
        for f in users.get(todo.pop(), ()):
            if f not in seen:
                seen.add(f)
                todo.append(f)
    tops = [os.path.dirname(c) + os.sep for c in changed
            if os.path.basename(c) == "conftest.py"]
    return {f for f in test_files if f in seen or any(f.startswith(t) for t in tops)}


def _imports_of(path: str, root: str, bases: list[str]) -> set[str]:
    """The checkout's files that ``path`` imports at module level; none if unreadable."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_SOURCE:
            return set()
        with open(path, "rb") as fh:
            source = fh.read(MAX_SOURCE + 1)
        if len(source) > MAX_SOURCE:
            return set()
        with warnings.catch_warnings():  # a SyntaxWarning under `-W error` is no crash
            warnings.simplefilter("ignore")
            tree = ast.parse(source, path)
        found: set[str] = set()
        own = [_base_of(path)]
        for node in _module_level(tree.body):
            for name, level in _names(node):
                found |= _resolve(name, level, path, own + bases, root)
        found.discard(path)
        return found
    except Exception:  # RecursionError of a deep expression, a vanished file: no edges
        return set()


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run at import time: the module's own and those inside its
    top-level if / try / with blocks (not in functions or classes)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for part in ("body", "orelse", "finalbody"):
                yield from _module_level(getattr(node, part, []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)


def _names(node: ast.Import | ast.ImportFrom) -> Iterator[tuple[str, int]]:
    """The modules a statement may load, with its relative level: ``from a import b``
    loads ``a`` and perhaps the module ``a.b``."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, 0
        return
    module = node.module or ""
    yield module, node.level
    for alias in node.names:
        if alias.name != "*":
            yield f"{module}.{alias.name}" if module else alias.name, node.level


def _resolve(name: str, level: int, path: str, bases: list[str], root: str) -> set[str]:
    """The checkout's files a module name loads (each package's ``__init__.py`` on the
    way, then the module)."""
    parts = [p for p in name.split(".") if p]
    if level:
        top = os.path.dirname(path)
        for _ in range(level - 1):
            top = os.path.dirname(top)
        bases = [top]
    found: set[str] = set()
    for base in bases:
        here = base
        for n, part in enumerate(parts):
            here = os.path.join(here, part)
            init = os.path.join(here, "__init__.py")
            for candidate in ((init,) if n < len(parts) - 1 else (here + ".py", init)):
                if os.path.isfile(candidate):
                    real = os.path.realpath(candidate)
                    if real.startswith(root + os.sep):
                        found.add(real)
        if level and not parts:
            init = os.path.join(base, "__init__.py")
            if os.path.isfile(init):
                found.add(os.path.realpath(init))
    return found


def _base_of(path: str) -> str:
    """Where pytest's default import mode puts a test file's folder on the path: the
    first folder up without an ``__init__.py``."""
    folder = os.path.dirname(path)
    while os.path.isfile(os.path.join(folder, "__init__.py")) and folder != "/":
        folder = os.path.dirname(folder)
    return folder


def pytest_collection_finish(session: pytest.Session) -> None:
    path = session.config.getoption("ciq_collected")
    if not path:
        return
    _write_json(path, [item.nodeid for item in session.items])
