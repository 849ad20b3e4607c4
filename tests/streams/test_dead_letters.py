"""Dead letters are bounded in size, and a refused or failing delivery never stops a loop
(erasure requests, consent records, ingest records; no broker)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

from domains.registry import get_contract
from feature_repo.store import ErasedRows
from streams.batch_send import (
    DEAD_LETTER_MAX_KEY_BYTES,
    DEAD_LETTER_MAX_VALUE_BYTES,
    MIN_MAX_REQUEST_BYTES,
    BatchSender,
    Output,
    dead_letter,
)
from streams.consent import ConsentIndex
from streams.consent_listener import ConsentListener
from streams.erasure_listener import ErasureListener
from streams.ingest_loop import IngestLoop
from streams.keys import derive_domain_key
from streams.pipeline import build_pipelines
from streams.pseudonymise import Tokeniser
from streams.settings import KafkaSettings, StreamSettings
from streams.topics import (
    ORIGINAL_BYTES_HEADER,
    ORIGINAL_KEY_BYTES_HEADER,
    ORIGINAL_SHA256_HEADER,
    REASON_HEADER,
    SOURCE_HEADER,
    TRUNCATED_HEADER,
    consent_dlq_topic,
    erasures_dlq_topic,
)
from tests.fakes import RecordingSender

CONTRACT = get_contract("shop")
TOKENS = Tokeniser(derive_domain_key(b"d" * 32, "shop", 1), 1)


def record(
    topic: str, offset: int, key: bytes | None, value: bytes | None
) -> ConsumerRecord[Any, Any]:
    """An aiokafka record as a consumer hands it over."""
    stamp = int(datetime.now(UTC).timestamp() * 1000)
    return ConsumerRecord(topic, 0, offset, stamp, 0, key, value, None, 0, 0, [])


def assert_bounded_truncation(output: Output, original: bytes, reason: bytes) -> None:
    """``output`` is a dead letter of ``original`` cut to the bound, saying so in headers."""
    headers = dict(output.headers or [])
    assert headers[REASON_HEADER] == reason
    assert headers[TRUNCATED_HEADER] == b"value"
    assert int(headers[ORIGINAL_BYTES_HEADER]) == len(original)
    assert headers[ORIGINAL_SHA256_HEADER] == hashlib.sha256(original).hexdigest().encode()
    assert output.value == original[:DEAD_LETTER_MAX_VALUE_BYTES]
    size = len(output.value or b"") + len(output.key or b"")
    size += sum(len(k) + len(v) for k, v in output.headers or [])
    assert size < MIN_MAX_REQUEST_BYTES // 8


def test_a_small_dead_letter_is_kept_whole_and_a_large_one_is_cut() -> None:
    """Values up to the bound are kept as they are; larger values and keys are cut, with
    their original length and digest in headers."""
    small = dead_letter("t.dlq", b"k", b"x" * DEAD_LETTER_MAX_VALUE_BYTES, "r", "d", "s/0/1")
    assert small.value == b"x" * DEAD_LETTER_MAX_VALUE_BYTES
    assert {k for k, _ in small.headers or []} == {REASON_HEADER, "privmesh-detail", SOURCE_HEADER}
    big_value = bytes(range(256)) * 8_000
    big_key = b"k" * (DEAD_LETTER_MAX_KEY_BYTES + 5)
    big = dead_letter("t.dlq", big_key, big_value, "too_large", "d" * 10_000, "s/0/2", 3)
    assert_bounded_truncation(big, big_value, b"too_large")
    assert big.key == big_key[:DEAD_LETTER_MAX_KEY_BYTES] and big.partition == 3
    assert dict(big.headers or [])[ORIGINAL_KEY_BYTES_HEADER] == str(len(big_key)).encode()


def test_a_1_4_mb_erasure_request_is_one_bounded_dead_letter_and_the_next_is_applied() -> None:
    """200,000 tokens (about 1.4 MB) are refused as too_large before JSON decoding and
    dead-lettered cut to the bound; the next request is applied."""
    sender = RecordingSender()
    applied: list[set[str]] = []

    async def evict(tokens: set[str]) -> None:
        applied.append(tokens)

    listener = ErasureListener("shop", KafkaSettings(), evict, cast(BatchSender, sender))
    huge = json.dumps({"tokens": [f"k1.{n:016d}" for n in range(200_000)]}).encode()
    assert len(huge) > 1_400_000
    good = json.dumps({"tokens": ["k1.aaaaaaaaaaaaaaaa"]}).encode()
    for n, raw in enumerate((huge, good)):
        asyncio.run(listener._apply(raw, listener.started_ms, b"e1", f"shop.erasures/0/{n}"))
    [dead] = sender.to(erasures_dlq_topic("shop"))
    assert_bounded_truncation(dead, huge, b"too_large")
    assert applied == [{"k1.aaaaaaaaaaaaaaaa"}]
    assert listener.malformed == 1 and listener.dead_lettered == 1


async def _evict(tokens: set[str], products: Collection[str] | None = None) -> ErasedRows:
    return ErasedRows(online=0, offline=0)


def _consent(subject: str) -> bytes:
    stamp = datetime.now(UTC).isoformat()
    body = {"subject": subject, "purpose": "sales_analytics", "status": "granted"}
    return json.dumps({**body, "timestamp": stamp}).encode()


def test_a_2_mb_consent_record_is_one_bounded_dead_letter_and_the_next_is_applied() -> None:
    """A 2 MB consent record is dead-lettered as too_large, cut to the bound; the next
    record is applied."""
    sender = RecordingSender()
    index = ConsentIndex(CONTRACT, b"c" * 32)
    listener = ConsentListener(
        CONTRACT, KafkaSettings(), index, None, cast(BatchSender, sender), _evict,
        Path(tempfile.mkdtemp()),
    )  # fmt: skip
    huge = _consent("x" * 2_000_000)
    records = [
        record(listener.topic, n, None, v) for n, v in enumerate((huge, _consent("a@b.org")))
    ]
    asyncio.run(listener._apply_batches({cast(Any, 0): records}))
    [dead] = sender.to(consent_dlq_topic("shop"))
    assert_bounded_truncation(dead, huge, b"too_large")
    assert listener.counters["applied.granted"] == 1


class _Consumer:
    """The part of an aiokafka consumer ``IngestLoop._process`` uses."""

    def __init__(self) -> None:
        self.committed: list[Any] = []

    async def commit(self, offsets: Any) -> None:
        self.committed.append(offsets)


def test_a_2_mb_ingest_record_is_one_bounded_dead_letter_and_the_next_is_processed() -> None:
    """A 2 MB ingest record is dead-lettered as too_large, cut to the bound; the batch's
    other record reaches the product topic and the offsets are committed."""
    [orders] = build_pipelines(CONTRACT, TOKENS, StreamSettings())
    sender = RecordingSender()
    loop = IngestLoop(
        "shop", [orders], KafkaSettings(), StreamSettings(), cast(BatchSender, sender)
    )
    huge = b'{"debug": "' + b"x" * 2_000_000 + b'"}'
    good = json.dumps(
        {"order_id": "o-1", "customer_email": "ada@example.org", "amount": 12.5,
         "currency": "EUR", "country": "DE", "ts": datetime.now(UTC).isoformat()}
    ).encode()  # fmt: skip
    tp = TopicPartition(orders.topics.ingest, 0)
    batch = [record(tp.topic, n, None, v) for n, v in enumerate((huge, good))]
    consumer = _Consumer()
    asyncio.run(loop._process(cast(Any, consumer), {tp: batch}))
    [dead, *others] = sender.to(orders.topics.dlq)
    assert_bounded_truncation(dead, huge, b"too_large")
    assert len(sender.to(orders.topics.product)) + len(others) == 1
    assert consumer.committed and loop.counters["consumed"] == 2


class _RefusingProducer:
    """Stands in for aiokafka's producer: refuses records over ``limit`` bytes the way it
    does (``send`` raises; a batch is refused by the broker)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[bytes] = []

    def _done(self, error: BaseException | None = None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
        return future

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        if len(value) > self.limit:
            raise MessageSizeTooLargeError("too large")
        self.sent.append(value)
        return self._done()

    def create_batch(self) -> list[bytes]:
        return []

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[None]:
        if any(len(v) > self.limit for v in batch.values):
            return self._done(RecordListTooLargeError("too large"))
        self.sent.extend(batch.values)
        return self._done()


class _Batch:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, key: Any, value: bytes, timestamp: Any, headers: Any) -> bool:
        self.values.append(value)
        return True


