"""Canary identities sent through every record type a worker or command reads never
appear in a log line, an exception message or a dead-letter header (issue 18, item 4)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import tempfile
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord

from domains.contract import FieldType
from domains.registry import get_contract
from feature_repo.store import ErasedRows
from governance.subjects import check_subject
from infra.logs import JsonFormatter, mask_identifiers
from streams.batch_send import BatchSender, Output
from streams.consent import ConsentIndex, MalformedConsent, parse_consent
from streams.consent_listener import ConsentListener
from streams.erasure_listener import ErasureListener
from streams.generator import BUILDERS, make_people
from streams.ingest_loop import IngestLoop
from streams.keyring import DomainTokens
from streams.keys import derive_domain_key
from streams.pipeline import build_pipelines, partition_for
from streams.pseudonymise import Tokeniser, normalise
from streams.settings import KafkaSettings, StreamSettings
from streams.topics import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER
from tests.fakes import RecordingSender

NOW = 1_795_427_000.0
NAME = "Zebulon Quixote-Marchetti"
EMAIL = "zebulon.canary@example.org"
PHONE = "+44 20 7946 0999"
LOCAL_PHONE = "(212) 555-0147"
IPV4 = "203.0.113.77"
IPV6 = "2001:db8::7:77"
COOKIE = "ck_canary-9f8e7d6c5b4a"
CARD = "4111 1111 1111 1111"
CANARIES = [NAME, EMAIL, PHONE, LOCAL_PHONE, IPV4, IPV6, COOKIE, CARD]
# What a leak may look like besides the canary itself: its pieces and normal forms.
TELLS = [*CANARIES, "zebulon", "quixote", "marchetti", "7946 0999", "555-0147", "9f8e7d6c5b4a"]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log record of the test, formatted as the workers format them (JSON lines)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter("log-scan"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def leaks(text: str) -> list[str]:
    """The canary tells found in ``text`` (case-insensitive)."""
    lowered = text.lower()
    return [t for t in TELLS if t.lower() in lowered]


def header_text(outputs: list[Output]) -> str:
    """Reason, detail and source headers of ``outputs`` (what operators read)."""
    names = {REASON_HEADER, DETAIL_HEADER, SOURCE_HEADER}
    return "\n".join(
        value.decode("utf-8", "replace")
        for o in outputs
        for name, value in (o.headers or [])
        if name in names
    )


def record(topic: str, offset: int, key: bytes | None, value: bytes | None) -> ConsumerRecord:
    """An aiokafka record as a consumer hands it over."""
    return ConsumerRecord(
        topic, 0, offset, 1_700_000_000_000 + offset, 0, key, value, None, 0, 0, []
    )


def hostile_orders() -> list[tuple[bytes | None, bytes]]:
    """Shop orders carrying the canaries every way a producer can misplace them."""
    person = make_people(1, 3)[0]
    base: dict[str, Any] = BUILDERS[("shop", "orders")](
        person, random.Random(1), 1, datetime.fromtimestamp(NOW - 5, tz=UTC).isoformat()
    )
    key = normalise(EMAIL, FieldType.EMAIL).encode()
    variants: list[dict[str, Any]] = [
        {**base, "customer_email": EMAIL, NAME: 1},  # a field named after a person
        {**base, "customer_email": EMAIL, PHONE: "x", COOKIE: "y"},
        {**base, "customer_email": EMAIL, "order_id": EMAIL},  # identifiers in ids
        {**base, "customer_email": EMAIL, "order_id": f"o-{PHONE}"},
        {**base, "customer_email": EMAIL, "order_id": CARD},
        {**base, "customer_email": EMAIL, "order_id": IPV6},
        {**base, "customer_email": EMAIL + "\ud800"},  # unencodable subject
        {**base, "customer_email": EMAIL, "ip_address": NAME},
        {**base, "customer_email": EMAIL, "ip_address": IPV6},
        {**base, "customer_email": EMAIL, "zip_code": PHONE + "\x00"},
        {**base, "customer_email": EMAIL, "payment_method": NAME},
        {**base, "customer_email": EMAIL, "birth_date": LOCAL_PHONE},
        {**base, "customer_email": EMAIL, "occurred_at": f"{NAME} 2026"},
        {**base, "customer_email": EMAIL, "amount_cents": EMAIL},
        {**base, "customer_email": EMAIL, "customer_name": NAME * 50},
        {**base, "customer_email": EMAIL},  # valid, but keyed by someone else below
    ]
    records: list[tuple[bytes | None, bytes]] = [(key, json.dumps(v).encode()) for v in variants]
    records[-1] = (IPV4.encode(), records[-1][1])
    records.append((COOKIE.encode(), f"{NAME} {EMAIL} {PHONE} not json".encode()))
    return records


def test_events_leave_no_identifier_in_logs_or_dead_letter_headers(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hostile shop orders and web page views are all dead-lettered; no canary in any log
    line or header, even when the transform fails with the value in its exception."""
    tokens = Tokeniser(derive_domain_key(b"s" * 32, "shop", 1), 1)
    [orders] = build_pipelines(get_contract("shop"), tokens, StreamSettings())
    loop = IngestLoop(
        "shop", [orders], KafkaSettings(), StreamSettings(), cast(BatchSender, RecordingSender())
    )
    outputs: list[Output] = []
    for offset, (key, value) in enumerate(hostile_orders()):
        partition = partition_for(key or b"", 4)
        rec = record(orders.topics.ingest, offset, key, value)
        output = loop._route(orders, rec, partition, 4, None, NOW)
        assert output is not None and output.topic == orders.topics.dlq
        outputs.append(output)

    def explode(value: str, kind: FieldType = FieldType.STRING) -> str:
        raise ValueError(f"cannot tokenise {value!r}")  # a library quoting the value

    monkeypatch.setattr(Tokeniser, "token", lambda self, value, kind=None: explode(value))
    key, value = hostile_orders()[2]
    valid = json.loads(value) | {"order_id": "o-1"}
    rec = record(orders.topics.ingest, 99, key, json.dumps(valid).encode())
    failed = loop._route(orders, rec, partition_for(key or b"", 4), 4, None, NOW)
    assert failed is not None and dict(failed.headers or [])[REASON_HEADER] == b"processing_error"
    outputs.append(failed)

    reasons = {dict(o.headers or [])[REASON_HEADER].decode() for o in outputs}
    assert {"unknown_field", "personal_value", "invalid_value", "wrong_key"} <= reasons
    assert leaks(captured.getvalue()) == []
    assert leaks(header_text(outputs)) == []


