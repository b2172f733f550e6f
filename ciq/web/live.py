"""The live view of one commit under /api: its tests' outcomes as they happen and its
first failure, long before the report (:mod:`ciq.store.live` keeps them). The commit
page polls it while the commit is queued or running (/static/live.js).

Everything here was written by the code under test (a test's id, its message): the
JSON carries it bounded, and the page shows it escaped (textContent, never HTML).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ..errors import BadInput, NotFound
from ..gitrepo import validate_sha_prefix
from ..store.live import PAGE, live_view
from .api import ERRORS
from .params import Reads, RepoId, Sha

router = APIRouter(prefix="/api", tags=["reports"], responses=ERRORS)

#: Characters of a test id and of a message the answer carries (what the worker keeps).
MAX_ID, MAX_MESSAGE = 1000, 500
#: A stream entry id as Redis makes them: milliseconds, a dash, a sequence number.
_ENTRY = re.compile(r"^([0-9]{1,20})-([0-9]{1,20})$")
_MAX_PART = 2**64 - 1


class LiveOutcome(BaseModel):
    entry: str = Field(description="The stream entry id (pass the last as `after`).")
    id: str = Field(description="The test id.")
    outcome: str = Field(description="passed, failed, error or skipped.")
    message: str = Field("", description="The first words of a failure's message.")
    duration: float = Field(0.0, description="Seconds the test took.")
    run_id: str | None = Field(None, description="The run that reported it.")


class FirstFailure(BaseModel):
    id: str
    outcome: str
    message: str = ""
    duration: float = 0.0
    when: float | None = Field(None, description="When it failed (seconds since the "
                                                 "epoch, the box's clock).")
    run_id: str | None = None


class Counts(BaseModel):
    passed: int
    failed: int
    error: int
    skipped: int


class LiveOut(BaseModel):
    commit: str
    state: str = Field(description="queued or running while there is no report; "
                                   "finished once it is stored (then `status` says how).")
    status: str = Field(description="running or queued; or the report's status.")
    first_failure: FirstFailure | None = Field(description="The first test that failed, "
                                                           "as soon as it did; or null.")
    outcomes: list[LiveOutcome] = Field(description=f"Outcomes after `after`, oldest "
                                                    f"first; {PAGE} at most.")
    next: str = Field(description="The `after` of the next call (the last entry given, "
                                  "or `after` itself when there was none).")
    counts: Counts = Field(description="Tests seen so far by outcome, each once (its "
                                       "newest outcome).")


def _after(value: str | None) -> str:
    """``after`` as Redis takes it ('-' for the start); BadInput for anything else."""
    if value in (None, "", "-", "0"):
        return "-"
    found = _ENTRY.match(value)
    if not found or max(int(found[1]), int(found[2])) > _MAX_PART:
        raise BadInput(f"bad after: {value[:40]!r} is not a stream entry id like "
                       "1700000000000-0 (give the `next` of the previous answer, or "
                       "nothing to start)")
    return value


def _resolve(q: Reads, rid: str, prefix: str) -> tuple[str, str]:
    """(repository, full SHA), as the other commit routes say it (without reading the
    report: this route is polled every second)."""
    repo = q.repo(rid)
    try:
        return repo, q.store.resolve(repo, validate_sha_prefix(prefix))
    except NotFound as exc:
        if "ambiguous" in str(exc):
            raise BadInput(str(exc)) from None
        raise


def _outcome(entry_id: str, o: dict[str, Any]) -> dict[str, Any]:
    return {"entry": entry_id, "id": str(o.get("id", ""))[:MAX_ID],
            "outcome": str(o.get("outcome", "")), "message": str(o.get("message") or ""
                                                                 )[:MAX_MESSAGE],
            "duration": _number(o.get("duration")), "run_id": o.get("run_id")}


def _first(found: dict[str, Any] | None) -> dict[str, Any] | None:
    if not found:
        return None
    return {"id": str(found.get("id", ""))[:MAX_ID], "outcome": str(found.get("outcome", "")),
            "message": str(found.get("message") or "")[:MAX_MESSAGE],
            "duration": _number(found.get("duration")),
            "when": _number(found.get("when")) or None,
            "run_id": str(found["run_id"]) if found.get("run_id") else None}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else 0.0


@router.get("/repos/{rid}/commits/{sha}/live", summary="One commit's live results",
            response_model=LiveOut)
def live(
    rid: RepoId, sha: Sha, q: Reads,
    after: Annotated[str | None, Query(max_length=64, description="A stream entry id: "
                                       "only outcomes after it (the `next` of the previous "
                                       "answer); none to start.")] = None,
) -> dict[str, Any]:
    """The commit's test outcomes as they happen, its first failure and counts so far,
    while it runs (and for a week after). Poll with `after` set to the previous `next`."""
    start = _after(after)
    repo, full = _resolve(q, rid, sha)
    row = q.store.rows(repo, [full])[0]
    try:
        found = live_view(q.store, repo, full, start)
    except redis.ResponseError as exc:  # an id Redis refuses (the newest possible one)
        raise BadInput(f"bad after: Redis refused {start!r} ({exc})") from None
    state = row["status"] if row["status"] in ("queued", "running") else "finished"
    return {"commit": full, "state": state, "status": row["status"],
            "first_failure": _first(found["first_failure"]),
            "outcomes": [_outcome(e, o) for e, o in found["outcomes"]],
            "next": found["next"], "counts": found["counts"]}
