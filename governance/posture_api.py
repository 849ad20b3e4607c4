"""``/v1/posture`` (governance role) and the privacy-posture page ``/posture``.

The page is the shared shell (``dashboards_api.pages``) around ``static/posture.html``,
with the catalog's style sheet under its own; ``infra.api_app`` mounts both on the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request

from dashboards_api.deps import require
from dashboards_api.pages import Page, page_router
from governance.posture import OperationsCollector, PostureSources, assemble_posture

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter(
    prefix="/v1/posture",
    tags=["governance"],
    dependencies=[require("governance")],
)
page = page_router(
    Page(
        name="posture",
        folder=STATIC,
        title="privacy posture",
        tagline=(
            "Consent, pseudonymisation keys, budgets, erasures, retention, models"
            ' · <a href="/catalog">catalog</a>'
        ),
        styles=("/catalog/catalog.css",),  # the catalog's look, then the page's own
    ),
    "governance",
)


@router.get("")
async def posture(request: Request) -> dict[str, Any]:
    """Streams, consent, keys, budgets, erasures, DSRs, retention, models and findings."""
    sources: PostureSources = request.app.state.posture
    return await assemble_posture(sources)


def mount(app: FastAPI, sources: PostureSources) -> None:
    """Add the posture API, page and operations metrics to ``app``."""
    app.state.posture = sources
    app.state.metrics.registry.register(OperationsCollector(sources))
    app.include_router(router)
    app.include_router(page)