async def _evict_quoting(tokens: set[str], products: Collection[str] | None = None) -> ErasedRows:
    raise RuntimeError(f"store refused {EMAIL} / {sorted(tokens)}")


def consent_value(subject: str, **extra: object) -> bytes:
    """A consent record of ``subject`` for the shop's purpose, with ``extra`` fields."""
    body = {
        "subject": subject,
        "purpose": "sales_analytics",
        "status": "withdrawn",
        "timestamp": datetime.fromtimestamp(NOW, tz=UTC).isoformat(),
        **extra,
    }
    return json.dumps(body).encode()


def test_consent_records_leave_no_identifier_in_logs(captured: io.StringIO) -> None:
    """Malformed consent records (canaries as subjects with surrogates or NUL, as unknown
    field names) and a withdrawal whose erasure fails quoting the subject leak nothing."""
    contract = get_contract("shop")
    sender = RecordingSender()
    tokens = Tokeniser(derive_domain_key(b"s" * 32, "shop", 1), 1)
    domain_tokens = cast(DomainTokens, _Tokens(tokens))
    listener = ConsentListener(
        contract, KafkaSettings(), ConsentIndex(contract, b"c" * 32), domain_tokens,
        cast(BatchSender, sender), _evict_quoting, Path(tempfile.mkdtemp()),
    )  # fmt: skip
    values = [
        consent_value(EMAIL + "\ud800"),
        consent_value(PHONE + "\x00"),
        consent_value(EMAIL, **{NAME: 1}),
        consent_value(EMAIL, **{PHONE: 1, COOKIE: 2, IPV4: 3}),
        consent_value(NAME * 20),
        f"{NAME} {EMAIL}".encode(),
        consent_value(EMAIL),  # valid: its erasure fails, quoting the subject
    ]
    key = f"sales_analytics/{EMAIL}".encode()
    records = [record(listener.topic, n, key, v) for n, v in enumerate(values)]
    asyncio.run(listener._apply_batches({cast(Any, 0): records}))
    assert listener.counters["dead_lettered"] == 6
    assert listener.counters["erasure_failures"] == 1
    assert leaks(captured.getvalue()) == []
    assert leaks(header_text(sender.outputs)) == []
    for value in values[:-1]:
        with pytest.raises(MalformedConsent) as refused:
            parse_consent(value, frozenset({"sales_analytics"}), NOW)
        assert leaks(str(refused.value)) == []


