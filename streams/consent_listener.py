"""Every worker of a domain reads the whole consent topic into its consent index.

Not a consumer group: a worker checks the consent of every event it routes, so each
worker needs every subject's decisions. At start the worker writes a marker (a
tombstone under a key of its own) to each partition of ``<domain>.consent`` and reads
from the beginning until it has seen all its markers: everything written before the
start is then in the index, and only then does ``ready`` let the ingest loop consume
(a withdrawn subject's event cannot slip through a cold start). The topic is read again
from the beginning every ``REREAD_SECONDS``: a broker that lost its log (the embedded
in-memory Tansu after a restart) gives no other sign; applying a record twice is a
no-op.

Side effects are done once per decision, remembered across restarts:

* a withdrawal (a change to ``withdrawn``) erases the subject's features for the
  purpose's products (windows in memory, online rows, offline history, profile
  tombstones) and appends an erasure record with a deterministic id to
  ``erasures/<domain>.jsonl``; a restarted worker skips the ids recorded there;
* a malformed record goes to ``<domain>.consent.dlq`` with a reason header; the records
  dead-lettered are listed (by digest) in ``consent/<domain>-dead-lettered.jsonl``.

Each record is untrusted: whatever fails while one is applied (a bug included) dead-letters
that record (``processing_error``) and the loop goes on; an erasure whose store write
fails is retried with the next batch. Nothing a record holds is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from domains.contract import DataProduct, DomainContract
from feature_repo.store import ErasedRows
from streams.batch_send import BatchSender, Output, dead_letter
from streams.consent import Change, ConsentIndex, ConsentRecord, MalformedConsent, parse_consent
from streams.erasure import ErasureRecord, append_record, read_erasure_log, subject_tokens
from streams.kafka_clients import aiokafka_config
from streams.keyring import DomainTokens
from streams.reading import assign_from_beginning
from streams.records import append_record as append_jsonl
from streams.records import read_records as read_jsonl
from streams.settings import KafkaSettings
from streams.topics import ProductTopics, consent_dlq_topic, consent_topic

log = logging.getLogger("privmesh.streams")

MARKER_PREFIX = b"privmesh-sync/"
# A worker's catch-up marker: a tombstone keyed MARKER_PREFIX + a uuid4's 32 hex digits. A
# record that merely starts like one is a consent record like any other (dead-lettered).
MARKER = re.compile(re.escape(MARKER_PREFIX) + rb"[0-9a-f]{32}")
PROCESSING_ERROR = "processing_error"
REREAD_SECONDS = 30.0
WITHDRAWAL_BY = "consent-withdrawal"

Evict = Callable[[set[str], Collection[str] | None], Awaitable[ErasedRows]]


class ConsentListener:
    """Keeps ``index`` up to date with ``<domain>.consent``; erases on withdrawal."""

    def __init__(
        self,
        contract: DomainContract,
        kafka: KafkaSettings,
        index: ConsentIndex,
        tokens: DomainTokens | None,
        sender: BatchSender,
        evict: Evict,
        data_dir: Path,
    ) -> None:
        self.contract = contract
        self.domain = contract.domain
        self.topic = consent_topic(self.domain)
        self.kafka = kafka
        self.index = index
        self._tokens = tokens
        self._sender = sender
        self._evict = evict
        self.ready = asyncio.Event()
        self.counters: Counter[str] = Counter()
        self._erasure_log = data_dir / "erasures" / f"{self.domain}.jsonl"
        self._dlq_log = data_dir / "consent" / f"{self.domain}-dead-lettered.jsonl"
        self._erased = {r.erasure_id for r in read_erasure_log(self._erasure_log)}
        self._dead_lettered = {str(r["digest"]) for r in read_jsonl(self._dlq_log)}
        self._marker = MARKER_PREFIX + uuid.uuid4().hex.encode()
        self._seen: set[int] = set()  # (partition, offset, timestamp) of records applied
        self._retry: list[ConsentRecord] = []  # withdrawals whose erasure failed

    async def run(self) -> None:
        """Catch up, then listen until cancelled."""
        consumer = AIOKafkaConsumer(
            **aiokafka_config(self.kafka),
            group_id=None,
            client_id=f"privmesh-{self.domain}-consent",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            retry_backoff_ms=200,
        )
        await consumer.start()
        await self._sender.start()
        try:
            assignment = await assign_from_beginning(consumer, self.topic)
            await self._catch_up(consumer, assignment)
            checked = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                await self._apply_batches(batches)
                if time.monotonic() - checked >= REREAD_SECONDS:
                    checked = time.monotonic()
                    await consumer.seek_to_beginning(*assignment)
                    self.counters["rereads"] += 1
        finally:
            await consumer.stop()

    async def _catch_up(self, consumer: AIOKafkaConsumer, assignment: list[TopicPartition]) -> None:
        began = time.monotonic()
        markers = [Output(self.topic, self._marker, None, None, tp.partition) for tp in assignment]
        await self._sender.deliver(markers)
        waiting = {tp.partition for tp in assignment}
        while waiting:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                if any(r.key == self._marker for r in records):
                    waiting.discard(tp.partition)
            await self._apply_batches(batches)
        self.counters["catch_up_ms"] = round((time.monotonic() - began) * 1000)
        self.ready.set()
        log.info(
            "%s: consent index ready (%d records, %d ms)",
            self.domain,
            self.counters["records"],
            self.counters["catch_up_ms"],
        )

    async def _apply_batches(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        withdrawals: list[ConsentRecord] = []
        seen = self._seen
        for records in batches.values():
            for n, record in enumerate(records, start=1):
                # A re-read of records already applied costs a set lookup, not a parse; a
                # log rewritten after a broker restart has new timestamps, so it is applied.
                position = hash((record.partition, record.offset, record.timestamp))
                if position in seen:
                    continue
                seen.add(position)
                withdrawn = await self._apply_guarded(record)
                if withdrawn is not None:
                    withdrawals.append(withdrawn)
                if n % 1000 == 0:
                    await asyncio.sleep(0)  # let the ingest loop run between chunks
        withdrawals, self._retry = self._retry + withdrawals, []
        if withdrawals:
            try:
                await self._erase(withdrawals)
            except Exception as exc:  # a store hiccup: retried with the next batch
                self._retry = withdrawals
                self.counters["erasure_failures"] += 1
                log.error(
                    "%s: withdrawal erasure failed (%s); retrying with the next batch",
                    self.domain,
                    type(exc).__name__,
                )

    async def _apply_guarded(self, record: ConsumerRecord) -> ConsentRecord | None:
        """``_apply``; a record that fails in any way is dead-lettered, never raised."""
        try:
            return await self._apply(record)
        except Exception as exc:
            self.counters["processing_errors"] += 1
            # The exception's type only: its message could quote the record.
            log.error(
                "%s: a consent record could not be applied (%s)", self.domain, type(exc).__name__
            )
            key = record.key if isinstance(record.key, bytes) else None
            value = record.value if isinstance(record.value, bytes) else None
            failure = MalformedConsent(PROCESSING_ERROR, f"internal error {type(exc).__name__}")
            await self._dead_letter(record, key, value, failure)
            return None

    async def _apply(self, record: ConsumerRecord) -> ConsentRecord | None:
        key: bytes | None = record.key
        value: bytes | None = record.value
        if value is None and key is not None and MARKER.fullmatch(key):
            self.counters["sync_markers"] += 1
            return None  # a worker's catch-up marker
        self.counters["records"] += 1
        try:
            parsed = parse_consent(value, self.index.purposes)
        except MalformedConsent as exc:
            self.counters["malformed"] += 1
            self.counters[f"malformed.{exc.reason}"] += 1
            await self._dead_letter(record, key, value, exc)
            return None
        change = self.index.apply(parsed)
        self.counters[f"applied.{change.value}"] += 1
        return parsed if change is Change.WITHDRAWN else None

    async def _dead_letter(
        self, record: ConsumerRecord, key: bytes | None, value: bytes | None, exc: MalformedConsent
    ) -> None:
        source = f"{self.topic}/{record.partition}/{record.offset}"
        digest = hashlib.sha256(
            b"%d|" % record.timestamp + (key or b"") + b"|" + (value or b"")
        ).hexdigest()
        if digest in self._dead_lettered:
            return  # dead-lettered before (by this worker, or before its restart)
        letter = dead_letter(
            consent_dlq_topic(self.domain), key, value, exc.reason, exc.detail, source
        )
        try:
            refused = await self._sender.deliver([letter])
        except Exception as error:  # the loop goes on; the record is counted, not raised
            refused = [letter]
            log.error("%s: consent dead letter not sent (%s)", self.domain, type(error).__name__)
        if refused:
            self.counters["dead_letter_failures"] += 1
            return
        append_jsonl(self._dlq_log, {"digest": digest, "reason": exc.reason, "source": source})
        self._dead_lettered.add(digest)
        self.counters["dead_lettered"] += 1
        log.warning("%s: malformed consent record dead-lettered: %s", self.domain, exc.detail)

    async def _erase(self, withdrawals: list[ConsentRecord]) -> None:
        """Erase the withdrawn subjects' features for each purpose, once per decision."""
        by_purpose: dict[str, list[tuple[str, ConsentRecord]]] = {}
        for record in withdrawals:
            erasure_id = withdrawal_id(self.domain, self.index, record)
            if erasure_id not in self._erased:
                by_purpose.setdefault(record.purpose, []).append((erasure_id, record))
        for purpose, pending in by_purpose.items():
            products = [p for p in self.contract.products if p.purpose == purpose]
            per_record = []
            for eid, r in pending:
                try:
                    per_record.append((eid, self._tokens_of(r.subject, products)))
                except Exception as exc:  # this record only; the others are erased
                    self.counters["processing_errors"] += 1
                    log.error(
                        "%s: tokens of a withdrawn subject not derived (%s)",
                        self.domain,
                        type(exc).__name__,
                    )
            tokens = set().union(*(t for _, t in per_record))
            if not tokens:
                continue
            erased = await self._evict(tokens, {p.name for p in products})
            tombstones = [
                Output(ProductTopics.of(self.domain, p).profiles, token.encode(), None)
                for p in products
                for token in sorted(tokens)
            ]
            await self._sender.deliver(tombstones)
            now = datetime.now(UTC).isoformat()
            for index, (erasure_id, erased_tokens) in enumerate(per_record):
                # The rows were erased together; the batch's counts go on its first record.
                append_record(
                    self._erasure_log,
                    ErasureRecord(
                        erasure_id=erasure_id,
                        domain=self.domain,
                        requested_at=now,
                        tokens=sorted(erased_tokens),
                        online_rows=erased.online if index == 0 else 0,
                        offline_rows=erased.offline if index == 0 else 0,
                        tombstones=len(erased_tokens) * len(products),
                        requested_by=f"{WITHDRAWAL_BY}:{purpose}",
                    ),
                )
                self._erased.add(erasure_id)
            self.counters["withdrawal_erasures"] += len(per_record)
            log.info(
                "%s: %d withdrawal(s) for %s erased (%d online, %d offline rows)",
                self.domain,
                len(per_record),
                purpose,
                erased.online,
                erased.offline,
            )

    def _tokens_of(self, subject: str, products: list[DataProduct]) -> set[str]:
        if self._tokens is None:
            return set()
        return subject_tokens(self.contract, self._tokens, subject, products)


def withdrawal_id(domain: str, index: ConsentIndex, record: ConsentRecord) -> str:
    """A stable id for one withdrawal decision: the same record always gives the same id."""
    digest = index.digest(
        f"{record.purpose}|{record.subject.strip()}|{record.timestamp!r}".encode()
    )
    return f"{domain}-consent-{digest.hex()[:24]}"
