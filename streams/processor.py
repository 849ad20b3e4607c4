"""The Faust processor of one domain: one agent per data product.

Agents are thin: the transform (``streams.transform``) and the window aggregation
(``streams.windows``) are pure and tested without a broker. The agent routes each
event to exactly one of the product topic or the dead-letter topic, and a timer
pushes per-subject features and closed-window aggregates to the domain's Feast
store in micro-batches, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import pandas as pd

from domains.contract import DataProduct, DomainContract
from feature_repo.definitions import SUBJECT_KEY, WINDOW_KEY, sum_feature
from feature_repo.store import DomainFeatureStore
from streams.keyring import DomainTokens, KeyRing, keyring_path
from streams.pseudonymise import TokenSource
from streams.settings import KafkaSettings, StreamSettings
from streams.topics import DETAIL_HEADER, REASON_HEADER, ProductTopics, erasures_topic
from streams.transform import Accepted, ProductTransform, Rejected
from streams.windows import SubjectRow, WindowAggregator, WindowStats

log = logging.getLogger("privmesh.streams")

PROCESSING_ERROR = "processing_error"


@dataclass
class ProductPipeline:
    """Everything one product's agent needs, free of Faust."""

    domain: str
    product: DataProduct
    transform: ProductTransform
    aggregator: WindowAggregator
    topics: ProductTopics
    counters: Counter[str] = field(default_factory=Counter)

    def route(self, raw: bytes) -> Accepted | Rejected:
        """Transform ``raw``; never raises (unexpected errors become a rejection)."""
        try:
            outcome = self.transform.apply(raw)
        except Exception as exc:  # a bug must not stop the stream or lose the event
            log.exception("transform failed for a %s event", self.topics.ingest)
            outcome = Rejected(PROCESSING_ERROR, f"internal error {type(exc).__name__}")
        if isinstance(outcome, Accepted):
            self.counters["accepted"] += 1
            self.aggregator.add(outcome.subject, outcome.event_time, outcome.measures)
        else:
            self.counters[f"rejected.{outcome.reason}"] += 1
            self.counters["rejected"] += 1
        return outcome

    def subject_frame(self, rows: list[SubjectRow]) -> pd.DataFrame:
        """Per-subject feature rows as the push source expects them."""
        now = datetime.now(UTC)
        measures = self.transform.measure_fields
        return pd.DataFrame(
            [
                {
                    SUBJECT_KEY: r.subject,
                    WINDOW_KEY: r.window_start,
                    "events": r.events,
                    **{sum_feature(m): float(r.sums.get(m, 0.0)) for m in measures},
                    "event_timestamp": now,
                }
                for r in rows
            ]
        )

    def window_frame(self, stats: list[WindowStats]) -> pd.DataFrame:
        """Closed-window aggregates as the push source expects them."""
        measures = self.transform.measure_fields
        return pd.DataFrame(
            [
                {
                    WINDOW_KEY: s.window_start,
                    "distinct_subjects": s.distinct_subjects,
                    "events": s.events,
                    **{sum_feature(m): float(s.sums.get(m, 0.0)) for m in measures},
                    "event_timestamp": datetime.fromtimestamp(s.window_end, tz=UTC),
                }
                for s in stats
            ]
        )


def build_pipelines(
    contract: DomainContract, tokeniser: TokenSource, settings: StreamSettings
) -> list[ProductPipeline]:
    """One pipeline per product of ``contract``."""
    pipelines = []
    for product in contract.products:
        transform = ProductTransform(product, tokeniser)
        bounds = {f.name: f.bounds for f in product.fields if f.bounds is not None}
        aggregator = WindowAggregator(
            settings.window_seconds,
            settings.grace_seconds,
            settings.max_events_per_subject,
            bounds,
        )
        pipelines.append(
            ProductPipeline(
                contract.domain,
                product,
                transform,
                aggregator,
                ProductTopics.of(contract.domain, product),
            )
        )
    return pipelines


def faust_broker_url(bootstrap: str) -> list[str]:
    """Faust broker URLs for a ``host:port[,host:port]`` bootstrap string."""
    return [f"kafka://{hostport.strip()}" for hostport in bootstrap.split(",") if hostport.strip()]


