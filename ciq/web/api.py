"""The JSON API under /api: what the pages show, for scripts and for the pages' own
live updates. Documented by the OpenAPI schema at /openapi.json (and the page /api)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from .history import history
from .params import HISTORY_DEFAULT, BranchQuery, Reads, RepoId, Sha
from .queries import MAX_HISTORY, PAGE_SIZE, branch_status, offset_of, repo_dict

#: Most commits one API page returns.
MAX_LIMIT = 200


class Error(BaseModel):
    detail: str = Field(description="What went wrong, in one line.")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "A malformed SHA, page or parameter."},
    404: {"model": Error, "description": "No such repository or commit."},
    503: {"model": Error, "description": "Redis cannot be reached."},
}

router = APIRouter(prefix="/api", tags=["reports"], responses=ERRORS)


class Summary(BaseModel):
    total: int
    passed: int
    failed: int
    errors: int
    skipped: int


class CommitRow(BaseModel):
    """A commit as listings show it (no test details)."""

    repo: str
    commit: str
    branch: str | None
    status: str = Field(description="passed, failed, error, timeout; running or queued "
                                    "while there is no report yet.")
    subject: str
    author: str
    enqueued_at: str | None
    summary: Summary | None = Field(description="Test counts, once reported.")
    duration: float | None = Field(description="Seconds the run took, once reported.")
    worker: str | None
    attempts: int
    started_at: str | None
    finished_at: str | None


class BranchOut(BaseModel):
    name: str = Field(description="The branch ('' for commits enqueued without one).")
    commits: int
    head: CommitRow = Field(description="The newest commit of the branch.")
    finished: CommitRow | None = Field(description="The newest commit with a report.")
    badge: str = Field(description="Path of the branch's SVG badge.")


class RepoOut(BaseModel):
    id: str
    repo: str
    commits: int
    branches: list[BranchOut] = Field(description="Most recently active first.")


class CommitsPage(BaseModel):
    id: str
    repo: str
    branch: str | None
    total: int = Field(description="Commits in all (of the branch, when filtered).")
    offset: int
    limit: int
    commits: list[CommitRow] = Field(description="Newest first.")


class TestHistoryOut(BaseModel):
    id: str
    outcomes: list[str | None] = Field(description="One per commit, newest first; null "
                                                   "where the test did not run.")
    unstable: bool = Field(description="Flipped between passing and failing at least "
                                       "twice (for ranking: a break fixed later flips too).")
    newly_broken: bool = Field(description="Fails in the newest commit, passed in the "
                                           "one before.")
    failing: bool
    flips: int
    flakes: int = Field(0, description="Commits of the window on which it failed, then "
                                       "passed when rerun on the same commit (flaky).")


class HistoryOut(BaseModel):
    id: str
    repo: str
    branch: str | None
    commits: list[CommitRow] = Field(description="Commits with a report, newest first.")
    tests: list[TestHistoryOut] = Field(description="Newly broken first, then flaky, unstable, "
                                                    "failing, then the rest.")


class TestStatsOut(BaseModel):
    id: str
    runs: int = Field(description="Commits of the window on which it passed, failed or "
                                  "errored.")
    failures: int = Field(description="Runs it ended failing (confirmed, or not rerun).")
    flakes: int = Field(description="Runs it failed, then passed when rerun on the same "
                                    "commit.")
    flake_rate: float = Field(description="flakes / runs.")
    flake_interval: list[float] = Field(description="95 % Wilson score interval of the "
                                                    "flake rate: [low, high].")
    unstable: int = Field(description="Flips between passing and failing across commits "
                                      "(for ranking only).")
    last_flaky: str | None = Field(description="Newest commit on which it flaked.")
    last_failing: str | None = Field(description="Newest commit on which it failed.")
    duration_p50: float | None = Field(description="Median seconds of its runs.")
    duration_p95: float | None
    clean_streak: int = Field(description="Newest runs in a row that passed at once.")
    clean_bound: float | None = Field(description="95 % upper bound of its flake rate "
                                                  "after that clean streak: 1 - 0.05**(1/n).")
    quarantine: dict[str, Any] | None = Field(description="Its entry in force (state, auto, "
                                                          "owner, reason, expires_at, and "
                                                          "clean_runs since it was made "
                                                          "with their clean_bound).")


class RepoStatsOut(BaseModel):
    commits: int
    flaky_commits: int = Field(description="Commits with at least one flaky test.")
    flaky_share: float
    flaky_interval: list[float] = Field(description="95 % Wilson interval of the share.")
    rerun_commits: int = Field(description="Commits whose failing tests were rerun.")
    rerun_seconds: float = Field(description="Seconds spent rerunning failing tests.")
    rerun_seconds_per_commit: float


class AutoQuarantineOut(BaseModel):
    mode: str = Field(description="suggest (the default: only shown here), auto, off.")
    flaky_commits: int
    window: int
    release_after: int
    days: int
    suggestions: list[dict[str, Any]] = Field(description="Tests flaky on enough distinct "
                                                          "commits, not quarantined.")
    releases: list[dict[str, Any]] = Field(description="Automatic entries due for release, "
                                                       "with the bound on the flake rate.")
    recent: list[dict[str, Any]] = Field(description="What it did lately, newest first.")


class StatsOut(BaseModel):
    id: str
    repo: str
    branch: str | None
    window: int = Field(description="Reported commits the statistics are over.")
    summary: RepoStatsOut
    tests: list[TestStatsOut] = Field(description="Flakiest first, then failing.")
    quarantine: AutoQuarantineOut = Field(description="The automatic quarantine, over its "
                                                      "own window.")
    commits: list[CommitRow]


class BranchStatus(BaseModel):
    id: str
    repo: str
    branch: str
    status: str | None = Field(description="The newest report's status on the branch; "
                                           "running or queued when none is finished yet; "
                                           "null for an unknown branch.")
    commit: str | None = Field(description="The commit the status is of.")
    head: CommitRow | None = Field(description="The newest commit of the branch.")


@router.get("/repos", summary="Repositories", response_model=list[RepoOut])
def repos(q: Reads) -> list[dict[str, Any]]:
    """Every repository ciq has seen, with the newest commit of each branch."""
    return [repo_dict(q, rid, repo) for rid, repo in q.repos().items()]


@router.get("/repos/{rid}", summary="One repository", response_model=RepoOut)
def repo(rid: RepoId, q: Reads) -> dict[str, Any]:
    """A repository with the newest commit of each branch."""
    return repo_dict(q, rid, q.repo(rid))


@router.get("/repos/{rid}/commits", summary="A page of commits", response_model=CommitsPage)
def commits(
    rid: RepoId, q: Reads,
    offset: Annotated[int | None, Query(ge=0, description="Commits to skip (newest first)."
                                       )] = None,
    page: Annotated[int | None, Query(ge=1, description="Page number (1 is the newest), "
                                      "when no offset is given.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Commits per page.")
                     ] = PAGE_SIZE,
    branch: BranchQuery = None,
) -> dict[str, Any]:
    """A repository's commits, newest first, with their state and test counts."""
    start = offset_of(page, offset, limit)
    rows, total = q.commits(rid, start, limit, branch)
    return {"id": rid, "repo": q.repo(rid), "branch": branch or None, "total": total,
            "offset": start, "limit": limit, "commits": rows}


