"""Batched producing: every output arrives once, on the partition it names or its key's."""

from __future__ import annotations

import asyncio

import pytest

from infra.broker import ensure_topics
from streams.batch_send import DEAD_LETTER_MAX_VALUE_BYTES, BatchSender, Output, dead_letter
from streams.pipeline import partition_for
from streams.reading import read_records
from streams.settings import KafkaSettings, StreamSettings

pytestmark = pytest.mark.integration


def test_outputs_arrive_once_on_their_partitions(broker: str) -> None:
    """Records with a partition land there (spanning several full batches); keyed ones by key."""
    topic = "test.batch-send"
    ensure_topics(broker, [topic], 4, 1)
    # 64 KiB batches and ~1 KiB records: each partition's group needs several batches
    settings = StreamSettings(producer_batch_bytes=65_536)
    outputs = [
        Output(topic, f"k{i}".encode(), b"x" * 1000 + str(i).encode(), None, i % 4)
        for i in range(400)
    ]
    outputs += [
        Output(topic, f"keyed{i}".encode(), f"keyed-{i}".encode(), [("h", b"v")]) for i in range(50)
    ]

    async def produce() -> int:
        sender = BatchSender(KafkaSettings(bootstrap_servers=broker), settings, "test")
        await sender.start()
        try:
            await sender.deliver(outputs)
        finally:
            await sender.stop()
        return sender.retries

    assert asyncio.run(produce()) == 0

    async def read() -> list[tuple[int, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]]:
        return [
            (r.partition, r.key, r.value, r.headers)
            async for r in read_records(broker, topic, idle_timeout=2.0)
        ]

    records = asyncio.run(read())
    assert len(records) == len(outputs)
    by_value = {value: (partition, key, headers) for partition, key, value, headers in records}
    for output in outputs:
        partition, key, headers = by_value[output.value]
        expected = output.partition
        if expected is None:
            expected = partition_for(output.key or b"", 4)
        assert (partition, key) == (expected, output.key)
        assert list(headers) == (output.headers or [])


def test_an_oversize_record_is_refused_and_its_bounded_dead_letter_arrives(broker: str) -> None:
    """A 2 MB record is refused by the real producer (returned, not raised); its dead
    letter, cut to the bound, is accepted by the broker. (A batch of one oversize record
    is not checked by the producer; the embedded broker accepts it, Kafka refuses it.)"""
    topic = "test.batch-send-dlq"
    ensure_topics(broker, [topic], 1, 1)
    huge = b"x" * 2_000_000
    letter = dead_letter(topic, b"k", huge, "too_large", "record is 2 MB", "t/0/0")

    async def produce() -> list[Output]:
        sender = BatchSender(KafkaSettings(bootstrap_servers=broker), StreamSettings(), "test")
        await sender.start()
        try:
            refused = await sender.deliver([Output(topic, b"k", huge), letter])
        finally:
            await sender.stop()
        return refused

    assert [o.value for o in asyncio.run(produce())] == [huge]

    async def read() -> list[bytes | None]:
        return [r.value async for r in read_records(broker, topic, idle_timeout=2.0)]

    assert asyncio.run(read()) == [huge[:DEAD_LETTER_MAX_VALUE_BYTES]]