def build_app(  # noqa: PLR0915 - split into agents/flusher with the throughput rework
    contract: DomainContract,
    tokeniser: TokenSource,
    store: DomainFeatureStore,
    kafka: KafkaSettings,
    settings: StreamSettings,
    data_dir: Path,
) -> faust.App:
    """The Faust app of ``contract``'s domain."""
    faust_dir = data_dir / "faust" / contract.domain
    faust_dir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"privmesh-{contract.domain}",
        broker=faust_broker_url(kafka.bootstrap),
        store="memory://",
        datadir=str(faust_dir),
        web_enabled=True,
        web_host="127.0.0.1",
        web_port=settings.worker_web_port,
        web_bind="127.0.0.1",
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_linger_ms=5,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        # Tansu holds a JoinGroup for the full rebalance timeout when a group forms;
        # Faust's 60 s default would delay the first event by a minute.
        broker_rebalance_timeout=settings.rebalance_timeout_seconds,
        broker_session_timeout=max(settings.rebalance_timeout_seconds * 2, 6.0),
        broker_heartbeat_interval=1.0,
    )
    pipelines = build_pipelines(contract, tokeniser, settings)
    push_lock = asyncio.Lock()
    started = time.time()
    offline_buffer: dict[str, list[pd.DataFrame]] = {}
    last_offline = time.monotonic()
    ring_file = keyring_path(data_dir)
    ring_mtime = ring_file.stat().st_mtime if ring_file.exists() else 0.0

    for pipeline in pipelines:
        ingest = app.topic(pipeline.topics.ingest, value_serializer="raw", key_serializer="raw")
        product_topic = app.topic(
            pipeline.topics.product, value_serializer="raw", key_serializer="raw"
        )
        dlq = app.topic(pipeline.topics.dlq, value_serializer="raw", key_serializer="raw")

        def make_agent(p: ProductPipeline, out: faust.TopicT, dead: faust.TopicT) -> Any:
            async def process(stream: faust.StreamT[bytes]) -> None:
                async for batch in stream.take(
                    settings.batch_size, within=settings.batch_within_seconds
                ):
                    for raw in batch:
                        outcome = p.route(raw)
                        if isinstance(outcome, Accepted):
                            await out.send(
                                key=outcome.key, value=json.dumps(outcome.event).encode()
                            )
                        else:
                            await dead.send(
                                value=raw,
                                headers=[
                                    (REASON_HEADER, outcome.reason.encode()),
                                    (DETAIL_HEADER, outcome.detail.encode()),
                                ],
                            )

            process.__name__ = f"process_{p.product.name}"
            return process

        app.agent(ingest, name=f"{contract.domain}.{pipeline.product.name}")(
            make_agent(pipeline, product_topic, dlq)
        )

    profiles = {
        p.product.name: app.topic(p.topics.profiles, value_serializer="raw", key_serializer="raw")
        for p in pipelines
    }

    @app.agent(
        app.topic(erasures_topic(contract.domain), value_serializer="raw", key_serializer="raw"),
        name=f"{contract.domain}.erasures",
    )
    async def evict(stream: faust.StreamT[bytes]) -> None:
        """Erasure requests: forget the subjects in memory, then delete their online rows."""
        loop = asyncio.get_running_loop()
        async for raw in stream:
            try:
                tokens = {str(t) for t in json.loads(raw)["tokens"]}
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed erasure request")
                continue
            async with push_lock:
                dropped = sum(p.aggregator.forget(tokens) for p in pipelines)
                await loop.run_in_executor(None, store.erase_subjects, tokens)
            log.info("erasure: evicted %d window tallies", dropped)

    def reload_keyring() -> None:
        nonlocal ring_mtime
        if not isinstance(tokeniser, DomainTokens) or not ring_file.exists():
            return
        mtime = ring_file.stat().st_mtime
        if mtime != ring_mtime:
            ring_mtime = mtime
            tokeniser.ring = KeyRing.load(ring_file, tokeniser.ring.initial_version)
            log.info("key ring reloaded")

    async def flush_features() -> None:
        nonlocal last_offline
        loop = asyncio.get_running_loop()
        reload_keyring()
        async with push_lock:
            for p in pipelines:
                rows = p.aggregator.drain_subject_rows()
                closed = p.aggregator.close_ready(time.time())
                features = store.product_features(p.product)
                if rows:
                    frame = p.subject_frame(rows)
                    await loop.run_in_executor(None, store.push, features.subject_push.name, frame)
                    p.counters["subject_rows_pushed"] += len(rows)
                    offline_buffer.setdefault(features.subject_view.name, []).append(frame)
                    topic = profiles[p.product.name]
                    for record in frame.to_dict(orient="records"):
                        subject = str(record.pop(SUBJECT_KEY))
                        record["event_timestamp"] = record["event_timestamp"].isoformat()
                        await topic.send(key=subject.encode(), value=json.dumps(record).encode())
                if closed:
                    frame = p.window_frame(closed)
                    await loop.run_in_executor(None, store.push, features.window_push.name, frame)
                    p.counters["windows_closed"] += len(closed)
                    p.counters["last_window_start"] = closed[-1].window_start
                    offline_buffer.setdefault(features.window_view.name, []).append(frame)
            if time.monotonic() - last_offline >= settings.offline_flush_seconds:
                last_offline = time.monotonic()
                for view, frames in offline_buffer.items():
                    batch = pd.concat(frames, ignore_index=True)
                    await loop.run_in_executor(None, store.append_offline, view, batch)
                offline_buffer.clear()

    app.timer(interval=settings.feature_flush_seconds)(flush_features)

    @app.page("/privmesh/health")
    async def health(web: Any, request: Any) -> Any:
        body = {
            "domain": contract.domain,
            "uptime_seconds": round(time.time() - started, 1),
            "products": {
                p.product.name: {
                    **dict(p.counters),
                    "late_events": p.aggregator.late_events,
                    "capped_events": p.aggregator.capped_events,
                }
                for p in pipelines
            },
        }
        return web.json(body)

    return app
