"""Quarantined tests in the web UI and the API: listed for anyone, changed only by a
caller who gives the operator token (``CIQ_OPERATOR_TOKEN``).

The rest of the web UI only reads. Its writes are these: the API takes the token as
``Authorization: Bearer TOKEN``, which a browser never adds by itself (so another site
cannot make a visitor's browser write); the page's forms take it as a field the operator
types, which another site cannot know either. Without a token configured, every write
answers 403. Bodies are read up to :data:`MAX_BODY` bytes, after the token is checked.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import CiqError, NotFound
from ..quarantine import DEFAULT_DAYS, MAX_DAYS, entry, until
from ..store.quarantine import Quarantine
from .pages import render
from .params import Reads, RepoId

#: Bytes of a write's body read at most: an entry is a few hundred.
MAX_BODY = 16 * 1024
NO_TOKEN = ("this ciq web changes nothing: start it with CIQ_OPERATOR_TOKEN set to "
            "quarantine tests here, or use `ciq quarantine`")

api = APIRouter(prefix="/api", tags=["quarantine"])
pages = APIRouter()
_bearer = HTTPBearer(auto_error=False, description="The operator token (CIQ_OPERATOR_TOKEN).")


class QuarantineIn(BaseModel):
    test: str = Field(description="The test id, as reports name it "
                                  "(tests/test_x.py::test_y).")
    owner: str = Field(description="E-mail address of who looks after the test.")
    reason: str = Field(description="Why it is muted (one line).")
    days: int = Field(DEFAULT_DAYS, description=f"Days until the quarantine ends by "
                                                f"itself, 1 to {MAX_DAYS}.")


class EntryOut(BaseModel):
    test: str
    owner: str
    reason: str
    added_at: str
    expires_at: str
    added_by: str
    auto: bool = Field(False, description="Made by the automatic quarantine ([repo."
                       "quarantine] mode = \"auto\"), which releases it after a clean streak; "
                       "a person's entry never is.")
    state: str = Field(description="`in force` or `expired` (listed a while, then deleted).")


class RepoQuarantine(BaseModel):
    id: str
    repo: str
    tests: list[EntryOut] = Field(description="By test id.")


def _quarantine(q: Reads) -> Quarantine:
    return Quarantine(q.store)


def _allowed(request: Request, given: str | None) -> None:
    """Raise 403 when no token is configured, 401 when ``given`` is not it."""
    token: str | None = request.app.state.operator_token
    if not token:
        raise HTTPException(403, NO_TOKEN)
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "give the operator token (CIQ_OPERATOR_TOKEN of this "
                                 "ciq web) as `Authorization: Bearer TOKEN`",
                            headers={"WWW-Authenticate": "Bearer"})


def operator(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """The dependency of the API's writes."""
    _allowed(request, credentials.credentials if credentials else None)


