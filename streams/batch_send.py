"""Producing the processor's outputs as record batches, acknowledged per batch.

``AIOKafkaProducer.send`` costs about 25 us per record in Python (a future, a partition
lookup and, for keyed records, murmur2 in pure Python). Outputs that already know their
partition are appended to one ``BatchBuilder`` per topic-partition (C code) and sent with
one future per batch; the rest go through ``send``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.settings import KafkaSettings, StreamSettings

log = logging.getLogger("privmesh.streams")

Headers = list[tuple[str, bytes]]
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce; ``partition`` None lets the key choose it."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (compacted topics)
    headers: Headers | None = None
    partition: int | None = None


class BatchSender:
    """A tuned producer that sends lists of ``Output`` in batches."""

    def __init__(self, kafka: KafkaSettings, settings: StreamSettings, client_id: str) -> None:
        self._config: dict[str, Any] = {
            "bootstrap_servers": kafka.bootstrap,
            "client_id": client_id,
            "acks": 1,
            "linger_ms": settings.producer_linger_ms,
            "max_batch_size": settings.producer_batch_bytes,
            "max_request_size": max(settings.producer_batch_bytes, 1_048_576),
            "retry_backoff_ms": 200,
        }
        self._client: AIOKafkaProducer | None = None
        self.retries = 0
        self._started = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Connect once (idempotent; retries until the broker answers)."""
        async with self._starting:
            while not self._started:
                if self._client is None:  # aiokafka needs the running loop to build it
                    self._client = AIOKafkaProducer(**self._config)
                try:
                    await self._client.start()
                    self._started = True
                except Exception as exc:
                    log.warning("producer cannot reach Kafka yet (%s); retrying", exc)
                    await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        if self._client is not None and self._started:
            await self._client.stop()
            self._started = False

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._client is None or not self._started:
            raise RuntimeError("BatchSender.start() must be awaited before sending")
        return self._client

    async def submit(self, outputs: list[Output]) -> list[tuple[list[Output], Awaitable[Any]]]:
        """Queue ``outputs``; returns each group of outputs with its acknowledgement."""
        groups: dict[tuple[str, int], list[Output]] = defaultdict(list)
        pending: list[tuple[list[Output], Awaitable[Any]]] = []
        for output in outputs:
            if output.partition is None:
                ack = await self._producer.send(
                    output.topic, output.value, key=output.key, headers=output.headers
                )
                pending.append(([output], ack))
            else:
                groups[(output.topic, output.partition)].append(output)
        for (topic, partition), members in groups.items():
            pending.extend(await self._send_group(topic, partition, members))
        return pending

    async def _send_group(
        self, topic: str, partition: int, members: list[Output]
    ) -> list[tuple[list[Output], Awaitable[Any]]]:
        sent: list[tuple[list[Output], Awaitable[Any]]] = []
        batch = self._producer.create_batch()
        in_batch: list[Output] = []
        for output in members:
            headers = output.headers or []
            if batch.append(key=output.key, value=output.value, timestamp=None, headers=headers):
                in_batch.append(output)
                continue
            # full: send it, then start the next batch with this record
            ack = await self._producer.send_batch(batch, topic, partition=partition)
            sent.append((in_batch, ack))
            batch, in_batch = self._producer.create_batch(), [output]
            if (
                batch.append(key=output.key, value=output.value, timestamp=None, headers=headers)
                is None
            ):
                raise ValueError(f"a record for {topic} is larger than the producer batch size")
        if in_batch:
            ack = await self._producer.send_batch(batch, topic, partition=partition)
            sent.append((in_batch, ack))
        return sent

    async def deliver(self, outputs: list[Output]) -> None:
        """Produce ``outputs`` and wait for every acknowledgement, retrying failed groups."""
        pending = outputs
        attempt = 0
        while pending:
            groups = await self.submit(pending)
            results = await asyncio.gather(*(ack for _, ack in groups), return_exceptions=True)
            failed = [
                output
                for (members, _), result in zip(groups, results, strict=True)
                if isinstance(result, BaseException)
                for output in members
            ]
            if not failed:
                return
            error = next(r for r in results if isinstance(r, BaseException))
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            self.retries += 1
            log.warning(
                "%d of %d records not acknowledged (%s: %s); retrying in %.1f s",
                len(failed),
                len(pending),
                type(error).__name__,
                error,
                delay,
            )
            await asyncio.sleep(delay)
            pending, attempt = failed, attempt + 1
