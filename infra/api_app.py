"""The served API: the DP dashboards app with the governance catalog mounted in it.

``uvicorn infra.api_app:app_from_settings --factory`` (what ``privmesh api`` and ``up``
run). The catalog reads the app's own ledger and the classes its replica serves; the
OpenMetadata SDK is never imported here (only ``privmesh catalog export|push`` use it).
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI

from catalog.api import mount
from catalog.assemble import assemble
from catalog.graph import Catalog
from catalog.settings import get_catalog_settings
from catalog.sources import system_inputs
from dashboards_api.main import app_from_settings as dashboards_app
from dashboards_api.releases import ReleaseService


def with_catalog(app: FastAPI, ttl_seconds: float | None = None) -> FastAPI:
    """``app`` with the catalog API and page, assembled from its release service's view."""
    service: ReleaseService = app.state.service

    def build() -> Catalog:
        inputs = system_inputs(ledger=service.ledger, classes=service.classes)
        inputs.now = datetime.fromtimestamp(service.clock(), tz=UTC)  # the ledger's period
        return assemble(inputs)

    ttl = get_catalog_settings().cache_seconds if ttl_seconds is None else ttl_seconds
    mount(app, build, ttl)
    return app


def app_from_settings() -> FastAPI:
    """The production app (uvicorn factory)."""
    return with_catalog(dashboards_app())
