"""The served API's composition root: the DP dashboards app built from settings, with the
governance catalog and the privacy posture mounted in it.

``uvicorn infra.api_app:app_from_settings --factory`` (what ``privmesh api`` and ``up``
run). Only here are the runtime, API, stream and broker settings read, the ledger opened,
the contracts loaded and the stores created; ``dashboards_api`` receives the built
objects (``build_service``, ``create_app``) and the facts about the data it sums
(``WindowFacts``), never another package's settings. The catalog reads the app's own
ledger and the classes its replica serves; the OpenMetadata SDK is never imported here
(only ``privmesh catalog export|push`` use it).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI

from catalog.api import mount
from catalog.assemble import assemble
from catalog.graph import Catalog
from catalog.settings import get_catalog_settings
from catalog.sources import system_inputs
from dashboards_api.ledger import open_ledger
from dashboards_api.main import WindowFacts, build_service, check_safe, create_app
from dashboards_api.releases import EventSource, ReleaseService, StoreEvents, WindowSource
from dashboards_api.settings import ApiSettings
from domains.runtime import get_runtime_settings
from streams.settings import KafkaSettings, StreamSettings


def window_facts(streams: StreamSettings, kafka: KafkaSettings) -> WindowFacts:
    """The facts the API needs about the windows it sums, from the settings the stream
    processor writes them with: window length, grace, partition count, and how long an
    event's offline part may take to be written (grace plus two flush periods)."""
    return WindowFacts(
        window_seconds=streams.window_seconds,
        grace_seconds=streams.grace_seconds,
        partitions=kafka.partitions,
        events_settle_seconds=streams.grace_seconds + math.ceil(2 * streams.offline_flush_seconds),
    )


def dashboards_app() -> FastAPI:
    """The DP dashboards app: stores and ledger from settings; the ledger closes with it."""
    from domains.registry import load_contracts
    from feature_repo.settings import get_feature_settings
    from feature_repo.store import DomainFeatureStore

    runtime, api, streams = get_runtime_settings(), ApiSettings(), StreamSettings()
    check_safe(runtime, api)
    contracts = load_contracts()
    stores = {
        d: DomainFeatureStore(contracts[d], runtime.data_dir, get_feature_settings())
        for d in contracts
    }
    sources: dict[str, WindowSource] = dict(stores)
    events: dict[str, EventSource] = {d: StoreEvents(s.events_folder) for d, s in stores.items()}
    ledger = open_ledger(api.ledger_url, runtime.data_dir)
    facts = window_facts(streams, KafkaSettings())
    service = build_service(api, facts, sources, ledger, contracts, events)
    app = create_app(service, api.keys, api)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        ledger.close()

    app.router.lifespan_context = lifespan
    return app


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
    from federation.registry import open_registry
    from governance.posture import PostureSources
    from governance.posture_api import mount as mount_posture
    from governance.settings import get_posture_settings
    from infra.stack import LauncherView
    from streams.settings import get_stream_settings

    data_dir = get_runtime_settings().data_dir.resolve()
    sources = PostureSources(
        data_dir=data_dir,
        contracts=load_contracts(),
        service=app.state.service,
        registry=open_registry(data_dir=data_dir),
        settings=get_posture_settings(),
        initial_key_version=get_stream_settings().key_version,
        launcher=LauncherView(data_dir),
    )
    mount_posture(app, sources)
    return app


def app_from_settings() -> FastAPI:
    """The production app (uvicorn factory)."""
    return with_posture(with_catalog(dashboards_app()))
