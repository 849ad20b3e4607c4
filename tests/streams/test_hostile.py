"""Hostile records on every topic a worker reads: each ends in exactly one of output or
dead letters, and nothing raises (ingest, consent, erasure requests; no broker).

The records are arbitrary bytes, keys and headers, and valid-but-hostile JSON: lone
surrogates and other escapes, NUL, BOMs, very long strings, deep nesting, huge numbers,
NaN/Infinity, duplicate keys, wrong types, odd UTC offsets, far past and future times.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.contract import FieldType
from domains.registry import get_contract
from feature_repo.events import event_schema, event_table
from feature_repo.store import ErasedRows
from streams.batch_send import BatchSender
from streams.consent import ConsentIndex, MalformedConsent, parse_consent
from streams.consent_listener import MARKER, MARKER_PREFIX, ConsentListener
from streams.erasure_listener import ErasureListener
from streams.generator import BUILDERS, make_people
from streams.ingest_loop import IngestLoop
from streams.keys import derive_domain_key
from streams.pipeline import build_pipelines, partition_for
from streams.pseudonymise import Tokeniser, normalise
from streams.settings import KafkaSettings, StreamSettings
from streams.topics import REASON_HEADER, consent_dlq_topic, erasures_dlq_topic
from streams.transform import Accepted, Rejected
from tests.fakes import RecordingSender

NOW = 1_795_427_000.0
CONTRACT = get_contract("shop")
PRODUCT = CONTRACT.products[0]
TOKENS = Tokeniser(derive_domain_key(b"h" * 32, "shop", 1), 1)
PEOPLE = make_people(8, 31)
SCHEMA = event_schema(PRODUCT)
HOSTILE = settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Texts no sane producer sends, and that broke the workers before.
NASTY_TEXT = [
    "\ud800",
    "a\udfffb",
    "\x00",
    "x\x00y",
    "\ufeff",
    "\ufeffcard",
    "\u202e",
    "\U0001f600",
    "a" * 10_000,
    "",
    " ",
    "alice@example.com",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "2001:db8::7",
    "198.51.100.7",
    "123-45-6789",
]
NASTY_TIMES = [
    "2026-11-23T14:43:20+05:30:15",
    "2026-11-23T14:43:20+05:30:15.5",
    "0001-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59+00:00",
    "9999-12-31T23:59:59-05:00",
    "2026-11-23T14:43:20",
    "2026-11-23",
    "1970-01-01T00:00:00Z",
    -1,
    0,
    1e300,
    NOW + 10**6,
]
NASTY_NUMBERS = [10**400, -(10**30), 1e308, -0.0, 2**63, True, None]


def nasty_value() -> st.SearchStrategy[Any]:
    """A JSON-able value meant to break a parser downstream of ``json.loads``."""
    leaf = st.one_of(
        st.sampled_from(NASTY_TEXT),
        st.sampled_from(NASTY_TIMES),
        st.sampled_from(NASTY_NUMBERS),
        st.text(max_size=40),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=6,
    )


def valid_order(person: int, seq: int, at: float = NOW - 5) -> dict[str, Any]:
    """A valid raw order of ``PEOPLE[person]``."""
    event: dict[str, Any] = BUILDERS[("shop", "orders")](
        PEOPLE[person], random.Random(seq), seq, datetime.fromtimestamp(at, tz=UTC).isoformat()
    )
    return event


def encode(payload: Any, style: str) -> bytes:
    """``payload`` as JSON bytes, written the ways hostile producers write it."""
    text = json.dumps(payload)  # ensure_ascii: lone surrogates travel as \\ud800 escapes
    if style == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if style == "duplicate" and text.startswith("{") and len(text) > 2:
        return ('{"order_id": "o-1", ' + text[1:]).encode()
    if style == "nested":
        return ("[" * 5000 + "]" * 5000).encode()
    if style == "raw_utf8":
        return json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return text.encode()


@st.composite
def ingest_records(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    """A (key, value) ingest record: a valid order with hostile changes, or junk."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "junk", "valid"]))
    if kind == "junk":
        return draw(st.one_of(st.none(), st.binary(max_size=40))), draw(st.binary(max_size=300))
    person = draw(st.integers(0, len(PEOPLE) - 1))
    event = valid_order(person, draw(st.integers(1, 10**6)))
    key: bytes | None = normalise(PEOPLE[person].email, FieldType.EMAIL).encode()
    if kind == "mutated":
        for name in draw(st.lists(st.sampled_from(sorted(event)), max_size=3, unique=True)):
            event[name] = draw(nasty_value())
        if draw(st.booleans()):
            event[draw(st.sampled_from([*NASTY_TEXT[:8], "Ana Ruiz", "extra"]))] = 1
        assert key is not None
        key = draw(st.sampled_from([key, key, b"", b"decoy", key.upper()]))
        if draw(st.booleans()):
            key = None if draw(st.booleans()) else draw(st.binary(max_size=20))
    style = draw(st.sampled_from(["plain", "plain", "bom", "duplicate", "nested", "raw_utf8"]))
    return key, encode(event, style)


