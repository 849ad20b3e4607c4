"""Contract-driven validation and pseudonymisation of raw events (no broker)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.registry import get_product
from streams.generator import EventGenerator, make_people
from streams.keys import derive_domain_key
from streams.pseudonymise import Tokeniser
from streams.transform import Accepted, ProductTransform, Rejected
from streams.windows import WindowAggregator

_, PRODUCT = get_product("shop", "orders")
KEY = derive_domain_key(b"m" * 32, "shop", 1)
TRANSFORM = ProductTransform(PRODUCT, Tokeniser(KEY, 1))
PEOPLE = make_people(50, 3)
GOOD = EventGenerator("shop", PRODUCT, PEOPLE, 0.0, 3).good(1_795_427_000.0)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)


def test_valid_event_is_pseudonymised() -> None:
    """A valid order keeps no direct identifier and generalises every quasi-identifier."""
    outcome = TRANSFORM.apply(json.dumps(GOOD).encode())
    assert isinstance(outcome, Accepted)
    event = outcome.event
    assert "customer_name" not in event and "customer_email" not in event
    assert event["customer_email_token"] == outcome.subject and outcome.subject.startswith("k1.")
    assert event["ip_address"].endswith(".0/24") and len(event["zip_code"]) == 3
    assert "-" in event["birth_date"] and event["amount_cents"] == GOOD["amount_cents"]


def test_same_identifier_unrelated_tokens_across_domains() -> None:
    """The same e-mail gets different tokens under two domains' keys, stable within one."""
    other = Tokeniser(derive_domain_key(b"m" * 32, "payments", 1), 1)
    mine = Tokeniser(KEY, 1)
    assert mine.token("a@b.co") == mine.token(" A@B.co ".lower())
    assert mine.token("a@b.co") != other.token("a@b.co")


def test_rejection_detail_never_echoes_the_value() -> None:
    """A rejected event's detail names the field, not the raw value."""
    bad = {**GOOD, "customer_email": "not-an-email-secret"}
    outcome = TRANSFORM.apply(json.dumps(bad).encode())
    assert isinstance(outcome, Rejected) and outcome.reason == "invalid_value"
    assert "customer_email" in outcome.detail and "secret" not in outcome.detail


@settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_get_exactly_one_outcome(raw: bytes) -> None:
    """Any byte string is either accepted or rejected with a reason; apply never raises."""
    outcome = TRANSFORM.apply(raw)
    assert isinstance(outcome, Accepted | Rejected)


@settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.dictionaries(st.sampled_from([f.name for f in PRODUCT.fields] + ["extra"]), json_values))
def test_arbitrary_objects_get_exactly_one_outcome(payload: dict[str, object]) -> None:
    """Any JSON object over the contract's field names gets one outcome, never an exception."""
    outcome = TRANSFORM.apply(json.dumps(payload).encode())
    assert isinstance(outcome, Accepted | Rejected)
    if isinstance(outcome, Rejected):
        assert outcome.reason and outcome.detail


@settings(max_examples=50, derandomize=True)
@given(st.integers(0, len(PEOPLE) - 1))
def test_no_raw_identifier_in_product_event(index: int) -> None:
    """No raw name, e-mail, IP or birth date of a generated person is in its product event."""
    gen = EventGenerator("shop", PRODUCT, [PEOPLE[index]], 0.0, index)
    text = json.dumps(TRANSFORM.apply(json.dumps(gen.good()).encode()).event)  # type: ignore[union-attr]
    person = PEOPLE[index]
    for raw in (person.name, person.email, person.birth_date.isoformat(), f'"{person.ip}"'):
        assert raw not in text


def test_window_contribution_bounds() -> None:
    """One subject adds at most 1 to a window's distinct count and at most the cap of events."""
    agg = WindowAggregator(10, 2, 3, {"amount_cents": PRODUCT.field("amount_cents").bounds})  # type: ignore[dict-item]
    for _ in range(10):
        agg.add("a", 1005.0, {"amount_cents": 10**9})
    agg.add("b", 1006.0, {"amount_cents": 5})
    assert agg.close_ready(1011.0) == []  # grace not over
    agg.add("d", 1012.0, {})  # the event-time watermark passes the window's end + grace
    agg.add("d", 1012.0, {})
    (stats,) = agg.close_ready(1012.0)
    assert stats.distinct_subjects == 2 and stats.events == 4
    assert stats.sums["amount_cents"] == 3 * 100_000 + 5
    assert agg.capped_events == 7
    assert agg.add("c", 1001.0, {}) is False and agg.late_events == 1
