"""What the routes of the pages and of the API share: the path and query parameters,
and the :class:`~ciq.web.queries.Queries` they read through."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from .queries import Queries

#: Reported commits a test history shows when not told.
HISTORY_DEFAULT = 20


def get_queries(request: Request) -> Queries:
    queries: Queries = request.app.state.queries
    return queries


Reads = Annotated[Queries, Depends(get_queries)]
RepoId = Annotated[str, Path(description="The repository's id (16 hex digits), as listed "
                                         "by /api/repos.")]
Sha = Annotated[str, Path(description="The commit's SHA or a unique prefix of it "
                                      "(4 hex digits or more).")]
BranchQuery = Annotated[str | None, Query(description="Only commits of this branch.")]
