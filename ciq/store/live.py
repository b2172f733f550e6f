"""Live results in Redis: each test's outcome as it happens, in a bounded stream per
commit, and the commit's first failure, kept once in its hash (what `ciq report
--watch`, the web and the `first-failure` notification use long before the report).

The outcomes come in batches from the worker's tail of the box's live file
(:mod:`ciq.runner.live`): one round trip per batch, whatever the number of tests. The
first failure is one script in that same round trip (:data:`FIRST_FAILURE`): fenced like
the final report (a stale run stores nothing), kept once (HSETNX), and, when it is the
commit's first, a notification event queued with it, so that a failure stored once is
an event made once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from ..text import first_line
from . import keys
from .events import MESSAGE_CHARS, new_event_id
from .scripts import FIRST_FAILURE
from .store import Store

logger = logging.getLogger(__name__)

#: Outcomes kept per commit (the newest), and for how long (seconds).
MAX_LEN, KEEP = 5000, 7 * 24 * 3600
#: Outcomes one read of :func:`live_view` returns at most (the rest in later reads).
PAGE = 1000
#: Characters of a test id a notification event carries (the stream keeps up to 1000).
EVENT_ID_CHARS = 300


def failure_event(repo: str, sha: str, run_id: str, entry: dict[str, Any],
                  event_id: str) -> dict[str, Any]:
    """What the `first-failure` event says (the script adds branch, subject, author and
    worker). Bounded: whatever the test's id and message, the event stays small."""
    test = {"id": str(entry.get("id", ""))[:EVENT_ID_CHARS],
            "outcome": entry.get("outcome", "failed"),
            "message": first_line(str(entry.get("message") or ""), MESSAGE_CHARS),
            "duration": entry.get("duration", 0.0)}
    return {"id": event_id, "repo": repo, "rid": keys.repo_id(repo), "commit": sha,
            "kind": "first-failure", "status": "running", "run_id": run_id,
            "message": "", "test": test, "failures": [test],
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class LiveResults:
    """The callback of one run (:attr:`ciq.runner.runs.RunSpec.live`)."""

    def __init__(self, store: Store, repo: str, sha: str, run_id: str) -> None:
        self.client: Any = store.client
        self.repo, self.sha, self.run_id = repo, sha, run_id
        rid = keys.repo_id(repo)
        self.stream, self.commit = keys.live(rid, sha), keys.commit(rid, sha)
        self._keys = [self.commit, keys.lease(rid, sha), keys.report(repo, sha), keys.EVENTS,
                      keys.DUE, keys.plan(rid, sha)]
        self._chunks = keys.chunk_lease_prefix(rid, sha)
        self.failed = False

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry in batch:
            pipe.xadd(self.stream, {"run": self.run_id, "result": json.dumps(entry)},
                      maxlen=MAX_LEN, approximate=True)
            if not self.failed and entry.get("outcome") in ("failed", "error"):
                # Once per run: the script takes the place of a plain HSETNX, so the
                # first failure costs no extra command. EVAL, not EVALSHA: a pipeline
                # with a registered script asks SCRIPT EXISTS first, an extra round trip.
                self.failed = True
                event_id = new_event_id()
                event = failure_event(self.repo, self.sha, self.run_id, entry, event_id)
                pipe.eval(FIRST_FAILURE.text, len(self._keys), *self._keys,
                          json.dumps({**entry, "run_id": self.run_id}), self.run_id,
                          event_id, json.dumps(event), int(time.time() * 1000),
                          self._chunks, keys.PLAN_HOLDER)
        pipe.expire(self.stream, KEEP)
        pipe.execute()


def first_failure(store: Store, repo: str, sha: str) -> dict[str, Any] | None:
    """The commit's first failing test as its run saw it (id, outcome, message, when)."""
    raw = store.client.hget(keys.commit(keys.repo_id(repo), sha), "first_failure")
    return _failure(raw)


def _failure(raw: Any) -> dict[str, Any] | None:
    try:
        found = json.loads(raw) if raw else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _entries(raw: Iterable[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for entry_id, fields in raw:
        try:
            result = json.loads(fields.get("result", ""))
        except ValueError:
            continue
        if isinstance(result, dict):
            found.append((entry_id, {**result, "run_id": fields.get("run")}))
    return found


def outcomes(store: Store, repo: str, sha: str, after: str = "-",
             count: int = 1000) -> list[tuple[str, dict[str, Any]]]:
    """The outcomes of the commit's stream after entry ``after``: (entry id, outcome)."""
    start = after if after == "-" else f"({after}"
    return _entries(store.client.xrange(keys.live(keys.repo_id(repo), sha), start, "+",
                                        count=count))


def tally(entries: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Tests per outcome, each test counted once with its newest outcome: a run that
    died and ran again, or a failure rerun on the same commit, is not counted twice."""
    last = {e.get("id"): e.get("outcome") for e in entries}
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for outcome in last.values():
        if outcome in counts:
            counts[outcome] += 1
    return counts


def live_view(store: Store, repo: str, sha: str, after: str = "-",
              count: int = PAGE) -> dict[str, Any]:
    """What the web's live view reads, in one round trip: the first failure, the
    outcomes after entry ``after`` (``count`` at most), the id to read from next, and
    the counts over the whole stream. The stream is bounded (:data:`MAX_LEN`), so the
    read is too. Raises redis.ResponseError for an ``after`` Redis does not take."""
    rid = keys.repo_id(repo)
    pipe = store.client.pipeline(transaction=False)
    pipe.hget(keys.commit(rid, sha), "first_failure")
    pipe.xrange(keys.live(rid, sha), "-", "+", count=2 * MAX_LEN)
    if after != "-":
        pipe.xrange(keys.live(rid, sha), f"({after}", "+", count=count)
    replies = pipe.execute()
    everything = _entries(replies[1])
    page = _entries(replies[2]) if after != "-" else everything[:count]
    return {"first_failure": _failure(replies[0]), "outcomes": page,
            "next": page[-1][0] if page else (after if after != "-" else "0-0"),
            "counts": tally(o for _, o in everything)}