class _Tokens:
    """The part of ``DomainTokens`` that deriving a subject's tokens reads."""

    def __init__(self, tokeniser: Tokeniser) -> None:
        self._tokeniser = tokeniser

    def all_tokens(self, subject: str, kind: FieldType) -> set[str]:
        """The subject's token under the one key version."""
        return {self._tokeniser.token(subject, kind)}


def test_erasure_requests_leave_no_identifier_in_logs(captured: io.StringIO) -> None:
    """Erasure requests naming raw identifiers instead of tokens, and an eviction failing
    with a message that quotes them, leak nothing to logs or headers."""
    sender = RecordingSender()

    async def evict(tokens: set[str]) -> None:
        raise RuntimeError(f"could not evict {NAME} {EMAIL}")

    listener = ErasureListener("shop", KafkaSettings(), evict, cast(BatchSender, sender))
    raws = [
        json.dumps({"tokens": [EMAIL, PHONE]}).encode(),
        json.dumps({"tokens": [], NAME: COOKIE}).encode(),
        f"{NAME} {IPV4} {IPV6}".encode(),
        json.dumps({"tokens": ["k1.aaaaaaaaaaaaaaaa"]}).encode(),  # valid; eviction fails
    ]
    for n, raw in enumerate(raws):
        asyncio.run(listener._apply(raw, listener.started_ms, EMAIL.encode(), f"e/0/{n}"))
    assert listener.malformed == 3 and listener.failed == 1
    assert leaks(captured.getvalue()) == []
    assert leaks(header_text(sender.outputs)) == []


def test_subject_request_inputs_are_refused_without_quoting_them() -> None:
    """``privmesh dsr`` refuses a subject with NUL or a lone surrogate with a message that
    does not hold it."""
    for subject in (EMAIL + "\x00", PHONE + "\udcff", "   "):
        with pytest.raises(ValueError) as refused:
            check_subject(subject)
        assert leaks(str(refused.value)) == []


def test_the_log_mask_replaces_every_kind_a_library_may_print(captured: io.StringIO) -> None:
    """A library message or traceback quoting an e-mail, phones, a card, an IBAN, a national
    id or IP addresses is masked; loopback addresses and tokens are kept."""
    log = logging.getLogger("some.library")
    text = (
        f"user {EMAIL} at {IPV4} / {IPV6} called {PHONE} and {LOCAL_PHONE}, paid {CARD} "
        "from DE89 3704 0044 0532 0130 00, ssn 123-45-6789; 127.0.0.1 ::1 k1.abcdefghijklmnop"
    )
    try:
        raise ValueError(text)
    except ValueError:
        log.exception("request failed: %s", text)
    line = json.loads(captured.getvalue().splitlines()[-1])
    for field in ("msg", "exc"):
        assert leaks(line[field]) == []
        assert "DE89" not in line[field] and "123-45-6789" not in line[field]
        assert "127.0.0.1" in line[field] and "k1.abcdefghijklmnop" in line[field]
    masked = mask_identifiers(text)
    for marker in ("<email>", "<ipv4>", "<ipv6>", "<phone>", "<card>", "<iban>", "<national-id>"):
        assert marker in masked
