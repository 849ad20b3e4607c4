"""The catalog's HTTP API and governance page, mounted in the dashboards API app.

Every data endpoint needs the ``governance`` role (open in development, as the rest of
the API). The catalog is assembled from the app's own ledger and the classes its replica
serves, and reused for ``PRIVMESH_CATALOG_CACHE_SECONDS``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request

from catalog.errors import CatalogError
from catalog.graph import Catalog
from catalog.model import EntityKind
from dashboards_api.deps import require
from dashboards_api.errors import ApiError
from dashboards_api.pages import Page, page_router

STATIC = Path(__file__).resolve().parent / "static"
TagName = Literal["direct_identifier", "quasi_identifier", "sensitive", "non_personal"]
ProtectionName = Literal["keep", "drop", "tokenise", "generalise"]


class CatalogProblem(ApiError):
    """A catalog error as a problem response (its own code and status)."""

    title = "Catalog request refused"

    def __init__(self, error: CatalogError) -> None:
        super().__init__(str(error), **({"entity": error.entity} if error.entity else {}))
        self.code = error.code
        self.status = error.status


class CatalogCache:
    """The assembled catalog, rebuilt when older than ``ttl_seconds``."""

    def __init__(self, factory: Callable[[], Catalog], ttl_seconds: float) -> None:
        self.factory = factory
        self.ttl = ttl_seconds
        self._catalog: Catalog | None = None
        self._built = 0.0
        self._lock = threading.Lock()

    def get(self) -> Catalog:
        """A catalog at most ``ttl_seconds`` old."""
        with self._lock:
            if self._catalog is None or time.monotonic() - self._built > self.ttl:
                self._catalog = self.factory()
                self._built = time.monotonic()
            return self._catalog


async def get_catalog(request: Request) -> Catalog:
    """The app's catalog (assembly errors become problem responses)."""
    cache: CatalogCache = request.app.state.catalog
    try:
        return cache.get()
    except CatalogError as exc:
        raise CatalogProblem(exc) from exc


CatalogDep = Annotated[Catalog, Depends(get_catalog)]
router = APIRouter(
    prefix="/v1/catalog",
    tags=["catalog"],
    dependencies=[require("governance")],
)
page = page_router(
    Page(
        name="catalog",
        folder=STATIC,
        title="governance catalog",
        tagline="Data products, privacy tags and protections, lineage, budget use",
    ),
    "catalog",
)


@router.get("")
def summary(catalog: CatalogDep) -> dict[str, Any]:
    """Counts of entities, fields per privacy tag and protection, classes near budget."""
    return catalog.summary()


@router.get("/entities")
def search(
    catalog: CatalogDep,
    kind: Annotated[EntityKind | None, Query(description="Only entities of this kind.")] = None,
    tag: Annotated[
        TagName | None,
        Query(description="Fields with this tag; products, topics, feature views having one."),
    ] = None,
    protection: Annotated[
        ProtectionName | None, Query(description="Fields protected this way.")
    ] = None,
    q: str | None = Query(None, min_length=1, max_length=100, description="Text to find."),
    domain: str | None = Query(None, pattern=r"^[a-z][a-z0-9_]*$", max_length=32),
    budget_above: float | None = Query(
        None, ge=0, le=1, description="Products and classes above this fraction of today's budget."
    ),
    limit: int = Query(500, ge=1, le=5000),
) -> dict[str, Any]:
    """Search the catalog: every filter given must hold."""
    try:
        found = catalog.search(
            kind=kind, tag=tag, protection=protection, text=q, domain=domain,
            budget_above=budget_above,
        )  # fmt: skip
    except CatalogError as exc:
        raise CatalogProblem(exc) from exc
    return {
        "count": len(found),
        "entities": [_public(e.model_dump(mode="json"), e.kind) for e in found[:limit]],
    }


@router.get("/entities/{entity:path}")
def entity(catalog: CatalogDep, entity: str) -> dict[str, Any]:
    """One entity by id (``field:shop.orders.ip_address``), with its direct lineage."""
    try:
        found = catalog.get(entity)
        graph = catalog.lineage(entity, depth=1)
    except CatalogError as exc:
        raise CatalogProblem(exc) from exc
    return {**_public(found.model_dump(mode="json"), found.kind), "lineage": graph}


@router.get("/lineage")
def lineage(
    catalog: CatalogDep,
    root: str | None = Query(
        None, max_length=300, description="An entity id or column node; all of it if absent."
    ),
    direction: Literal["upstream", "downstream", "both"] = "both",
    depth: int | None = Query(None, ge=1, le=50),
    level: Literal["entity", "column", "all"] = "all",
) -> dict[str, Any]:
    """The lineage graph as nodes and edges (column-level edges carry the transform)."""
    try:
        return catalog.lineage(root, direction, depth, level)
    except CatalogError as exc:
        raise CatalogProblem(exc) from exc


def _public(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"kind": kind, **body}


def mount(app: FastAPI, factory: Callable[[], Catalog], ttl_seconds: float) -> None:
    """Add the catalog API and page to ``app``."""
    app.state.catalog = CatalogCache(factory, ttl_seconds)
    app.include_router(router)
    app.include_router(page)
