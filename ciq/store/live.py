"""Live results in Redis: each test's outcome as it happens, in a bounded stream per
commit, and the commit's first failure, kept once in its hash (what `ciq report
--watch` and the web show long before the report).

The outcomes come in batches from the worker's tail of the box's live file
(:mod:`ciq.runner.live`): one round trip per batch, whatever the number of tests.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from . import keys
from .store import Store

logger = logging.getLogger(__name__)

#: Outcomes kept per commit (the newest), and for how long (seconds).
MAX_LEN, KEEP = 5000, 7 * 24 * 3600


class LiveResults:
    """The callback of one run (:attr:`ciq.runner.runs.RunSpec.live`)."""

    def __init__(self, store: Store, repo: str, sha: str, run_id: str) -> None:
        self.client: Any = store.client
        rid = keys.repo_id(repo)
        self.stream, self.commit = keys.live(rid, sha), keys.commit(rid, sha)
        self.run_id = run_id
        self.failed = False

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry in batch:
            pipe.xadd(self.stream, {"run": self.run_id, "result": json.dumps(entry)},
                      maxlen=MAX_LEN, approximate=True)
            if not self.failed and entry.get("outcome") in ("failed", "error"):
                self.failed = True
                pipe.hsetnx(self.commit, "first_failure", json.dumps(
                    {**entry, "run_id": self.run_id}))
        pipe.expire(self.stream, KEEP)
        pipe.execute()


def first_failure(store: Store, repo: str, sha: str) -> dict[str, Any] | None:
    """The commit's first failing test as its run saw it (id, outcome, message, when)."""
    raw = store.client.hget(keys.commit(keys.repo_id(repo), sha), "first_failure")
    try:
        found = json.loads(raw) if raw else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def outcomes(store: Store, repo: str, sha: str, after: str = "-",
             count: int = 1000) -> list[tuple[str, dict[str, Any]]]:
    """The outcomes of the commit's stream after entry ``after``: (entry id, outcome)."""
    start = after if after == "-" else f"({after}"
    found = []
    for entry_id, fields in store.client.xrange(keys.live(keys.repo_id(repo), sha),
                                                start, "+", count=count):
        try:
            found.append((entry_id, {**json.loads(fields.get("result", "")),
                                     "run_id": fields.get("run")}))
        except ValueError:
            continue
    return found
