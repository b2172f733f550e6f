"""The web application: reports as HTML pages, a JSON API and status badges.

``create_app(settings)`` is the factory; :mod:`ciq.web.server` serves it with uvicorn.
The app only reads Redis, but for quarantining tests (:mod:`.quarantine`), which needs
the operator token. Its pages load nothing from elsewhere (no CDN): one stylesheet
and one script under ``/static``, which the Content-Security-Policy names as the only
sources allowed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import BadInput, NotFound, StoreUnavailable
from ..settings import Settings
from ..store.store import Store
from . import api, culprit, live, metrics, pages, quarantine
from .queries import Queries

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

#: Headers of every response. Scripts and styles come from this server only: whatever a
#: repository puts in a test name or its output cannot run here even if it slipped
#: through escaping.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

DESCRIPTION = """\
Reports of ciq, the distributed CI for Python projects: repositories, their commits
newest first, one commit's report, per-test history, quarantined tests and status
badges. Read-only, but for quarantining tests: those writes need the operator token
(`CIQ_OPERATOR_TOKEN` of `ciq web`) as `Authorization: Bearer TOKEN`.

Repositories are named by their id (`/api/repos` maps ids to repositories); a
commit may be named by a unique prefix of its SHA (4 digits or more). Errors are
`{"detail": "..."}` with status 400 (bad input), 401 (no or a wrong operator token),
403 (writes not enabled), 404 (unknown repository or commit) or 503 (Redis cannot be
reached).
"""


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response, and
    ``Cache-Control: no-cache`` to every response not under /static (reports change)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not static and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-cache"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith(("/api/", "/openapi")) or path.endswith((".xml", ".svg"))


def _error(request: Request, status: int, message: str) -> Response:
    message = " ".join(message.split())  # one line, whatever the exception said
    if _wants_json(request):
        return JSONResponse({"detail": message}, status_code=status)
    return pages.error_page(request, status, message)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error(request, 404, str(exc))

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> Response:
        return _error(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return _error(request, 400, f"bad {where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> Response:
        return _error(request, 503, str(exc))

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> Response:
        logger.warning("web: Redis error on %s: %s", request.url.path, exc)
        return _error(request, 503, f"cannot reach Redis ({exc}); check "
                                    "CIQ_RESULT_BACKEND and that Redis runs")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404 and exc.detail == "Not Found":
            return _error(request, 404, f"nothing at {request.url.path[:200]}; "
                                        "the repositories are at /")
        response = _error(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # WWW-Authenticate of a 401
        return response


def create_app(settings: Settings) -> FastAPI:
    """The web UI and JSON API over the reports in ``settings.result_backend``."""
    app = FastAPI(
        title="ciq", version=__version__, description=DESCRIPTION,
        # FastAPI's own docs pages load Swagger UI and ReDoc from a CDN: /api is ours.
        docs_url=None, redoc_url=None, openapi_url="/openapi.json",
    )
    app.state.queries = Queries(Store.from_url(settings.result_backend))
    app.state.operator_token = settings.operator_token
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(api.router)
    app.include_router(live.router)
    app.include_router(culprit.router)
    app.include_router(quarantine.api)
    app.include_router(pages.router)
    app.include_router(quarantine.pages)
    metrics.install(app, settings, app.state.queries.store.client)
    _install_errors(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        """For health checks (Compose, a load balancer): 200 while Redis answers."""
        app.state.queries.store.ping()
        return {"status": "ok"}

    return app
