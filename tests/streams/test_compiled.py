"""The compiled accept path and the reference transform agree on every record (issue 22).

``ProductTransform.apply`` tries the generated function first; these tests feed both paths
the same random and hostile records (arbitrary bytes, lone surrogates, NUL, huge integers,
NaN and infinities, odd time zones, wrong types, missing and unknown fields) and require the
same outcome: the same accepted event (values and key order) or the same rejection.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.contract import DataProduct, DomainContract
from domains.registry import load_contracts
from streams.compiled import accept_source
from streams.generator import BUILDERS, has_generator, make_people
from streams.keys import derive_domain_key
from streams.pseudonymise import Tokeniser
from streams.transform import Accepted, ProductTransform, Rejected, _parse_timestamp

NOW = 1_795_427_000.0
TOKENS = Tokeniser(derive_domain_key(b"d" * 32, "diff", 1), 1)
PEOPLE = make_people(20, 7)

HOSTILE: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63,
    -(2**63) - 1,
    10**30,
    -(10**30),
    10**400,
    1.5,
    -0.0,
    1e308,
    1e-320,
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "é",
    "😀",
    "card",
    "paypal",
    "bob@example.org",
    "BOB@Example.ORG ",
    "@example.org",
    "bob@localhost",
    "198.51.100.23",
    "198.51.100.023",
    "256.1.1.1",
    "1984-03-09",
    "1984-02-30",
    "0001-01-01",
    "9999-12-31",
    "2026-11-25T10:00:00+00:00",
    "2026-11-25T10:00:00Z",
    "2026-11-25T10:00:00",
    "2026-11-25T10:00:00+05:45",
    "2026-11-25T10:00:00+14:00",
    "2026-11-25T10:00:00-12:00",
    "2026-11-25T10:00:00+00:00:30",
    "2026-11-25T10:00:00.5+01:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2026-11-25 10:00:00+00:00",
    "2026-W48-3T10:00:00+00:00",
    "ord-7f3a9c",
    "ord-7F3A9C",
    "0b7c1bde-2f0c-4c5c-9f55-0123456789ab",
    "x" * 65,
    "x" * 300,
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    [],
    [1],
    {},
    {"a": 1},
    NOW,
    NOW - 10,
    NOW + 10_000,
    NOW - 10**9,
    -5,
    32_503_680_000,
]
RAW_HOSTILE = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"123456789012345678901234567890",
    b"1" * 4301,
    b'"\\ud800"',
    b'"\\udc00\\ud800"',
    b'"\\u0000"',
    b'"\xff"',
    b'"\xed\xa0\x80"',
    b'"\xc0\xaf"',
    b"00",
    b"1.",
    b"[[[[[[[[[[]]]]]]]]]]",
    b"true",
    b"null",
]


def _contracts() -> list[DomainContract]:
    return list(load_contracts().values())


def _variant() -> DomainContract:
    """A contract using what the demo products do not: large events, floats, unbounded and
    optional numbers, uuid/enum formats, a kept date and time, truncated time, a /20 prefix."""
    raw = next(c for c in _contracts() if c.domain == "shop").model_dump(mode="json")
    raw["products"][0]["max_event_bytes"] = 16_384  # room for integers of 4,301 digits
    fields = raw["products"][0]["fields"]
    for spec in fields:
        if spec["name"] == "ip_address":
            spec["generalise"] = {"method": "ipv4_prefix", "bits": 20}
        if spec["name"] == "zip_code":
            spec["required"] = False
    extra: list[dict[str, Any]] = [
        {"name": "score", "type": "float", "tag": "sensitive", "bounds": {"min": -5, "max": 5}},
        {
            "name": "ratio",
            "type": "float",
            "tag": "non_personal",
            "required": False,
            "protection": "drop",
        },
        {
            "name": "count",
            "type": "int",
            "tag": "non_personal",
            "required": False,
            "protection": "drop",
        },
        {
            "name": "ref",
            "type": "string",
            "tag": "non_personal",
            "required": False,
            "format": {"kind": "uuid"},
        },
        {
            "name": "tier",
            "type": "string",
            "tag": "non_personal",
            "required": False,
            "format": {"kind": "enum", "values": ["gold", "silver"]},
        },
        {"name": "note", "type": "string", "tag": "non_personal", "required": False},
        {"name": "ship_date", "type": "date", "tag": "non_personal", "required": False},
        {
            "name": "paid_at",
            "type": "timestamp",
            "tag": "quasi_identifier",
            "required": False,
            "protection": "generalise",
            "generalise": {"method": "truncate_time", "seconds": 900},
        },
        {"name": "seen_at", "type": "timestamp", "tag": "non_personal", "required": False},
    ]
    fields += [{**spec, "description": f"Variant field {spec['name']}."} for spec in extra]
    return DomainContract.model_validate(raw)


def _products() -> list[tuple[DataProduct, str]]:
    out = [(p, c.domain) for c in _contracts() for p in c.products]
    out.append((_variant().products[0], "variant"))
    return out


def _base(product: DataProduct, domain: str, rng: random.Random) -> dict[str, Any]:
    at = datetime.fromtimestamp(NOW - rng.uniform(0, 3600), tz=UTC).isoformat()
    builder_domain = "shop" if domain == "variant" else domain
    if has_generator(builder_domain, product.name):
        event = BUILDERS[(builder_domain, product.name)](rng.choice(PEOPLE), rng, 1, at)
    else:
        event = {product.event_time: at}
    if domain == "variant":
        event.update(
            score=rng.uniform(-5, 5),
            ratio=rng.choice([1, 2.5, -3e10]),
            count=rng.choice([0, 7, -(10**20)]),
            ref="0b7c1bde-2f0c-4c5c-9f55-0123456789ab",
            tier=rng.choice(["gold", "silver"]),
            note=rng.choice(["fast delivery", "gift"]),
            ship_date="2026-11-30",
            paid_at=at,
            seen_at=rng.choice([at, NOW - 60]),
        )
    return event


def _mutate(event: dict[str, Any], product: DataProduct, rng: random.Random) -> bytes:
    """One random change (or none) to a valid event, as bytes."""
    names = [f.name for f in product.fields]
    choice = rng.randrange(10)
    if choice == 0:
        return json.dumps(event).encode()
    if choice in {1, 2, 3}:
        event[rng.choice(names)] = rng.choice(HOSTILE)
    elif choice == 4:
        event.pop(rng.choice(names), None)
    elif choice == 5:
        event[rng.choice(["extra", "bob@example.org", "\ud800"])] = 1
    elif choice == 6:
        name = rng.choice(names)
        text = json.dumps({**event, name: "@@@"})
        return text.replace('"@@@"', rng.choice(RAW_HOSTILE).decode("latin-1")).encode("latin-1")
    elif choice == 7:
        raw = bytearray(json.dumps(event).encode())
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    elif choice == 8:
        whole = json.dumps(event).encode()
        return whole[: rng.randrange(len(whole))]
    else:
        event[rng.choice(names)] = rng.choice(HOSTILE)
        event[rng.choice(names)] = rng.choice(HOSTILE)
    return json.dumps(event, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def _same(transform: ProductTransform, raw: bytes, now: float | None) -> Accepted | Rejected:
    """Both paths' outcome, asserted equal; returns it."""
    try:
        expected: Accepted | Rejected | BaseException = transform.apply_reference(raw, now)
    except Exception as exc:
        expected = exc
    try:
        got: Accepted | Rejected | BaseException = transform.apply(raw, now)
    except Exception as exc:
        got = exc
    if isinstance(expected, BaseException):  # both raise alike, but neither should
        assert type(got) is type(expected), raw
        raise AssertionError(f"the reference raised {type(expected).__name__}")
    assert got == expected, raw
    assert not isinstance(got, BaseException)
    if isinstance(got, Accepted):
        assert isinstance(expected, Accepted)
        assert list(got.event) == list(expected.event), raw
        assert got.unit_key == expected.unit_key
    return got


