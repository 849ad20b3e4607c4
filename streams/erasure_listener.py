"""Every worker of a domain reads every erasure request and evicts the named subjects.

Not a consumer group: each worker holds the windows of its own partitions, so each must
see each request. A worker reads ``<domain>.erasures`` and applies the requests sent
after it started (older ones were applied by the workers running then, and the stores'
rows were deleted by ``privmesh erase`` itself).

Each request is untrusted: a malformed one, or one whose eviction fails, goes to
``<domain>.erasures.dlq`` with a reason header (``processing_error`` for a failure) and
the loop goes on; nothing a request holds is logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from streams.batch_send import BatchSender, dead_letter
from streams.erasure import MalformedErasureRequest, parse_erasure_request
from streams.kafka_clients import aiokafka_config
from streams.reading import assign_from_beginning
from streams.settings import KafkaSettings
from streams.topics import erasures_dlq_topic, erasures_topic

log = logging.getLogger("privmesh.streams")

START_MARGIN_MS = 5_000  # requests this much older than the worker's start are still applied
CHECK_SECONDS = 5.0  # how often the topic is read again from the beginning
PROCESSING_ERROR = "processing_error"


class ErasureListener:
    """Calls ``evict(tokens)`` for each erasure request of ``domain``."""

    def __init__(
        self,
        domain: str,
        kafka: KafkaSettings,
        evict: Callable[[set[str]], Awaitable[object]],
        sender: BatchSender | None = None,
    ) -> None:
        self.domain = domain
        self._sender = sender
        self.topic = erasures_topic(domain)
        self.kafka = kafka
        self._evict = evict
        self.started_ms = int(time.time() * 1000)
        self.applied = 0
        self.malformed = 0
        self.failed = 0
        self.dead_lettered = 0
        self.dead_letter_failures = 0
        self.rereads = 0
        self._seen: set[bytes] = set()  # digests of requests applied (re-reads are no-ops)

    async def run(self) -> None:
        """Listen until cancelled."""
        consumer = AIOKafkaConsumer(
            **aiokafka_config(self.kafka),
            group_id=None,
            client_id=f"privmesh-{self.domain}-erasures",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            retry_backoff_ms=200,
        )
        await consumer.start()
        if self._sender is not None:
            await self._sender.start()
        try:
            # From the beginning, filtered by time: an end offset resolved after the start
            # could skip a request sent meanwhile (and Tansu's end offsets run short).
            await assign_from_beginning(consumer, self.topic)
            checked = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        source = f"{record.topic}/{record.partition}/{record.offset}"
                        await self._apply(record.value, record.timestamp, record.key, source)
                if time.monotonic() - checked >= CHECK_SECONDS:
                    checked = time.monotonic()
                    await self._reread(consumer)
        finally:
            await consumer.stop()

    async def _reread(self, consumer: AIOKafkaConsumer) -> None:
        """Read the topic again from the beginning; applied requests are skipped.

        A broker that lost its log (the embedded in-memory Tansu after a restart) answers
        fetches beyond the new end with nothing rather than an out-of-range error, and its
        end offsets cannot tell a restart apart (they run short of the truth), so requests
        written after a restart at offsets below our positions would never be read. The
        topic is small (one record per erasure), so re-reading it is cheap.
        """
        assignment = list(consumer.assignment())
        if assignment:
            await consumer.seek_to_beginning(*assignment)
            self.rereads += 1

    async def _apply(
        self,
        raw: bytes | None,
        timestamp_ms: int,
        key: bytes | None = None,
        source: str = "",
    ) -> None:
        """Apply one request; a malformed or failing one is dead-lettered, never raised."""
        if timestamp_ms < self.started_ms - START_MARGIN_MS:
            return
        digest = hashlib.sha256(raw or b"").digest()
        if digest in self._seen:
            return
        try:
            tokens = parse_erasure_request(raw)
        except MalformedErasureRequest as exc:
            self._seen.add(digest)
            self.malformed += 1
            log.warning("%s: malformed erasure request (%s): %s", self.domain, exc.reason, exc)
            await self._dead_letter(raw, key, exc.reason, exc.detail, source)
            return
        try:
            await self._evict(tokens)
        except Exception as exc:
            self._seen.add(digest)
            self.failed += 1
            log.error("%s: erasure request not applied (%s)", self.domain, type(exc).__name__)
            detail = f"internal error {type(exc).__name__}"
            await self._dead_letter(raw, key, PROCESSING_ERROR, detail, source)
            return
        self._seen.add(digest)
        self.applied += 1

    async def _dead_letter(
        self, raw: bytes | None, key: bytes | None, reason: str, detail: str, source: str
    ) -> None:
        """Send the request to the erasures DLQ (bounded in size); a failure is logged."""
        if self._sender is None:
            return
        letter = dead_letter(erasures_dlq_topic(self.domain), key, raw, reason, detail, source)
        try:
            refused = await self._sender.deliver([letter])
        except Exception as exc:  # the loop goes on: the request is counted as lost
            refused = [letter]
            log.error("%s: erasure dead letter not sent (%s)", self.domain, type(exc).__name__)
        if refused:
            self.dead_letter_failures += 1
            return
        self.dead_lettered += 1
