"""The dashboards API app around built objects: routers, middleware, problem+json errors.

Nothing here reads settings or opens stores: the composition root (``infra.api_app``)
reads every component's settings, opens the ledger and the stores, and passes them to
``build_service`` and ``create_app``; tests pass their own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from dashboards_api.errors import (
    ApiError,
    HttpError,
    InternalError,
    InvalidParameters,
    InvalidPath,
    problem_body,
)
from dashboards_api.ledger import Ledger
from dashboards_api.metrics import ApiMetrics, MetricsMiddleware
from dashboards_api.policy import PolicyCell, check_at_start
from dashboards_api.query_classes import load_product_budgets, load_query_classes
from dashboards_api.registry import ClassRegistry
from dashboards_api.releases import EventSource, ReleaseService, WindowSource
from dashboards_api.routes import (
    classes,
    dashboard,
    docs,
    health,
    ledger,
    live,
    metrics,
    policy,
    queries,
)
from dashboards_api.sensitivity import check_against_contracts
from dashboards_api.settings import ApiSettings, KeyGrant, Role, grant_of
from domains.contract import DomainContract
from domains.runtime import RuntimeSettings

PROBLEM = "application/problem+json"
log = logging.getLogger(__name__)


def problem_response(error: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The problem response of ``error`` (with Retry-After when it says when to retry)."""
    headers = dict(headers or {})
    if "retry_after_seconds" in error.extra:
        headers["Retry-After"] = str(error.extra["retry_after_seconds"])
    return JSONResponse(
        problem_body(error), status_code=error.status, media_type=PROBLEM, headers=headers
    )


class RequestGuard:
    """ASGI guard in front of every route: refuses paths with "." or ".." segments (also
    percent-encoded: the path is decoded here), which could let one URL stand for another
    route's, with a problem document; and drops ``Range`` headers, so no page asset answers
    a plain-text 416 or 400 for a bad range (the API serves whole documents)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if any(part in {".", ".."} for part in path.split("/")):
            response = problem_response(InvalidPath("the path has '.' or '..' segments"))
            await response(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        await self.app({**scope, "headers": headers}, receive, send)


def check_safe(runtime: RuntimeSettings, api: ApiSettings) -> None:
    """Refuse open access outside development."""
    if runtime.is_production and not api.keys:
        raise ValueError(
            "PRIVMESH_API_KEYS is empty while PRIVMESH_ENV=production; configure API keys "
            'as JSON, e.g. PRIVMESH_API_KEYS=\'{"<key>": "consumer"}\''
        )


def create_app(
    service: ReleaseService,
    api_keys: Mapping[str, Role | KeyGrant] | None = None,
    settings: ApiSettings | None = None,
) -> FastAPI:
    """The app around a ready ``service`` (tests pass their own)."""
    app = FastAPI(
        title="privmesh dashboards API",
        version="0.1.0",
        description="Differentially-private aggregates from pre-registered query classes.",
        # The document and its pages come from routes.docs (assets served here, no CDN).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.settings = settings or ApiSettings()
    app.state.registry = ClassRegistry(service, app.state.settings.registry_sync_seconds)
    app.state.api_keys = {key: grant_of(value) for key, value in (api_keys or {}).items()}
    app.state.metrics = ApiMetrics(service)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return problem_response(InvalidParameters("fix the listed parameters", errors=errors))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace or data in the body; the log has the details.
        log.exception("unhandled error", exc_info=exc)
        return problem_response(InternalError())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The router's headers travel on: a 405 says which methods are allowed (Allow).
        return problem_response(HttpError(exc.status_code, str(exc.detail)), exc.headers)

    app.add_middleware(RequestGuard)

    app.include_router(health.router)
    app.include_router(queries.router)
    app.include_router(ledger.router)
    app.include_router(metrics.router)
    app.include_router(classes.router)
    app.include_router(policy.router)
    app.include_router(live.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    return app


@dataclass(frozen=True)
class WindowFacts:
    """What the API must know about the data it sums, given once by the composition root
    (which reads it from the settings the stream processor writes that data with)."""

    window_seconds: int
    """Length of one aggregation window (s): a released window is this long."""
    grace_seconds: int
    """How long after its end a window may still change (s): it is released after that."""
    partitions: int
    """Ingest partitions that each write their own rows of a window; a window is complete
    once all of them have."""
    events_settle_seconds: int
    """How long after an event's time its offline part is surely written (s)."""


def build_service(
    api: ApiSettings,
    facts: WindowFacts,
    sources: Mapping[str, WindowSource],
    ledger_: Ledger,
    contracts: dict[str, DomainContract],
    events: Mapping[str, EventSource] | None = None,
) -> ReleaseService:
    """The release service over built stores and ledger; refuses classes that do not fit
    their contracts, products without a daily total, and anything above the governance
    policy's caps."""
    classes = load_query_classes()
    check_against_contracts(classes, contracts)
    budgets = load_product_budgets()
    products = [f"{d}.{p.name}" for d, c in contracts.items() for p in c.products]
    check_at_start(
        api.policy,
        classes,
        {k: b.budget_micro for k, b in budgets.items()},
        products,
        {k: b.reserve_micro for k, b in budgets.items()},
    )
    return ReleaseService(
        classes=classes,
        contracts=contracts,
        sources=dict(sources),
        ledger=ledger_,
        window_seconds=facts.window_seconds,
        grace_seconds=facts.grace_seconds,
        lookback_windows=api.release_lookback_windows,
        partitions=facts.partitions,
        product_budgets=budgets,
        policy=PolicyCell(api.policy),
        history_windows=api.history_windows,
        events=dict(events or {}),
        events_settle_seconds=facts.events_settle_seconds,
    )