async def _body(request: Request) -> bytes:
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise HTTPException(413, f"a request body has at most {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPException(413, f"a request body has at most {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _who(request: Request, face: str) -> str:
    return f"{face} ({request.client.host})" if request.client else face


def _listing(q: Reads, rid: str) -> dict[str, Any]:
    repo = q.repo(rid)
    return {"id": rid, "repo": repo,
            "tests": [e.to_dict() for e in _quarantine(q).entries(repo)]}


@api.get("/quarantine", summary="Quarantined tests", response_model=list[RepoQuarantine])
def quarantined(q: Reads) -> list[dict[str, Any]]:
    """The quarantined tests of every repository that has some (expired ones too, for a
    while)."""
    by_id = {repo: rid for rid, repo in q.repos().items()}
    return [{"id": by_id.get(repo, ""), "repo": repo, "tests": [e.to_dict() for e in found]}
            for repo, found in _quarantine(q).everywhere().items()]


@api.get("/repos/{rid}/quarantine", summary="A repository's quarantined tests",
         response_model=RepoQuarantine)
def repo_quarantine(rid: RepoId, q: Reads) -> dict[str, Any]:
    """Tests whose failures do not decide their commit's status, until they expire."""
    return _listing(q, rid)


@api.post("/repos/{rid}/quarantine", summary="Quarantine a test",
          response_model=EntryOut, status_code=201, dependencies=[Depends(operator)],
          responses={200: {"model": EntryOut, "description": "Renewed: it was quarantined."},
                     401: {"description": "No operator token, or a wrong one."},
                     403: {"description": "This ciq web has no CIQ_OPERATOR_TOKEN."}},
          openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": QuarantineIn.model_json_schema()}}}})
async def add(rid: RepoId, q: Reads, request: Request, response: Response) -> dict[str, Any]:
    """Quarantine a test (JSON body: `test`, `owner`, `reason`, `days`); again to renew
    it. Needs `Authorization: Bearer TOKEN`."""
    try:
        given = QuarantineIn.model_validate_json(await _body(request))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise HTTPException(400, f"bad {where}: {first.get('msg', 'invalid value')}"
                            ) from None
    made = entry(given.test, given.owner, given.reason, given.days, _who(request, "web API"))

    def store() -> bool:
        return _quarantine(q).add(q.repo(rid), made)

    if not await run_in_threadpool(store):
        response.status_code = 200
    return made.to_dict()


@api.delete("/repos/{rid}/quarantine", summary="Release a test from quarantine",
            response_model=EntryOut, dependencies=[Depends(operator)],
            responses={401: {"description": "No operator token, or a wrong one."},
                       403: {"description": "This ciq web has no CIQ_OPERATOR_TOKEN."}})
def remove(rid: RepoId, q: Reads,
           test: Annotated[str, Query(description="The test id.")]) -> dict[str, Any]:
    """Release a test: its failures count again. Answers the entry it had; 404 when it
    was not quarantined. Needs `Authorization: Bearer TOKEN`."""
    return _quarantine(q).remove(q.repo(rid), test).to_dict()


# -- the page ---------------------------------------------------------------------------

def _page(request: Request, q: Reads, rid: str, status_code: int = 200,
          problem: str = "", form: dict[str, str] | None = None) -> HTMLResponse:
    listed = _listing(q, rid)
    for e in listed["tests"]:
        e["until"] = until(e["expires_at"])
    return render(request, "quarantine.html", status_code, rid=rid, repo=listed["repo"],
                  entries=listed["tests"], problem=problem, form=form or {},
                  writable=bool(request.app.state.operator_token), default_days=DEFAULT_DAYS,
                  max_days=MAX_DAYS)


@pages.get("/repos/{rid}/quarantine", include_in_schema=False)
def page(request: Request, rid: RepoId, q: Reads) -> HTMLResponse:
    return _page(request, q, rid)


@pages.post("/repos/{rid}/quarantine", include_in_schema=False)
async def change(request: Request, rid: RepoId, q: Reads) -> Response:
    """The page's forms: ``action`` add (test, owner, reason, days) or remove (test), and
    the operator ``token``; back to the page (303) when done, the page with what went
    wrong otherwise."""
    await run_in_threadpool(q.repo, rid)  # 404 before anything else
    form: dict[str, str] = {}
    try:
        if not request.app.state.operator_token:
            raise HTTPException(403, NO_TOKEN)  # before reading anything
        raw = (await _body(request)).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        _allowed(request, form.get("token"))
        await run_in_threadpool(_apply_form, request, q, rid, form)
    except HTTPException as exc:
        return await run_in_threadpool(_page, request, q, rid, exc.status_code,
                                       str(exc.detail), _kept(form))
    except CiqError as exc:
        code = 404 if isinstance(exc, NotFound) else 400
        return await run_in_threadpool(_page, request, q, rid, code, str(exc), _kept(form))
    return RedirectResponse(f"/repos/{rid}/quarantine", status_code=303)


def _apply_form(request: Request, q: Reads, rid: str, form: dict[str, str]) -> None:
    repo, test = q.repo(rid), form.get("test", "")
    if form.get("action") == "remove":
        _quarantine(q).remove(repo, test)
        return
    try:
        days = int(form.get("days") or DEFAULT_DAYS)
    except ValueError:
        raise HTTPException(400, f"days must be a whole number from 1 to {MAX_DAYS}"
                            ) from None
    made = entry(test, form.get("owner", ""), form.get("reason", ""), days,
                 _who(request, "web UI"))
    _quarantine(q).add(repo, made)


def _kept(form: dict[str, str]) -> dict[str, str]:
    """What the add form shows again after a problem (never the token)."""
    if form.get("action") == "remove":
        return {}
    return {k: form[k] for k in ("test", "owner", "reason", "days") if k in form}