@router.get("/repos/{rid}/commits/{sha}", summary="One commit's report")
def commit(rid: RepoId, sha: Sha, q: Reads) -> dict[str, Any]:
    """The commit's final report (as `ciq report --json`) with `"state": "finished"`; or,
    while it has none, the commit with `"state"` (and `"status"`) `queued` or
    `running`."""
    return q.commit(rid, sha).to_dict()


@router.get("/repos/{rid}/tests", summary="Per-test history", response_model=HistoryOut)
def tests(
    rid: RepoId, q: Reads,
    n: Annotated[int, Query(ge=1, le=100, description="Reported commits to look at.")
                 ] = HISTORY_DEFAULT,
    branch: BranchQuery = None,
) -> dict[str, Any]:
    """Each test's outcome in the newest `n` commits that have a report, with flaky and
    newly broken tests first."""
    found = history(q.reported(rid, n, branch))
    return {"id": rid, "repo": q.repo(rid), "branch": branch or None, **found.to_dict()}


@router.get("/repos/{rid}/stats", summary="Per-test statistics", response_model=StatsOut)
def stats(
    rid: RepoId, q: Reads,
    n: Annotated[int | None, Query(ge=1, le=MAX_HISTORY, description="Reported commits to "
                                   "look at; the auto-quarantine window when not given.")
                 ] = None,
    branch: BranchQuery = None,
) -> dict[str, Any]:
    """Runs, failures, same-commit flakes and flake rate (with its 95 % Wilson interval),
    unstable score, last flaky and failing commits, duration p50/p95 and quarantine state
    of each test; the repository's share of flaky commits and rerun seconds; and the
    automatic quarantine's suggestions and releases."""
    return q.statistics(rid, n, branch)


@router.get("/repos/{rid}/branches/{branch:path}", summary="A branch's status",
            response_model=BranchStatus)
def branch(rid: RepoId, branch: str, q: Reads) -> dict[str, Any]:
    """The status a branch's badge shows (a branch name may contain `/`)."""
    return branch_status(q, rid, branch)