def consumer_record(
    topic: str, offset: int, key: bytes | None, value: bytes | None, headers: Any = ()
) -> ConsumerRecord[bytes, bytes]:
    """An aiokafka record as a consumer hands it over."""
    return ConsumerRecord(
        topic, 0, offset, 1_700_000_000_000 + offset, 0, key, value, None, 0, 0, list(headers)
    )


HEADERS = st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=20)), max_size=3)


@HOSTILE
@given(records=st.lists(st.tuples(ingest_records(), HEADERS), min_size=1, max_size=12))
def test_every_ingest_record_ends_in_exactly_one_of_product_or_dead_letters(
    records: list[tuple[tuple[bytes | None, bytes], Any]],
) -> None:
    """Each ingest record gives one output, on the product topic or the DLQ with a reason;
    nothing raises, and every accepted event converts to the offline schema."""
    [orders] = build_pipelines(CONTRACT, TOKENS, StreamSettings())
    loop = IngestLoop(
        "shop", [orders], KafkaSettings(), StreamSettings(), cast(BatchSender, RecordingSender())
    )
    for offset, ((key, value), headers) in enumerate(records):
        partition = partition_for(key or b"", 4)
        record = consumer_record(orders.topics.ingest, offset, key, value, headers)
        output = loop._route(orders, record, partition, 4, None, NOW)
        assert output is not None  # shop is opt_out and no one withdrew
        if output.topic == orders.topics.product:
            event = json.loads(output.value or b"")
            event_table(SCHEMA, [event])  # the offline write can take it
        else:
            assert output.topic == orders.topics.dlq
            reason = dict(output.headers or [])[REASON_HEADER].decode()
            assert reason and reason != "processing_error"
    assert orders.counters["accepted"] + orders.counters["rejected"] == len(records)
    accepted = orders.take_events()
    assert len(accepted) == orders.counters["accepted"]
    event_table(SCHEMA, accepted)


@HOSTILE
@given(payload=nasty_value(), style=st.sampled_from(["plain", "bom", "duplicate", "raw_utf8"]))
def test_transform_never_raises_on_hostile_json(payload: Any, style: str) -> None:
    """Whatever JSON arrives, the transform answers Accepted or Rejected."""
    [orders] = build_pipelines(CONTRACT, TOKENS, StreamSettings())
    outcome = orders.transform.apply(encode(payload, style), NOW)
    assert isinstance(outcome, Accepted | Rejected)


