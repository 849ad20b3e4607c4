"""Values checked, not only names: personal values in non-personal text, declared formats,
the event-time window and the ingest key (issue 18, item 3)."""

from __future__ import annotations

import json
import random
import timeit
from datetime import UTC, datetime
from typing import Any

import pytest

from domains.contract import DomainContract, FieldType
from domains.registry import get_contract
from streams.generator import BUILDERS, make_people
from streams.keys import derive_domain_key
from streams.pipeline import build_pipelines, partition_for
from streams.pseudonymise import Tokeniser, normalise
from streams.settings import StreamSettings
from streams.transform import (
    INVALID_FORMAT,
    INVALID_VALUE,
    OUT_OF_WINDOW,
    PERSONAL_VALUE,
    WRONG_KEY,
    Accepted,
    ProductTransform,
    Rejected,
)

NOW = 1_795_427_000.0
SHOP = get_contract("shop")
TOKENS = Tokeniser(derive_domain_key(b"v" * 32, "shop", 1), 1)
PERSON = make_people(1, 5)[0]


def order(**changes: object) -> dict[str, Any]:
    """A valid shop order at NOW - 5 with ``changes``."""
    event: dict[str, Any] = BUILDERS[("shop", "orders")](
        PERSON, random.Random(1), 1, datetime.fromtimestamp(NOW - 5, tz=UTC).isoformat()
    )
    event.update(changes)
    return event


def free_text_contract() -> DomainContract:
    """The shop contract with ``order_id`` left as free text (no format declared)."""
    raw = SHOP.model_dump(mode="json")
    for spec in raw["products"][0]["fields"]:
        if spec["name"] == "order_id":
            spec.pop("format", None)
    return DomainContract.model_validate(raw)


def outcome(event: dict[str, Any], contract: DomainContract = SHOP) -> Accepted | Rejected:
    """The transform's answer for ``event`` arriving at NOW."""
    transform = ProductTransform(contract.products[0], TOKENS)
    return transform.apply(json.dumps(event).encode(), NOW)


def reason(event: dict[str, Any], contract: DomainContract = SHOP) -> str | None:
    """The rejection reason for ``event`` (None when accepted)."""
    result = outcome(event, contract)
    return result.reason if isinstance(result, Rejected) else None


@pytest.mark.parametrize(
    "value",
    [
        "bob@example.org",
        "order of bob@example.org",
        "+44 20 7946 0958",
        "(212) 555-0199",
        "198.51.100.23",
        "2001:db8::23",
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
        "123-45-6789",
        "AB 12 34 56 C",
    ],
)
def test_personal_values_in_non_personal_text_are_dead_lettered(value: str) -> None:
    """A free-text non_personal field holding an e-mail, phone, IP, card, IBAN or national
    id is refused as personal_value, with or without a declared format; the detail names
    the field and the kind, never the value."""
    for contract in (SHOP, free_text_contract()):
        result = outcome(order(order_id=value), contract)
        assert isinstance(result, Rejected) and result.reason == PERSONAL_VALUE
        assert value not in result.detail and "order_id" in result.detail


@pytest.mark.parametrize("value", ["ord-7f3a9c", "o-000000123", "hx-000017", "ord-1"])
def test_ordinary_ids_pass_the_value_check(value: str) -> None:
    """Ordinary ids (digits included) are not mistaken for personal values."""
    assert reason(order(order_id=value), free_text_contract()) is None
    assert reason(order(order_id=value)) is None


def test_declared_formats_are_enforced() -> None:
    """A regex, uuid or enum format refuses a value that does not fit (invalid_format)."""
    assert reason(order(order_id="ORD_7F3A9C")) == INVALID_FORMAT
    raw = SHOP.model_dump(mode="json")
    fields = raw["products"][0]["fields"]
    ids = next(f for f in fields if f["name"] == "order_id")
    ids["format"] = {"kind": "uuid"}
    uuid_contract = DomainContract.model_validate(raw)
    assert reason(order(order_id="123e4567-e89b-12d3-a456-426614174000"), uuid_contract) is None
    assert reason(order(order_id="123e4567-e89b-12d3-a456"), uuid_contract) == INVALID_FORMAT
    ids["format"] = {"kind": "enum", "values": ["a-1", "b-2"]}
    enum_contract = DomainContract.model_validate(raw)
    assert reason(order(order_id="a-1"), enum_contract) is None
    assert reason(order(order_id="c-3"), enum_contract) == INVALID_FORMAT


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        ("0001-01-01T00:00:00+00:00", OUT_OF_WINDOW),
        ("0001-01-01T00:30:00+01:00", INVALID_VALUE),
        ("9999-12-31T23:59:59+00:00", OUT_OF_WINDOW),
        ("9999-12-31T23:59:59-05:00", INVALID_VALUE),
        (datetime.fromtimestamp(NOW + 301, tz=UTC).isoformat(), OUT_OF_WINDOW),
        (datetime.fromtimestamp(NOW - 91 * 86_400, tz=UTC).isoformat(), OUT_OF_WINDOW),
        ("2026-11-23T14:43:20+05:30:15", INVALID_VALUE),
        ("2026-11-23T14:43:20+05:30:00.5", INVALID_VALUE),
        (datetime.fromtimestamp(NOW - 60, tz=UTC).isoformat(), None),
        (datetime.fromtimestamp(NOW + 200, tz=UTC).isoformat(), None),
        ("2026-11-23T14:43:20+05:30", None),
    ],
)
def test_event_time_must_lie_in_the_contract_window(occurred_at: str, expected: str | None) -> None:
    """Event times outside the contract's window around arrival (shop: 90 days back, 300 s
    ahead), outside the years 1-9999 in UTC, or with a UTC offset of seconds are refused."""
    event = order(occurred_at=occurred_at)
    assert reason(event) == expected


def test_lone_surrogates_and_nul_are_refused_at_validation() -> None:
    """An escaped lone surrogate or a NUL in any text field is invalid_value."""
    for field in ("order_id", "customer_email", "customer_name", "zip_code"):
        for bad in ("x\ud800", "x\x00y"):
            assert reason(order(**{field: bad})) == INVALID_VALUE, field


def test_ingest_key_must_equal_the_normalised_privacy_unit() -> None:
    """Only a record keyed by the normalised privacy-unit value is accepted: a decoy key or
    no key on the right partition is wrong_key."""
    [orders] = build_pipelines(SHOP, TOKENS, StreamSettings())
    raw = json.dumps(order()).encode()
    key = normalise(PERSON.email, FieldType.EMAIL).encode()
    right = partition_for(key, 4)
    for bad in (None, b"", b"decoy", PERSON.email.upper().encode()):
        result = orders.route(raw, right, 4, bad, NOW)
        assert isinstance(result, Rejected) and result.reason == WRONG_KEY
        assert PERSON.email not in result.detail
    assert isinstance(orders.route(raw, right, 4, key, NOW), Accepted)


def test_the_value_check_is_cheap_on_the_hot_path() -> None:
    """Scanning an ordinary id costs well under the ~25 us a whole event takes."""
    from domains.pii_patterns import embedded_kind

    runs = 20_000
    per_call = timeit.timeit(lambda: embedded_kind("o-000000123"), number=runs) / runs
    assert per_call < 20e-6
