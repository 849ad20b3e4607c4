"""Reading a topic from outside a consumer group (``privmesh tail``, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.errors import BrokerUnavailable
from streams.kafka_clients import aiokafka_config


@dataclass(frozen=True, slots=True)
class Record:
    """One record as read: position, key, value (None for a tombstone) and headers."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> str | None:
        """The first header called ``name``, decoded, or None."""
        return next((v.decode(errors="replace") for k, v in self.headers if k == name), None)


async def read_records(
    bootstrap: str,
    topic: str,
    *,
    from_beginning: bool = True,
    limit: int | None = None,
    idle_timeout: float = 2.0,
    follow: bool = False,
) -> AsyncIterator[Record]:
    """Records of every partition of ``topic``.

    Stops after ``limit`` records, or once nothing arrived for ``idle_timeout`` seconds
    (unless ``follow``). Uses manual assignment: no consumer group, no committed offsets.
    """
    consumer = AIOKafkaConsumer(
        **aiokafka_config(bootstrap=bootstrap),
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        client_id="privmesh-reader",
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        partitions = await _partitions(consumer, topic)
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        seen = 0
        last = time.monotonic()
        while limit is None or seen < limit:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            got = [m for msgs in batches.values() for m in msgs]
            if not got:
                if not follow and time.monotonic() - last > idle_timeout:
                    return
                continue
            last = time.monotonic()
            for m in got:
                yield Record(
                    m.topic,
                    m.partition,
                    m.offset,
                    m.timestamp,
                    m.key,
                    m.value,
                    tuple((k, bytes(v)) for k, v in m.headers),
                )
                seen += 1
                if limit is not None and seen >= limit:
                    return
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    deadline = time.monotonic() + 5
    while True:
        topics = await consumer.topics()  # refreshes the cluster metadata
        found = consumer.partitions_for_topic(topic)
        if found:
            return sorted(found)
        if time.monotonic() > deadline:
            if topic not in topics:
                raise BrokerUnavailable(f"topic {topic!r} does not exist on this broker")
            raise BrokerUnavailable(f"no partition metadata for topic {topic!r}")
        await asyncio.sleep(0.2)


async def assign_from_beginning(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` (waiting until it exists) from its first record.

    For the workers' listeners (erasure requests, consent), which read a whole topic
    outside any consumer group.
    """
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            break
        await consumer.topics()  # refreshes the cluster metadata
        await asyncio.sleep(1.0)
    assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assignment)
    await consumer.seek_to_beginning(*assignment)
    return assignment
