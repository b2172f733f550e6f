"""The culprit search of a commit under /api (:mod:`ciq.culprit`): for a failing commit,
its search's state and answer; for a commit a search named, which failure it caused.

Test ids and messages were written by the code under test: the JSON carries them as
stored (bounded by the worker), never as HTML.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..errors import BadInput, NotFound
from ..gitrepo import validate_sha_prefix
from ..store.culprit import Searches
from .api import ERRORS
from .params import Reads, RepoId, Sha

router = APIRouter(prefix="/api", tags=["reports"], responses=ERRORS)


class AnswerOut(BaseModel):
    kind: str = Field(description="culprit, range (untestable commits in the way), flake "
                                  "(the failure does not reproduce) or inconclusive.")
    commits: list[str] = Field(description="The first bad commit, or the range it is in.")
    confidence: float = Field(description="Posterior probability of the answer.")
    good: str | None = Field(description="The last commit known good before them.")


class SearchOut(BaseModel):
    commit: str = Field(description="The failing commit the search started from.")
    branch: str | None
    tests: list[str] = Field(description="The failing tests the probes run.")
    status: str = Field(description="running or done.")
    answer: AnswerOut | None
    line: str = Field("", description="The answer in one line, once done.")
    author: str = Field("", description="The culprit's author, once named.")
    probes: int
    runs: int
    seconds: float | None = Field(None, description="How long the search took.")
    flake_rate: float = Field(description="The flake rate the search assumed.")
    range: int = Field(description="Commits in the range searched (the failing one too).")
    good_end: str | None = Field(description="The last commit where the tests passed.")
    started_at: str
    finished_at: str | None = None
    in_flight: list[dict[str, Any]]
    log: list[dict[str, Any]] = Field(description="The probes made: commit, outcomes, "
                                                  "worker, seconds.")


class CulpritOut(BaseModel):
    commit: str
    search: SearchOut | None = Field(description="The search started from this commit's "
                                                 "failure; null if none.")
    blamed_by: SearchOut | None = Field(description="The search that named this commit "
                                                    "(or a range with it); null if none.")


def _search(searches: Searches, repo: str, sha: str | None) -> dict[str, Any] | None:
    record = searches.record(repo, sha) if sha else None
    return record.to_dict() if record else None


@router.get("/repos/{rid}/commits/{sha}/culprit", summary="One commit's culprit search",
            response_model=CulpritOut)
def culprit(rid: RepoId, sha: Sha, q: Reads) -> dict[str, Any]:
    """The culprit search of a failing commit (the first bad commit of its range for its
    confirmed failures), and the search that named this commit, if any."""
    repo = q.repo(rid)
    try:
        full = q.store.resolve(repo, validate_sha_prefix(sha))
    except NotFound as exc:
        if "ambiguous" in str(exc):
            raise BadInput(str(exc)) from None
        full = validate_sha_prefix(sha)  # a culprit may be a commit ciq never ran
        if len(full) != 40:
            raise
    searches = Searches(q.store)
    own = _search(searches, repo, full)
    blamed = _search(searches, repo, searches.blamed_by(repo, full))
    if own is None and blamed is None:
        raise NotFound(f"no culprit search started from or named {full[:12]}")
    return {"commit": full, "search": own, "blamed_by": blamed}