def consent_payload() -> st.SearchStrategy[Any]:
    """A consent record with hostile changes, or any hostile JSON value."""
    base = st.fixed_dictionaries(
        {
            "subject": st.one_of(st.sampled_from(NASTY_TEXT), st.just("ada@example.org")),
            "purpose": st.one_of(st.just("sales_analytics"), nasty_value()),
            "status": st.sampled_from(["granted", "withdrawn", "maybe", None]),
            "timestamp": st.one_of(st.sampled_from(NASTY_TIMES), st.just(NOW - 60)),
        },
        optional={"Ana Ruiz": nasty_value(), "\ud800": st.just(1)},
    )
    return st.one_of(base, nasty_value())


async def _evict(tokens: set[str], products: Collection[str] | None = None) -> ErasedRows:
    return ErasedRows(online=0, offline=0)


@HOSTILE
@given(
    values=st.lists(
        st.one_of(
            st.tuples(consent_payload(), st.sampled_from(["plain", "bom", "raw_utf8", "nested"])),
            st.tuples(st.binary(max_size=200), st.just("bytes")),
            st.tuples(st.none(), st.just("tombstone")),
        ),
        min_size=1,
        max_size=10,
    ),
    keys=st.lists(st.one_of(st.none(), st.binary(max_size=30)), min_size=10, max_size=10),
)
def test_every_consent_record_is_applied_or_dead_lettered(
    values: list[tuple[Any, str]], keys: list[bytes | None]
) -> None:
    """Each consent record is applied, dead-lettered with a reason, or counted as a
    worker's catch-up marker (a tombstone keyed privmesh-sync/<32 hex digits>, and nothing
    else); the listener never raises, whatever the bytes (the lone-surrogate subject that
    stopped the mesh included)."""
    sender = RecordingSender()
    index = ConsentIndex(CONTRACT, b"c" * 32)
    listener = ConsentListener(
        CONTRACT,
        KafkaSettings(),
        index,
        None,
        cast(BatchSender, sender),
        _evict,
        Path(tempfile.mkdtemp()),
    )
    topic = listener.topic
    for offset, (payload, style) in enumerate(values):
        raw: bytes | None
        if style == "bytes":
            raw = cast(bytes, payload)
        elif style == "tombstone":
            raw = None
        else:
            raw = encode(payload, style)
        record = consumer_record(topic, offset, keys[offset], raw)
        applied_before = sum(v for k, v in listener.counters.items() if k.startswith("applied."))
        sent_before = len(sender.to(consent_dlq_topic("shop")))
        markers_before = listener.counters["sync_markers"]
        asyncio.run(listener._apply_batches({cast(Any, 0): [record]}))
        applied = sum(v for k, v in listener.counters.items() if k.startswith("applied."))
        sent = len(sender.to(consent_dlq_topic("shop")))
        markers = listener.counters["sync_markers"] - markers_before
        assert (applied - applied_before) + (sent - sent_before) + markers == 1
        assert markers == 0 or (raw is None and MARKER.fullmatch(keys[offset] or b""))
        try:
            parse_consent(raw, index.purposes, NOW)
        except MalformedConsent as exc:
            assert exc.reason != "processing_error"
    assert listener.counters["processing_errors"] == 0


def test_only_a_well_formed_marker_tombstone_is_skipped_as_a_marker() -> None:
    """A tombstone keyed like a worker's catch-up marker is skipped (counted); one whose key
    only starts like a marker, or a marker key with a value, is dead-lettered."""
    sender = RecordingSender()
    listener = ConsentListener(
        CONTRACT,
        KafkaSettings(),
        ConsentIndex(CONTRACT, b"c" * 32),
        None,
        cast(BatchSender, sender),
        _evict,
        Path(tempfile.mkdtemp()),
    )
    records = [
        (MARKER_PREFIX + b"0123456789abcdef0123456789abcdef", None),  # a marker
        (MARKER_PREFIX, None),
        (MARKER_PREFIX + b"0123456789ABCDEF0123456789ABCDEF", None),
        (MARKER_PREFIX + b"0123456789abcdef0123456789abcdef", b"{}"),
    ]
    for offset, (key, value) in enumerate(records):
        record = consumer_record(listener.topic, offset, key, value)
        asyncio.run(listener._apply_batches({cast(Any, 0): [record]}))
    assert listener.counters["sync_markers"] == 1
    assert len(sender.to(consent_dlq_topic("shop"))) == 3