@pytest.mark.parametrize(("product", "domain"), _products(), ids=lambda v: getattr(v, "name", v))
def test_random_and_hostile_records_get_the_reference_outcome(
    product: DataProduct, domain: str
) -> None:
    """On 1,500 seeded mutations of valid events, apply() equals the reference exactly."""
    transform = ProductTransform(product, TOKENS)
    rng = random.Random(f"{domain}.{product.name}")
    accepted = rejected = 0
    for i in range(1500):
        raw = _mutate(_base(product, domain, rng), product, rng)
        outcome = _same(transform, raw, None if i % 5 == 0 else NOW)
        accepted += isinstance(outcome, Accepted)
        rejected += isinstance(outcome, Rejected)
    assert accepted > 100
    assert rejected > 100


@pytest.mark.parametrize(("product", "domain"), _products(), ids=lambda v: getattr(v, "name", v))
def test_every_hostile_value_in_every_field_gets_the_reference_outcome(
    product: DataProduct, domain: str
) -> None:
    """Each hostile value, decoded or raw, in each field of a valid event: both paths agree."""
    transform = ProductTransform(product, TOKENS)
    base = _base(product, domain, random.Random(11))
    for spec in product.fields:
        for value in HOSTILE:
            raw = json.dumps({**base, spec.name: value}).encode("utf-8", "surrogatepass")
            _same(transform, raw, NOW)
        for literal in RAW_HOSTILE:
            text = json.dumps({**base, spec.name: "@@@"}).encode()
            _same(transform, text.replace(b'"@@@"', literal), NOW)


def test_the_compiled_path_accepts_valid_events() -> None:
    """Valid events are accepted by the generated function itself, not only by the fallback."""
    for product, domain in _products():
        transform = ProductTransform(product, TOKENS)
        rng = random.Random(3)
        raw = json.dumps(_base(product, domain, rng)).encode()
        fast = transform._fast(raw, NOW)
        assert isinstance(fast, Accepted), product.name
        assert fast == transform.apply_reference(raw, NOW)


def test_generated_source_holds_no_secret() -> None:
    """The generated source names the contract's fields only, never key material."""
    product = _variant().products[0]
    source, namespace = accept_source(product, TOKENS, Accepted, _parse_timestamp)
    assert "def accept(raw, now):" in source
    assert "redacted" in repr(namespace["tokens"])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_get_the_reference_outcome(raw: bytes) -> None:
    """Arbitrary bytes: both paths agree."""
    _same(ProductTransform(_variant().products[0], TOKENS), raw, NOW)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.dictionaries(
        st.sampled_from(["order_id", "customer_email", "amount_cents", "score", "occurred_at"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=40),
            st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        ),
    )
)
def test_arbitrary_values_get_the_reference_outcome(changes: dict[str, Any]) -> None:
    """Arbitrary JSON values (surrogates, NaN, huge ints, any zone) on valid events: agree."""
    product = _variant().products[0]
    event = {**_base(product, "variant", random.Random(5)), **changes}
    raw = json.dumps(event).encode("utf-8", "surrogatepass")
    _same(ProductTransform(product, TOKENS), raw, NOW)