def test_deliver_returns_refused_records_and_delivers_the_rest() -> None:
    """A record the producer or the broker refuses for good is returned, not raised or
    retried for ever; the other records of its call (and of its batch) are delivered."""
    sender = BatchSender(KafkaSettings(), StreamSettings(), "test")
    producer = _RefusingProducer(limit=100)
    producer.create_batch = _Batch  # type: ignore[assignment,method-assign]
    sender._client, sender._started = cast(Any, producer), True
    outputs = [
        Output("t", None, b"a"),
        Output("t", None, b"x" * 200),
        Output("t", None, b"b", None, 0),
        Output("t", None, b"y" * 200, None, 0),
    ]
    refused = asyncio.run(sender.deliver(outputs))
    assert refused == [outputs[1], outputs[3]]
    assert sorted(producer.sent) == [b"a", b"b"]
    assert sender.refused == 2 and sender.retries == 0


class _FailingSender(RecordingSender):
    async def deliver(self, outputs: list[Any]) -> list[Any]:
        raise RuntimeError("broker away")


def test_a_failing_dead_letter_delivery_does_not_stop_the_listeners() -> None:
    """When delivering a dead letter raises, the erasure and consent listeners count it
    and go on to the next record."""
    applied: list[set[str]] = []

    async def evict(tokens: set[str]) -> None:
        applied.append(tokens)

    erasures = ErasureListener("shop", KafkaSettings(), evict, cast(BatchSender, _FailingSender()))
    good = json.dumps({"tokens": ["k1.aaaaaaaaaaaaaaaa"]}).encode()
    for n, raw in enumerate((b"not json", good)):
        asyncio.run(erasures._apply(raw, erasures.started_ms, None, f"s/0/{n}"))
    assert erasures.dead_letter_failures == 1 and applied == [{"k1.aaaaaaaaaaaaaaaa"}]

    index = ConsentIndex(CONTRACT, b"c" * 32)
    consent = ConsentListener(
        CONTRACT, KafkaSettings(), index, None, cast(BatchSender, _FailingSender()), _evict,
        Path(tempfile.mkdtemp()),
    )  # fmt: skip
    records = [record(consent.topic, n, None, v) for n, v in enumerate((b"{", _consent("a@b.org")))]
    asyncio.run(consent._apply_batches({cast(Any, 0): records}))
    assert consent.counters["dead_letter_failures"] == 1
    assert consent.counters["applied.granted"] == 1
