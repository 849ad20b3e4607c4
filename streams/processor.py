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
from streams.ingest_loop import IngestLoop
from streams.kafka_clients import faust_config
from streams.keyring import DomainTokens, KeyRingWatcher, keyring_path
from streams.metrics import metrics_registry, render
from streams.pipeline import ProductPipeline, build_pipelines
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


def health_report(processor: Processor, started: float) -> dict[str, Any]:
    """What the worker's health page shows: counters only, never a token or a value."""
    ingest = processor.ingest
    return {
        "domain": ingest.domain,
        "uptime_seconds": round(time.time() - started, 1),
        "assigned_partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in ingest.assigned),
        "ingest": dict(ingest.counters),
        "features": dict(processor.pusher.counters),
        "erasures": {
            "applied": processor.erasures.applied,
            "malformed": processor.erasures.malformed,
            "rereads": processor.erasures.rereads,
        },
        "consent": processor.consent.report(),
        "products": {
            p.product.name: {
                **dict(p.counters),
                "late_events": p.late_events,
                "capped_events": p.capped_events,
                "truncated_events": p.truncated_events,
                "truncated_sums": p.truncated_sums,
            }
            for p in processor.pipelines
        },
    }
