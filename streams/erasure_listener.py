"""Every worker of a domain reads every erasure request and evicts the named subjects.

Not a consumer group: each worker holds the windows of its own partitions, so each must
see each request. A worker reads ``<domain>.erasures`` and applies the requests sent
after it started (older ones were applied by the workers running then, and the stores'
rows were deleted by ``privmesh erase`` itself).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from streams.erasure import MalformedErasureRequest, parse_erasure_request
from streams.reading import assign_from_beginning
from streams.settings import KafkaSettings
from streams.topics import erasures_topic

log = logging.getLogger("privmesh.streams")

START_MARGIN_MS = 5_000  # requests this much older than the worker's start are still applied
CHECK_SECONDS = 5.0  # how often the topic is read again from the beginning


class ErasureListener:
    """Calls ``evict(tokens)`` for each erasure request of ``domain``."""

    def __init__(
        self,
        domain: str,
        kafka: KafkaSettings,
        evict: Callable[[set[str]], Awaitable[object]],
    ) -> None:
        self.domain = domain
        self.topic = erasures_topic(domain)
        self.kafka = kafka
        self._evict = evict
        self.started_ms = int(time.time() * 1000)
        self.applied = 0
        self.malformed = 0
        self.rereads = 0
        self._seen: set[bytes] = set()  # digests of requests applied (re-reads are no-ops)

    async def run(self) -> None:
        """Listen until cancelled."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap,
            group_id=None,
            client_id=f"privmesh-{self.domain}-erasures",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            retry_backoff_ms=200,
        )
        await consumer.start()
        try:
            # From the beginning, filtered by time: an end offset resolved after the start
            # could skip a request sent meanwhile (and Tansu's end offsets run short).
            await assign_from_beginning(consumer, self.topic)
            checked = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        await self._apply(record.value, record.timestamp)
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

    async def _apply(self, raw: bytes | None, timestamp_ms: int) -> None:
        if timestamp_ms < self.started_ms - START_MARGIN_MS:
            return
        digest = hashlib.sha256(raw or b"").digest()
        if digest in self._seen:
            return
        try:
            tokens = parse_erasure_request(raw)
        except MalformedErasureRequest as exc:
            self.malformed += 1
            log.warning("%s: ignored a malformed erasure request: %s", self.domain, exc)
            return
        await self._evict(tokens)
        self._seen.add(digest)
        self.applied += 1
