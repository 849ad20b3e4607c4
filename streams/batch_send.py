"""Producing the processor's outputs as record batches, acknowledged per batch.

``AIOKafkaProducer.send`` costs about 25 us per record in Python (a future, a partition
lookup and, for keyed records, murmur2 in pure Python). Outputs that already know their
partition are appended to one ``BatchBuilder`` per topic-partition (C code) and sent with
one future per batch; the rest go through ``send``.

Dead letters are built by ``dead_letter``, which bounds their size: a dead letter copies
an untrusted record, and one larger than the producer's ``max_request_size`` would make
the send raise ``MessageSizeTooLargeError``. ``deliver`` never raises for a record the
producer or the broker refuses for good (too large, not serialisable): it returns those.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from streams.kafka_clients import aiokafka_config
from streams.settings import KafkaSettings, StreamSettings
from streams.topics import (
    DETAIL_HEADER,
    ORIGINAL_BYTES_HEADER,
    ORIGINAL_KEY_BYTES_HEADER,
    ORIGINAL_SHA256_HEADER,
    REASON_HEADER,
    SOURCE_HEADER,
    TRUNCATED_HEADER,
)

log = logging.getLogger("privmesh.streams")

Headers = list[tuple[str, bytes]]
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
MIN_MAX_REQUEST_BYTES = 1_048_576  # BatchSender's max_request_size is never below this
# A dead letter's value and key are cut to these sizes: far below the producer's smallest
# max_request_size and a broker's default message.max.bytes (about 1 MB), with room for
# the headers, so a dead letter is always accepted.
DEAD_LETTER_MAX_VALUE_BYTES = 65_536
DEAD_LETTER_MAX_KEY_BYTES = 1_024
MAX_DETAIL_CHARS = 500
# Errors retrying cannot fix: the record is refused, not retried.
REFUSED_FOR_GOOD: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    ValueError,
    TypeError,
)


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce; ``partition`` None lets the key choose it."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (compacted topics)
    headers: Headers | None = None
    partition: int | None = None


def dead_letter(
    topic: str,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    detail: str,
    source: str,
    partition: int | None = None,
    *,
    max_value_bytes: int = DEAD_LETTER_MAX_VALUE_BYTES,
) -> Output:
    """A dead letter of ``value`` with the reason, detail and source headers, bounded.

    A value over ``max_value_bytes`` is cut to its first ``max_value_bytes`` bytes, with
    headers saying so, its original length and its sha256 (hex; an operator matches it
    against the source record). A key over ``DEAD_LETTER_MAX_KEY_BYTES`` is cut likewise.
    """
    headers: Headers = [
        (REASON_HEADER, reason.encode()),
        (DETAIL_HEADER, detail[:MAX_DETAIL_CHARS].encode()),
        (SOURCE_HEADER, source.encode()),
    ]
    body = value or b""
    if len(body) > max_value_bytes:
        headers += [
            (TRUNCATED_HEADER, b"value"),
            (ORIGINAL_BYTES_HEADER, str(len(body)).encode()),
            (ORIGINAL_SHA256_HEADER, hashlib.sha256(body).hexdigest().encode()),
        ]
        body = body[:max_value_bytes]
    if key is not None and len(key) > DEAD_LETTER_MAX_KEY_BYTES:
        headers.append((ORIGINAL_KEY_BYTES_HEADER, str(len(key)).encode()))
        key = key[:DEAD_LETTER_MAX_KEY_BYTES]
    return Output(topic, key, body, headers, partition)


def _failed(error: BaseException) -> asyncio.Future[Any]:
    """An acknowledgement that already failed with ``error``."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


class BatchSender:
    """A tuned producer that sends lists of ``Output`` in batches."""

    def __init__(self, kafka: KafkaSettings, settings: StreamSettings, client_id: str) -> None:
        self._config: dict[str, Any] = {
            **aiokafka_config(kafka),
            "client_id": client_id,
            "acks": 1,
            "linger_ms": settings.producer_linger_ms,
            "max_batch_size": settings.producer_batch_bytes,
            "max_request_size": max(settings.producer_batch_bytes, MIN_MAX_REQUEST_BYTES),
            "retry_backoff_ms": 200,
        }
        self._client: AIOKafkaProducer | None = None
        self.retries = 0
        self.refused = 0  # records refused for good (see ``deliver``)
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

    async def submit(
        self, outputs: list[Output], single: bool = False
    ) -> list[tuple[list[Output], Awaitable[Any]]]:
        """Queue ``outputs``; returns each group of outputs with its acknowledgement.

        ``single``: each record is its own group. Never raises for a record: one the
        producer refuses gets a failed acknowledgement.
        """
        producer = self._producer
        groups: dict[tuple[str, int], list[Output]] = defaultdict(list)
        pending: list[tuple[list[Output], Awaitable[Any]]] = []
        for output in outputs:
            if output.partition is None or single:
                try:
                    ack = await producer.send(
                        output.topic,
                        output.value,
                        key=output.key,
                        headers=output.headers,
                        partition=output.partition,
                    )
                except Exception as exc:  # too large, no metadata yet: in the ack
                    ack = _failed(exc)
                pending.append(([output], ack))
            else:
                groups[(output.topic, output.partition)].append(output)
        for (topic, partition), members in groups.items():
            try:
                pending.extend(await self._send_group(topic, partition, members))
            except Exception as exc:  # the group's records are retried or refused
                pending.append((members, _failed(exc)))
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

    async def deliver(self, outputs: list[Output]) -> list[Output]:
        """Produce ``outputs`` and wait for every acknowledgement, retrying failed groups.

        Returns the outputs refused for good (too large for the producer or the broker,
        not serialisable): logged and counted, never retried or raised. A group refused
        as a whole is split into single records, so only the refused ones are returned.
        """
        pending = outputs
        refused: list[Output] = []
        attempt = 0
        single = False
        while pending:
            groups = await self.submit(pending, single)
            results = await asyncio.gather(*(ack for _, ack in groups), return_exceptions=True)
            failed: list[Output] = []
            for (members, _), result in zip(groups, results, strict=True):
                if not isinstance(result, BaseException):
                    continue
                if isinstance(result, REFUSED_FOR_GOOD) and len(members) == 1:
                    refused.extend(members)
                    self.refused += 1
                    log.error(
                        "a record of %d bytes for %s refused (%s); not retried",
                        len(members[0].value or b""),
                        members[0].topic,
                        type(result).__name__,
                    )
                elif isinstance(result, REFUSED_FOR_GOOD):  # find the refused one(s)
                    failed.extend(members)
                    single = True
                else:
                    failed.extend(members)
            if not failed:
                return refused
            errors = [r for r in results if isinstance(r, BaseException)]
            if all(isinstance(r, REFUSED_FOR_GOOD) for r in errors):
                pending = failed  # split into single records, not a broker error: no wait
                continue
            error = next(r for r in errors if not isinstance(r, REFUSED_FOR_GOOD))
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
        return refused
