"""The HTML pages, the JUnit XML download and the badges.

Templates autoescape everything; text from a repository also goes through
:func:`~ciq.web.filters.printable`. Live parts (queued and running commits) are updated
by /static/ciq.js, which polls the JSON API and fetches /repos/{rid}/rows.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined

from ..errors import NotFound
from ..junit import to_junit
from ..report import Report
from ..store.culprit import Searches
from ..store.live import live_view
from . import filters
from .badge import badge
from .history import history
from .params import HISTORY_DEFAULT, BranchQuery, Reads, RepoId, Sha
from .queries import PAGE_SIZE, badge_path, branch_status, offset_of, repo_dict

router = APIRouter()

TEMPLATES = Environment(loader=PackageLoader("ciq.web", "templates"), autoescape=True,
                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters.update(filters.FILTERS)
TEMPLATES.globals.update(badge_path=badge_path)

#: Tests the history page shows at most (the ones that failed come first; the JSON
#: form has them all): a matrix of a huge suite would be a page no browser wants.
MAX_HISTORY_ROWS = 1000
#: Order of outcomes in a commit's test table: what needs a look first.
_OUTCOME_ORDER = {"failed": 0, "error": 1, "passed": 3, "skipped": 4}

PageQuery = Annotated[int | None, Query(ge=1, description="Page number, 1 the newest.")]
OffsetQuery = Annotated[int | None, Query(ge=0, description="Commits to skip.")]


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status, status=status, message=message)


@router.get("/", include_in_schema=False)
def index(request: Request, q: Reads) -> HTMLResponse:
    repos = [repo_dict(q, rid, repo) for rid, repo in q.repos().items()]
    return render(request, "index.html", repos=repos)


def _page(q: Reads, rid: str, page: int | None, offset: int | None,
          branch: str | None) -> dict[str, Any]:
    start = offset_of(page, offset, PAGE_SIZE)
    rows, total = q.commits(rid, start, PAGE_SIZE, branch)
    if start and not rows:
        last = max(1, -(-total // PAGE_SIZE))
        raise NotFound(f"page {start // PAGE_SIZE + 1} is past the last page ({last}) "
                       f"of {total} commits")
    query = f"&branch={filters.query(branch)}" if branch else ""
    return {"rid": rid, "repo": q.repo(rid), "rows": rows, "total": total, "offset": start,
            "page": start // PAGE_SIZE + 1, "pages": max(1, -(-total // PAGE_SIZE)),
            "branch": branch or None, "page_size": PAGE_SIZE,
            "api": f"/api/repos/{rid}/commits?offset={start}&limit={PAGE_SIZE}{query}",
            "fragment": f"/repos/{rid}/rows?offset={start}{query}", "query": query}


@router.get("/repos/{rid}", include_in_schema=False)
def repo(request: Request, rid: RepoId, q: Reads, page: PageQuery = None,
         offset: OffsetQuery = None, branch: BranchQuery = None) -> HTMLResponse:
    context = _page(q, rid, page, offset, branch)
    return render(request, "repo.html", branches=q.branches(rid), **context)


@router.get("/repos/{rid}/rows", include_in_schema=False)
def rows(request: Request, rid: RepoId, q: Reads, page: PageQuery = None,
         offset: OffsetQuery = None, branch: BranchQuery = None) -> HTMLResponse:
    """The rows of a page of commits: what the live view swaps in."""
    return render(request, "_rows.html", **_page(q, rid, page, offset, branch))


def _tests_in_order(report: Report) -> list[Any]:
    return sorted(report.tests, key=lambda t: _OUTCOME_ORDER.get(t.outcome, 2))


@router.get("/repos/{rid}/commits/{sha}", include_in_schema=False)
def commit(request: Request, rid: RepoId, sha: Sha, q: Reads) -> HTMLResponse:
    found = q.commit(rid, sha)
    report = found.report
    failures = [t for t in report.tests if t.outcome in ("failed", "error")] if report else []
    tests = _tests_in_order(report) if report else []
    # Until the report lands: the first failure and the outcomes so far (live.js goes on).
    live = live_view(q.store, found.repo, found.sha) if report is None else None
    # Its culprit search (a confirmed failure), and the one that named it, if any.
    searches = Searches(q.store)
    search = searches.record(found.repo, found.sha)
    by = searches.blamed_by(found.repo, found.sha)
    blamed = searches.record(found.repo, by) if by else None
    return render(request, "commit.html", c=found, row=found.row, report=report,
                  failures=failures, tests=tests, rid=rid, repo=found.repo, live=live,
                  search=search.to_dict() if search else None,
                  blamed=blamed.to_dict() if blamed else None)


@router.get("/repos/{rid}/commits/{sha}/junit.xml", summary="One commit's JUnit XML",
            tags=["reports"], response_class=Response,
            responses={200: {"content": {"application/xml": {}},
                             "description": "The report as JUnit XML."}})
def junit(rid: RepoId, sha: Sha, q: Reads) -> Response:
    """The commit's report as JUnit XML (as `ciq report --junit`); 404 while it has none."""
    found = q.commit(rid, sha)
    if found.report is None:
        raise NotFound(f"{found.sha[:12]} has no report yet ({found.state})")
    return Response(to_junit(found.report), media_type="application/xml")


@router.get("/repos/{rid}/tests", include_in_schema=False)
def tests(request: Request, rid: RepoId, q: Reads,
          n: Annotated[int, Query(ge=1, le=100)] = HISTORY_DEFAULT,
          branch: BranchQuery = None) -> HTMLResponse:
    repo = q.repo(rid)
    reported = q.reported(rid, q.wanted(repo, n), branch)
    found = history(reported[:n])
    stats = q.statistics(rid, n, branch, reported)
    return render(request, "tests.html", rid=rid, repo=repo, h=found, n=n,
                  branch=branch or None, branches=q.branches(rid),
                  rows=found.tests[:MAX_HISTORY_ROWS], stats=stats,
                  stat_rows=stats["tests"][:MAX_HISTORY_ROWS])


@router.get("/badge/{rid}/{branch:path}.svg", summary="A branch's status badge",
            tags=["badges"], response_class=Response,
            responses={200: {"content": {"image/svg+xml": {}},
                             "description": "An SVG badge: ciq | passing (failing, ...)."}})
def branch_badge(rid: RepoId, branch: str, q: Reads) -> Response:
    """The status of the branch's newest finished commit as an SVG badge ("unknown" for
    a branch without commits); never cached."""
    status = branch_status(q, rid, branch)
    return Response(badge(status["status"], f"ciq: {branch}"), media_type="image/svg+xml",
                    headers={"Cache-Control": "no-cache"})


@router.get("/api", include_in_schema=False)
def api_docs(request: Request) -> HTMLResponse:
    """The API's endpoints, from the OpenAPI schema (FastAPI's /docs needs a CDN)."""
    schema = request.app.openapi()
    endpoints = [
        {"method": method.upper(), "path": path, "summary": op.get("summary", ""),
         "description": op.get("description", ""),
         "parameters": [{"name": p["name"], "in": p["in"],
                         "required": p.get("required", False),
                         "description": p.get("description") or
                         p.get("schema", {}).get("description", "")}
                        for p in op.get("parameters", [])]}
        for path, ops in schema.get("paths", {}).items() for method, op in ops.items()
    ]
    return render(request, "api.html", endpoints=endpoints, info=schema.get("info", {}))
