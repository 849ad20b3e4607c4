"""``/v1/posture`` (governance role) and the privacy-posture page ``/posture``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse

from dashboards_api.deps import require
from dashboards_api.routes.dashboard import static_file
from infra.posture import OperationsCollector, PostureSources, assemble_posture

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter(
    prefix="/v1/posture",
    tags=["governance"],
    dependencies=[require("governance")],
)
page = APIRouter(tags=["governance"])


@router.get("")
async def posture(request: Request) -> dict[str, Any]:
    """Streams, consent, keys, budgets, erasures, DSRs, retention, models and findings."""
    sources: PostureSources = request.app.state.posture
    return await assemble_posture(sources)


@page.get("/posture", include_in_schema=False)
def posture_page() -> FileResponse:
    """The privacy-posture page (holds no data; its call carries the caller's key)."""
    return static_file(STATIC / "posture.html", "text/html; charset=utf-8")


@page.get("/posture/posture.js", include_in_schema=False)
def posture_script() -> FileResponse:
    """The page's script."""
    return static_file(STATIC / "posture.js", "text/javascript; charset=utf-8")


@page.get("/posture/posture.css", include_in_schema=False)
def posture_style() -> FileResponse:
    """The page's own style sheet (beside the catalog's)."""
    return static_file(STATIC / "posture.css", "text/css; charset=utf-8")


def mount(app: FastAPI, sources: PostureSources) -> None:
    """Add the posture API, page and operations metrics to ``app``."""
    app.state.posture = sources
    app.state.metrics.registry.register(OperationsCollector(sources))
    app.include_router(router)
    app.include_router(page)
