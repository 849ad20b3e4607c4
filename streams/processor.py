"""The Faust processor of one domain.

Faust runs the worker: lifecycle and signals, the tuned producer, the health page, and
three long-running tasks:

* ``IngestLoop`` (``streams.ingest_loop``): the batched consumer-group loop over the
  domain's ingest topics, routing every event to exactly one of its product topic or
  dead-letter topic, committing offsets only after the outputs are acknowledged;
* ``FeaturePusher`` (``streams.feature_push``): micro-batches of per-subject features and
  closed per-partition windows to the domain's Feast store;
* ``ErasureListener`` (``streams.erasure_listener``): evicts erased subjects;
* ``ConsentListener`` (``streams.consent_listener``): keeps the consent index every
  event is checked against, and erases a subject's features for a purpose on its
  withdrawal. The ingest loop starts once the index has caught up.

Faust's own per-event consumer is switched off: it caps throughput at a tenth of the
client library on this path (docs/streams-throughput.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.app.base import BootStrategy
from mode import BaseSignalT
from prometheus_client import CONTENT_TYPE_LATEST

from domains.contract import DomainContract
from feature_repo.store import DomainFeatureStore
from streams.batch_send import BatchSender
from streams.consent import ConsentIndex
from streams.consent_listener import ConsentListener
from streams.erasure_listener import ErasureListener
from streams.feature_push import FeaturePusher
from streams.health import (
    ConsentHealth,
    ErasureHealth,
    HealthReport,
    KeyState,
    KeyVersion,
    ProductHealth,
)
from streams.ingest_loop import IngestLoop
from streams.kafka_clients import faust_config
from streams.keyring import DomainTokens, KeyRingWatcher, keyring_path
from streams.metrics import metrics_registry, render
from streams.pipeline import REVOKED, ProductPipeline, build_pipelines
from streams.pseudonymise import TokenSource
from streams.restore import OfflineDayTallies
from streams.settings import KafkaSettings, StreamSettings

log = logging.getLogger("privmesh.streams")


class _NoFaustConsumer(BootStrategy):
    """Start Faust's web server and tasks; consuming and producing are batched (ours)."""

    enable_kafka_consumer = False
    enable_kafka_producer = False


class ProcessorApp(faust.App):
    """A Faust app whose consuming is done by ``IngestLoop``."""

    BootStrategy = _NoFaustConsumer


@dataclass
class Processor:
    """The parts of one domain's processor (exposed for the health page and tests)."""

    app: faust.App
    pipelines: list[ProductPipeline]
    ingest: IngestLoop
    pusher: FeaturePusher
    erasures: ErasureListener
    consent: ConsentListener
    tokens: TokenSource

    def health(self) -> HealthReport:
        """A snapshot of the processor's counters now (the health page's and /metrics')."""
        ingest, erasures, consent = self.ingest, self.erasures, self.consent
        return HealthReport(
            domain=ingest.domain,
            assigned_partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in ingest.assigned),
            ingest=dict(ingest.counters),
            features=dict(self.pusher.counters),
            erasures=ErasureHealth(erasures.applied, erasures.malformed, erasures.rereads),
            consent=ConsentHealth(
                dict(consent.counters), consent.ready.is_set(), consent.index.counts()
            ),
            products=[_product_health(p) for p in self.pipelines],
            key_versions=_key_versions(ingest.domain, self.tokens),
        )


def _product_health(pipeline: ProductPipeline) -> ProductHealth:
    late, capped, truncated = (
        pipeline.late_events,
        pipeline.capped_events,
        pipeline.truncated_events,
    )
    revoked = pipeline.counters  # what partitions given up had tallied (monotonic)
    return ProductHealth(
        name=pipeline.product.name,
        counters=dict(pipeline.counters),
        late_events=late,
        capped_events=capped,
        truncated_events=truncated,
        truncated_sums=pipeline.truncated_sums,
        late_events_since_start=late + revoked[REVOKED + "late_events"],
        capped_events_since_start=capped + revoked[REVOKED + "capped_events"],
        truncated_events_since_start=truncated + revoked[REVOKED + "truncated_events"],
        truncated_sums_since_start=pipeline.truncated_sums_since_start(),
    )


def _key_versions(domain: str, tokens: TokenSource) -> list[KeyVersion]:
    """The domain's key versions and their states now (none without a key ring)."""
    if not isinstance(tokens, DomainTokens):
        return []
    now = time.time()
    active = tokens.ring.version_at(domain, now)
    out = []
    for epoch in tokens.ring.epochs(domain):
        state: KeyState = "active"
        if epoch.version != active:
            state = "scheduled" if epoch.effective_from > now else "retired"
        out.append(KeyVersion(epoch.version, state))
    return out


def make_app(
    domain: str, kafka: KafkaSettings, settings: StreamSettings, data_dir: Path
) -> faust.App:
    """The Faust app: worker lifecycle, tasks and the health page (``BatchSender`` produces)."""
    faust_dir = data_dir / "faust" / domain
    faust_dir.parent.mkdir(parents=True, exist_ok=True)
    return ProcessorApp(
        f"privmesh-{domain}",
        **faust_config(kafka),
        store="memory://",
        datadir=str(faust_dir),
        web_enabled=True,
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_bind=settings.worker_web_bind,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
    )


def build_processor(
    contract: DomainContract,
    tokeniser: TokenSource,
    store: DomainFeatureStore,
    kafka: KafkaSettings,
    settings: StreamSettings,
    data_dir: Path,
) -> Processor:
    """Wire ``contract``'s domain processor: pipelines, tasks and the health page."""
    app = make_app(contract.domain, kafka, settings, data_dir)
    domain_tokens = tokeniser if isinstance(tokeniser, DomainTokens) else None
    index = ConsentIndex(contract, domain_tokens.consent_key() if domain_tokens else None)
    restore = OfflineDayTallies(store.events_folder, settings.window_seconds)
    pipelines = build_pipelines(contract, tokeniser, settings, index, restore)

    sender = BatchSender(kafka, settings, f"privmesh-{contract.domain}-processor")
    ingest = IngestLoop(contract.domain, pipelines, kafka, settings, sender)
    pusher = FeaturePusher(
        pipelines,
        store,
        settings,
        sender,
        ingest.aligned,
        KeyRingWatcher(tokeniser, keyring_path(data_dir)),
    )
    ingest.on_revoked_rows = pusher.stash
    erasures = ErasureListener(contract.domain, kafka, pusher.evict, sender)
    consent = ConsentListener(contract, kafka, index, domain_tokens, sender, pusher.evict, data_dir)
    ingest.consent_ready = consent.ready
    processor = Processor(app, pipelines, ingest, pusher, erasures, consent, tokeniser)

    app.task(ingest.run)
    app.task(pusher.run)
    app.task(pusher.run_offline)
    app.task(erasures.run)
    app.task(consent.run)

    @app.on_before_shutdown.connect
    async def final_flush(_app: Any, /, *_: Any, signal: BaseSignalT[Any], **__: Any) -> None:
        await pusher.flush()
        await pusher.write_offline()
        await sender.stop()

    started = time.time()

    registry = metrics_registry(processor, started)

    @app.page("/privmesh/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json(health_report(processor, started))

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses parameters in ``content_type``: the full header goes as a header
        return web.bytes(render(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return processor


def health_report(processor: Processor, started: float) -> dict[str, object]:
    """What the worker's health page shows: counters only, never a token or a value."""
    return processor.health().page(uptime_seconds=round(time.time() - started, 1))
