"""The domain processor's hot path: a batched consumer-group loop over the ingest topics.

Faust's own consumer moves one event at a time through several asyncio tasks, which caps
it at a tenth of what the client library does here (docs/streams-throughput.md). This loop
keeps Faust for the worker's lifecycle, tasks and web page, consumes with aiokafka
directly and produces through ``BatchSender``:

1. fetch up to ``batch_size`` records across the assigned partitions;
2. route each record to exactly one of the product topic or the dead-letter topic;
3. wait until every output record is acknowledged (retrying failed ones);
4. commit the input offsets.

At-least-once: a crash or a rebalance between 3 and 4 re-delivers the batch, never loses
it. A revoked partition's batch in flight is delivered and committed before the partition
is handed over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from streams.batch_send import BatchSender, Output, dead_letter
from streams.kafka_clients import aiokafka_config
from streams.pipeline import PROCESSING_ERROR, ProductPipeline
from streams.settings import KafkaSettings, StreamSettings
from streams.transform import Accepted, Rejected
from streams.windows import SubjectRow

log = logging.getLogger("privmesh.streams")


class IngestLoop:
    """Consume a domain's ingest topics in batches; route, deliver, then commit."""

    def __init__(
        self,
        domain: str,
        pipelines: list[ProductPipeline],
        kafka: KafkaSettings,
        settings: StreamSettings,
        sender: BatchSender,
    ) -> None:
        self.domain = domain
        self.group_id = f"privmesh-{domain}-processor"
        self.pipelines = {p.topics.ingest: p for p in pipelines}
        self.kafka = kafka
        self.settings = settings
        self.sender = sender
        # Gets a revoked partition's pending subject rows (the feature pusher's stash).
        self.on_revoked_rows: Callable[[ProductPipeline, list[SubjectRow]], None] | None = None
        # Set by the consent listener once it has read every consent record written
        # before the worker started: until then an event could pass a withdrawn subject.
        self.consent_ready: asyncio.Event | None = None
        self._batch_lock = asyncio.Lock()
        # per ingest topic, from the metadata at the last assignment: its partition count,
        # and whether its product, DLQ and profiles topics have as many partitions
        self._partitions: dict[str, int] = {}
        self._aligned: dict[str, bool] = {}
        self.counters: Counter[str] = Counter()
        self.assigned: set[TopicPartition] = set()

    def consumer(self) -> AIOKafkaConsumer:
        """The aiokafka consumer, tuned for batches on a Tansu or Kafka broker."""
        session_ms = int(self.settings.session_timeout_seconds * 1000)
        return AIOKafkaConsumer(
            **aiokafka_config(self.kafka),
            group_id=self.group_id,
            client_id=f"{self.group_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.batch_size,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # Tansu answers a fetch with no data only when fetch_max_wait_ms runs out, not when
            # data arrives: the default 500 ms wait became the event-to-feature latency.
            fetch_max_wait_ms=int(self.settings.batch_within_seconds * 1000),
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(session_ms // 3, 1000),
            rebalance_timeout_ms=int(self.settings.rebalance_timeout_seconds * 1000),
            retry_backoff_ms=200,
        )

    async def run(self) -> None:
        """Consume until cancelled (once the consent index has caught up, when one is set)."""
        if self.consent_ready is not None:
            await self.consent_ready.wait()
        await self.sender.start()
        consumer = self.consumer()
        consumer.subscribe(list(self.pipelines), listener=_Rebalance(self, consumer))
        await consumer.start()
        log.info("%s processor consuming %s", self.domain, ", ".join(sorted(self.pipelines)))
        try:
            while True:
                batches = await consumer.getmany(
                    timeout_ms=int(self.settings.batch_within_seconds * 1000),
                    max_records=self.settings.batch_size,
                )
                if batches:
                    async with self._batch_lock:
                        await self._process(consumer, batches)
                await self._note_caught_up(consumer, batches)
        finally:
            await consumer.stop()

    async def _note_caught_up(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        """Tell each product whose partition this poll found at its log end (position at the
        high watermark of the last fetch, nothing returned): nothing was queued when that
        fetch was answered, so windows may close by then as complete (``streams.windows``)."""
        for tp in consumer.assignment():
            pipeline = self.pipelines.get(tp.topic)
            highwater = consumer.highwater(tp)
            fetched_ms = consumer.last_poll_timestamp(tp)
            if pipeline is None or tp in batches or highwater is None or not fetched_ms:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), timeout=0.05)
            except (TimeoutError, KafkaError):
                continue  # position unknown (seeking, moving): not caught up
            if position >= highwater:
                pipeline.caught_up(tp.partition, fetched_ms / 1000)

    async def _process(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        began = time.perf_counter()
        outputs: list[Output] = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        consumed = 0
        for tp, records in batches.items():
            pipeline = self.pipelines[tp.topic]
            partitions = self._partitions.get(tp.topic, self.kafka.partitions)
            # Outputs go to the ingest record's partition number: a subject's events stay
            # together and in order (the ingest partition is a function of the subject),
            # and the producer skips hashing each key (murmur2 in Python, ~10 us a record).
            out_partition = tp.partition if self.aligned(pipeline) else None
            now = time.time()
            for record in records:
                output = self._route(pipeline, record, tp.partition, partitions, out_partition, now)
                if output is not None:
                    outputs.append(output)
            consumed += len(records)
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "")
        await self._deliver(outputs)
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The partitions moved or the broker is away: the next owner re-reads the
            # batch (at-least-once); nothing is lost.
            self.counters["commit_failures"] += 1
            log.warning(
                "%s: offset commit failed (%s); the batch may be re-delivered", self.domain, exc
            )
        self.counters["consumed"] += consumed
        self.counters["batches"] += 1
        self.counters["last_batch_ms"] = round((time.perf_counter() - began) * 1000)

    async def _deliver(self, outputs: list[Output]) -> None:
        """Deliver ``outputs``; never raises for a record the producer refuses for good.

        A refused product record becomes a (bounded) dead letter of its product; a refused
        dead letter is counted and logged (``dead_letter`` bounds them, so it is a bug).
        """
        refused = await self.sender.deliver(outputs)
        dlqs = {p.topics.product: p.topics.dlq for p in self.pipelines.values()}
        letters = [
            dead_letter(
                dlqs[o.topic],
                o.key,
                o.value,
                PROCESSING_ERROR,
                "output refused by the producer (too large)",
                f"product/{o.topic}",
                o.partition,
            )
            for o in refused or ()
            if o.topic in dlqs
        ]
        lost = len(refused or ()) - len(letters)
        if letters:
            lost += len(await self.sender.deliver(letters) or ())
        if lost:
            self.counters["undeliverable"] += lost
            log.error("%s: %d dead letter(s) refused by the producer", self.domain, lost)

    def _route(
        self,
        pipeline: ProductPipeline,
        record: ConsumerRecord,
        partition: int,
        partitions: int,
        out_partition: int | None,
        now: float,
    ) -> Output | None:
        """Exactly one output for ``record`` (None: dropped for consent); never raises."""
        raw = record.value if isinstance(record.value, bytes) else b""
        key = record.key if isinstance(record.key, bytes) else None
        outcome = pipeline.route(raw, partition, partitions, key, now)
        if outcome is None:  # no consent for the product's purpose: counted, not kept
            return None
        if isinstance(outcome, Accepted):
            try:
                value = json.dumps(outcome.event, separators=(",", ":")).encode()
                return Output(pipeline.topics.product, outcome.key, value, None, out_partition)
            except Exception as exc:  # the record is dead-lettered, not lost
                self.counters["route_failures"] += 1
                outcome = Rejected(PROCESSING_ERROR, f"internal error {type(exc).__name__}")
        source = f"{record.topic}/{record.partition}/{record.offset}"
        return dead_letter(
            pipeline.topics.dlq, key, raw, outcome.reason, outcome.detail, source, out_partition
        )

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batch in flight, then give up the revoked partitions' state."""
        async with self._batch_lock:
            for tp in revoked:
                pipeline = self.pipelines.get(tp.topic)
                if pipeline is not None:
                    rows = pipeline.revoke(tp.partition)
                    if self.on_revoked_rows is not None:
                        self.on_revoked_rows(pipeline, rows)
            self.assigned -= revoked

    def aligned(self, pipeline: ProductPipeline) -> bool:
        """True when the product's output topics have as many partitions as its ingest topic."""
        return self._aligned.get(pipeline.topics.ingest, False)

    async def on_assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Own the assigned partitions: their windows are released from now on."""
        await consumer.topics()  # metadata of every topic, outputs included
        self._partitions.clear()  # partition counts may have changed (topic re-created)
        for ingest, pipeline in self.pipelines.items():
            counts = {
                len(consumer.partitions_for_topic(t) or ())
                for t in (ingest, *pipeline.topics.all())
            }
            self._aligned[ingest] = len(counts) == 1 and 0 not in counts
            ingest_count = len(consumer.partitions_for_topic(ingest) or ())
            if ingest_count:
                self._partitions[ingest] = ingest_count
            if ingest_count and ingest_count != self.kafka.partitions:
                log.warning(
                    "%s has %d partitions but PRIVMESH_KAFKA_PARTITIONS is %d: the DP API "
                    "sums window rows over the setting's partitions",
                    ingest,
                    ingest_count,
                    self.kafka.partitions,
                )
        now = time.time()
        for topic in {tp.topic for tp in assigned if tp.topic in self.pipelines}:
            await self.pipelines[topic].preload_day_tallies(now)  # the day so far, in a thread
        for tp in assigned:
            owner = self.pipelines.get(tp.topic)
            if owner is not None:
                owner.assign(tp.partition, now)
        self.assigned = set(assigned)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: IngestLoop, consumer: AIOKafkaConsumer) -> None:
        self._loop = loop
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._loop.on_assigned(self._consumer, set(assigned))
