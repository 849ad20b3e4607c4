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
        inputs = system_inputs(service.ledger, service.classes, service.policy.current)
        inputs.now = datetime.fromtimestamp(service.clock(), tz=UTC)  # the ledger's period
        return assemble(inputs)

    ttl = get_catalog_settings().cache_seconds if ttl_seconds is None else ttl_seconds
    mount(app, build, ttl)
    return app


def with_posture(app: FastAPI) -> FastAPI:
    """``app`` with the privacy-posture API, page and operations metrics."""
    from domains.registry import load_contracts
    from domains.runtime import RuntimeSettings
    from federation.registry import open_registry
    from infra.posture import PostureSources
    from infra.posture_api import mount as mount_posture
    from infra.settings import PostureSettings
    from streams.settings import get_stream_settings

    runtime = RuntimeSettings()
    data_dir = runtime.data_dir.resolve()
    sources = PostureSources(
        data_dir=data_dir,
        contracts=load_contracts(),
        service=app.state.service,
        registry=open_registry(data_dir=data_dir),
        settings=PostureSettings(),
        initial_key_version=get_stream_settings().key_version,
    )
    mount_posture(app, sources)
    return app


def app_from_settings() -> FastAPI:
    """The production app (uvicorn factory)."""
    return with_posture(with_catalog(dashboards_app()))