@HOSTILE
@given(
    values=st.lists(
        st.one_of(
            st.binary(max_size=200),
            nasty_value().map(lambda v: json.dumps({"tokens": v}).encode()),
            st.lists(
                st.sampled_from(["k1.aaaaaaaaaaaaaaaa", "\ud800", "Ana Ruiz"]), max_size=3
            ).map(lambda t: json.dumps({"tokens": t}).encode()),
            st.just(b"[" * 5000 + b"]" * 5000),
        ),
        min_size=1,
        max_size=10,
        unique=True,
    )
)
def test_every_erasure_request_is_applied_or_dead_lettered(values: list[bytes]) -> None:
    """Each erasure request is applied or dead-lettered with a reason; nothing raises."""
    sender = RecordingSender()
    applied: list[set[str]] = []

    async def evict(tokens: set[str]) -> None:
        applied.append(tokens)

    listener = ErasureListener("shop", KafkaSettings(), evict, cast(BatchSender, sender))
    for offset, raw in enumerate(values):
        asyncio.run(listener._apply(raw, listener.started_ms, None, f"shop.erasures/0/{offset}"))
    dead = sender.to(erasures_dlq_topic("shop"))
    assert len(applied) + len(dead) == len(values)
    assert all(dict(o.headers)[REASON_HEADER] for o in dead)


def test_a_failing_eviction_is_dead_lettered_and_the_loop_goes_on() -> None:
    """An erasure whose eviction raises is dead-lettered (processing_error); the next
    request is applied."""
    sender = RecordingSender()
    calls: list[set[str]] = []

    async def evict(tokens: set[str]) -> None:
        calls.append(tokens)
        if len(calls) == 1:
            raise RuntimeError("store away")

    listener = ErasureListener("shop", KafkaSettings(), evict, cast(BatchSender, sender))
    for n, token in enumerate(("k1.aaaaaaaaaaaaaaaa", "k1.bbbbbbbbbbbbbbbb")):
        raw = json.dumps({"tokens": [token]}).encode()
        asyncio.run(listener._apply(raw, listener.started_ms, None, f"s/0/{n}"))
    assert listener.applied == 1 and listener.failed == 1
    [dead] = sender.to(erasures_dlq_topic("shop"))
    assert dict(dead.headers)[REASON_HEADER] == b"processing_error"


def test_the_consent_record_that_stopped_the_mesh_is_dead_lettered() -> None:
    """The observed record (an escaped lone surrogate as subject) is dead-lettered as
    invalid_value by the listener, which goes on to apply the next record."""
    sender = RecordingSender()
    index = ConsentIndex(CONTRACT, b"c" * 32)
    listener = ConsentListener(
        CONTRACT, KafkaSettings(), index, None, cast(BatchSender, sender), _evict,
        Path(tempfile.mkdtemp()),
    )  # fmt: skip
    stamp = datetime.fromtimestamp(NOW, tz=UTC).isoformat()
    bad = b'{"subject": "\\ud800", "purpose": "sales_analytics", "status": "withdrawn", '
    bad += f'"timestamp": "{stamp}"}}'.encode()
    good = json.dumps(
        {"subject": "ada@example.org", "purpose": "sales_analytics", "status": "withdrawn",
         "timestamp": stamp}
    ).encode()  # fmt: skip
    records = [consumer_record(listener.topic, n, None, v) for n, v in enumerate((bad, good))]
    asyncio.run(listener._apply_batches({cast(Any, 0): records}))
    [dead] = sender.to(consent_dlq_topic("shop"))
    assert dict(dead.headers)[REASON_HEADER] == b"invalid_value"
    assert listener.counters["applied.withdrawn"] == 1
