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

Standard library and pytest only, nothing of ``ciq``: it runs in the commit's
environment, whose pytest may be older than the worker's (7.0 and later).
"""

from __future__ import annotations

import json
import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ciq", "ciq's sharded runs")
    group.addoption("--ciq-ids", metavar="FILE", default=None,
                    help="run only the tests whose ids FILE (a JSON list) names")
    group.addoption("--ciq-collected", metavar="FILE", default=None,
                    help="write the ids of the collected tests to FILE (a JSON list)")


@pytest.hookimpl(trylast=True)  # after the project's own selection and reordering
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = config.getoption("ciq_ids")
    if not path:
        return
    with open(path, encoding="utf-8") as fh:
        wanted = set(json.load(fh))
    keep = [item for item in items if item.nodeid in wanted]
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
