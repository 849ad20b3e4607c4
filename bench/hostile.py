"""A corpus of hostile records for every topic a worker reads (ingest, consent, erasures).

Each record is built from a valid one of the shop domain and broken in one way: escapes
JSON allows but UTF-8 does not (lone surrogates), NUL, a BOM, invalid UTF-8, very long
strings, deep nesting, huge numbers, NaN/Infinity, duplicate keys, wrong types, odd UTC
offsets, event times far in the past or future, personal data in a field tagged
non-personal, a decoy or missing key, tombstones and odd headers. Identifiers in it are
synthetic canaries (``example.org`` addresses, 555 numbers, documentation IPs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

CANARY_EMAIL = "hostile.canary@example.org"


@dataclass(frozen=True)
class HostileRecord:
    """One record: which topic kind it goes to, what is wrong with it, key, value, headers."""

    kind: str  # "ingest" | "consent" | "erasures"
    name: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def _order(seq: int, **changes: object) -> dict[str, object]:
    event: dict[str, object] = {
        "order_id": f"hx-{seq:06d}",
        "customer_name": "Hostile Canary",
        "customer_email": CANARY_EMAIL,
        "ip_address": "192.0.2.77",
        "birth_date": "1980-02-29",
        "zip_code": "10001",
        "amount_cents": 1234,
        "payment_method": "card",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    event.update(changes)
    return event


def _raw(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def ingest_corpus() -> list[HostileRecord]:
    """Hostile events for ``shop.orders.ingest`` (keyed by the privacy unit unless noted)."""
    key = CANARY_EMAIL.encode()
    now = datetime.now(UTC)
    records: list[tuple[str, bytes | None, bytes | None]] = [
        ("lone_surrogate_in_id", key, _raw(_order(1)).replace(b"hx-000001", b"hx-\\ud800")),
        ("lone_surrogate_in_unit", key, _raw(_order(2)).replace(b"canary@", b"can\\udfffary@")),
        ("nul_in_string", key, _raw(_order(3, order_id="hx-\x00-3"))),
        ("bom_prefix", key, b"\xef\xbb\xbf" + _raw(_order(4))),
        ("invalid_utf8", key, _raw(_order(5)).replace(b"card", b"c\xffrd")),
        ("very_long_string", key, _raw(_order(6, payment_method="x" * 1_000_000))),
        ("deep_nesting", key, b'{"a":' * 5000 + b"1" + b"}" * 5000),
        (
            "huge_integer",
            key,
            _raw(_order(8)).replace(b'"amount_cents":1234', b'"amount_cents":' + b"9" * 5000),
        ),
        (
            "huge_float",
            key,
            _raw(_order(9)).replace(b'"amount_cents":1234', b'"amount_cents":1e400'),
        ),
        ("nan", key, _raw(_order(10)).replace(b'"amount_cents":1234', b'"amount_cents":NaN')),
        (
            "infinity",
            key,
            _raw(_order(11)).replace(b'"amount_cents":1234', b'"amount_cents":-Infinity'),
        ),
        ("duplicate_keys", key, _raw(_order(12))[:-1] + b',"amount_cents":"x"}'),
        ("wrong_type_list", key, _raw([_order(13)])),
        ("wrong_type_amount", key, _raw(_order(14, amount_cents={"cents": 1}))),
        (
            "utc_offset_seconds",
            key,
            _raw(_order(15, occurred_at=now.strftime("%Y-%m-%dT%H:%M:%S+05:30:15"))),
        ),
        ("year_0001", key, _raw(_order(16, occurred_at="0001-01-01T00:00:00+00:00"))),
        ("year_9999", key, _raw(_order(17, occurred_at="9999-12-31T23:59:59+00:00"))),
        ("naive_time", key, _raw(_order(18, occurred_at=now.replace(tzinfo=None).isoformat()))),
        ("email_in_id", key, _raw(_order(19, order_id="someone.else@example.org"))),
        ("phone_in_id", key, _raw(_order(20, order_id="+1-202-555-0143"))),
        ("ip_in_id", key, _raw(_order(21, order_id="198.51.100.23"))),
        ("card_in_id", key, _raw(_order(22, order_id="4111111111111111"))),
        ("decoy_key", b"decoy@example.org", _raw(_order(23))),
        ("no_key", None, _raw(_order(24))),
        ("tombstone", key, None),
        ("empty_value", key, b""),
        ("not_json", key, b"\x00\x01\x02 not json"),
        ("unknown_field_named_like_a_person", key, _raw(_order(25, **{"Hostile Canary": 1}))),
    ]
    out = [HostileRecord("ingest", name, k, v) for name, k, v in records]
    out.append(
        HostileRecord(
            "ingest",
            "odd_headers",
            key,
            _raw(_order(26)),
            (("privmesh-reason", b"forged"), ("x-\u202e\u0000", b"\xff\xfe")),
        )
    )
    return out


def consent_corpus(purpose: str) -> list[HostileRecord]:
    """Hostile consent records for ``shop.consent``."""
    stamp = datetime.now(UTC).isoformat()

    def record(**changes: object) -> bytes:
        body: dict[str, object] = {
            "subject": CANARY_EMAIL,
            "purpose": purpose,
            "status": "granted",
            "timestamp": stamp,
        }
        body.update(changes)
        return _raw(body)

    key = f"{purpose}/{CANARY_EMAIL}".encode()
    records: list[tuple[str, bytes | None, bytes | None]] = [
        ("lone_surrogate_subject", key, record().replace(b"canary@", b"\\ud800canary@")),
        ("nul_subject", key, record(subject="a\x00b@example.org")),
        ("unknown_field_named_like_a_person", key, record(**{"Hostile Canary": "x"})),
        ("phone_field", key, record(phone="+1-202-555-0143")),
        ("unknown_purpose", key, record(purpose="surveillance")),
        ("invalid_status", key, record(status="maybe")),
        ("year_9999", key, record(timestamp="9999-12-31T23:59:59+00:00")),
        ("offset_seconds", key, record(timestamp="2026-12-06T10:00:00+05:30:15")),
        ("nan_timestamp", key, record().replace(f'"{stamp}"'.encode(), b"NaN")),
        ("deep_nesting", key, b'{"subject":' * 5000 + b"1" + b"}" * 5000),
        ("huge_subject", key, record(subject="x" * 1_000_000)),
        ("wrong_type", key, _raw(["subject", CANARY_EMAIL])),
        ("not_json", key, b"\xff\xfe garbage"),
        ("tombstone", key, None),
    ]
    return [HostileRecord("consent", name, k, v) for name, k, v in records]


def erasure_corpus() -> list[HostileRecord]:
    """Hostile erasure requests for ``shop.erasures``."""
    records: list[tuple[str, bytes | None, bytes | None]] = [
        ("tokens_not_a_list", b"e1", _raw({"erasure_id": "e1", "tokens": "k1.abc"})),
        ("token_lone_surrogate", b"e2", b'{"erasure_id":"e2","tokens":["k1.\\ud800"]}'),
        ("raw_email_as_token", b"e3", _raw({"erasure_id": "e3", "tokens": [CANARY_EMAIL]})),
        ("huge_token_list", b"e4", _raw({"erasure_id": "e4", "tokens": ["k1.x"] * 200_000})),
        ("deep_nesting", b"e5", b'{"tokens":' * 5000 + b"1" + b"}" * 5000),
        ("nan", b"e6", b'{"erasure_id":"e6","tokens":NaN}'),
        ("not_json", b"e7", b"\x00garbage"),
        ("tombstone", b"e8", None),
    ]
    return [HostileRecord("erasures", name, k, v) for name, k, v in records]


def corpus(purpose: str = "sales_analytics") -> list[HostileRecord]:
    """The whole corpus, for the shop domain."""
    return ingest_corpus() + consent_corpus(purpose) + erasure_corpus()
