"""Consent records, the consent index and the pipeline's consent check (no broker)."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domains.contract import ConsentMode, FieldType
from domains.registry import get_contract
from streams import consent as codes
from streams.consent import (
    Change,
    ConsentIndex,
    ConsentRecord,
    ConsentStatus,
    MalformedConsent,
    consent_value,
    parse_consent,
)
from streams.generator import BUILDERS, consent_records, make_people
from streams.keys import derive_domain_key
from streams.pipeline import build_pipelines, partition_for
from streams.pseudonymise import Tokeniser, normalise
from streams.settings import StreamSettings
from streams.transform import Accepted

SHOP, WEB = get_contract("shop"), get_contract("web")
PURPOSES = frozenset({"sales_analytics"})
NOW = 1_795_427_000.0


def record(subject: str, status: str = "granted", at: float = NOW, **extra: object) -> bytes:
    payload = {"subject": subject, "purpose": "sales_analytics", "status": status}
    payload |= {"timestamp": datetime.fromtimestamp(at, tz=UTC).isoformat(), **extra}
    return json.dumps(payload).encode()


def test_a_valid_record_parses() -> None:
    parsed = parse_consent(record("Ada@Example.org"), PURPOSES, now=NOW)
    assert parsed == ConsentRecord("Ada@Example.org", "sales_analytics", ConsentStatus.GRANTED, NOW)
    assert "Ada" not in repr(parsed)  # the subject never reaches a log through repr
    epoch = json.dumps(
        {"subject": "x", "purpose": "sales_analytics", "status": "withdrawn", "timestamp": NOW}
    )
    assert parse_consent(epoch.encode(), PURPOSES, now=NOW).status is ConsentStatus.WITHDRAWN


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, codes.MALFORMED_JSON),
        (b'{"subject": "ada@example.org"', codes.MALFORMED_JSON),
        (b"[1, 2]", codes.NOT_AN_OBJECT),
        (b"x" * 5000, codes.TOO_LARGE),
        (record("ada@example.org", note="hi"), codes.UNKNOWN_FIELD),
        (
            json.dumps({"subject": "ada@example.org", "status": "granted"}).encode(),
            codes.MISSING_FIELD,
        ),
        (record(""), codes.WRONG_TYPE),
        (record("a" * 400), codes.WRONG_TYPE),
        (record("ada@example.org", status="maybe"), codes.INVALID_STATUS),
        (
            record("ada@example.org").replace(b"sales_analytics", b"ad_targeting"),
            codes.UNKNOWN_PURPOSE,
        ),
        (record("ada@example.org", at=NOW + 3600), codes.FUTURE_TIMESTAMP),
        (record("ada@example.org").replace(b"+00:00", b""), codes.INVALID_TIMESTAMP),
    ],
)
def test_malformed_records_are_refused_without_echoing_the_subject(
    raw: bytes | None, reason: str
) -> None:
    with pytest.raises(MalformedConsent) as caught:
        parse_consent(raw, PURPOSES, now=NOW)
    assert caught.value.reason == reason
    assert "ada@example.org" not in caught.value.detail


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_malformed(raw: bytes) -> None:
    try:
        parse_consent(raw, PURPOSES, now=NOW)
    except MalformedConsent as exc:
        assert exc.reason


def decision(subject: str, status: ConsentStatus, at: float) -> ConsentRecord:
    return ConsentRecord(subject, "sales_analytics", status, at)


def test_the_latest_decision_wins_and_repeats_change_nothing() -> None:
    index = ConsentIndex(SHOP, b"k" * 32)
    key = normalise("Ada@Example.org", FieldType.EMAIL).encode()
    orders = SHOP.products[0]
    assert orders.consent is ConsentMode.OPT_OUT
    assert index.allows(orders, key) is None  # opt-out: no record, processed
    assert index.apply(decision("ada@example.org", ConsentStatus.GRANTED, NOW)) is Change.GRANTED
    assert index.apply(decision("ada@example.org", ConsentStatus.GRANTED, NOW)) is Change.NONE
    withdrawn = decision(" ADA@example.org ", ConsentStatus.WITHDRAWN, NOW + 5)  # normalised
    assert index.apply(withdrawn) is Change.WITHDRAWN
    assert index.allows(orders, key) == codes.CONSENT_WITHDRAWN
    # an older grant delivered late, or re-read, does not undo the withdrawal
    assert index.apply(decision("ada@example.org", ConsentStatus.GRANTED, NOW + 1)) is Change.NONE
    # at the same time, a withdrawal beats a grant
    assert index.apply(decision("ada@example.org", ConsentStatus.GRANTED, NOW + 5)) is Change.NONE
    assert index.apply(withdrawn) is Change.NONE
    assert (
        index.apply(decision("ada@example.org", ConsentStatus.GRANTED, NOW + 9)) is Change.GRANTED
    )
    assert index.allows(orders, key) is None
    assert index.counts() == {"sales_analytics": {"granted": 1, "withdrawn": 0}}


@given(st.permutations(range(6)))
def test_delivery_order_does_not_change_the_outcome(order: list[int]) -> None:
    statuses = [ConsentStatus.GRANTED, ConsentStatus.WITHDRAWN] * 3
    decisions = [decision("ada@example.org", statuses[i], NOW + i) for i in range(6)]
    index = ConsentIndex(SHOP, b"k" * 32)
    for i in order:
        index.apply(decisions[i])
    key = b"ada@example.org"
    assert index.allows(SHOP.products[0], key) == codes.CONSENT_WITHDRAWN  # the last (NOW+5)


def test_opt_in_needs_a_grant_for_the_products_purpose() -> None:
    views = WEB.products[0]
    assert views.consent is ConsentMode.OPT_IN
    index = ConsentIndex(WEB, b"k" * 32)
    assert index.allows(views, b"ck_1") == codes.CONSENT_MISSING
    index.apply(ConsentRecord("ck_1", views.purpose, ConsentStatus.GRANTED, NOW))
    assert index.allows(views, b"ck_1") is None
    assert index.allows(views, b"ck_2") == codes.CONSENT_MISSING


def test_index_keys_are_digests_under_the_domain_key() -> None:
    one, other = ConsentIndex(SHOP, b"a" * 32), ConsentIndex(SHOP, b"b" * 32)
    assert one.digest(b"ada@example.org") != other.digest(b"ada@example.org")
    assert len(one.digest(b"ada@example.org")) == codes.DIGEST_BYTES
    with pytest.raises(ValueError, match="32 bytes"):
        ConsentIndex(SHOP, b"short")


def test_pipeline_drops_events_without_consent_and_counts_them() -> None:
    tokens = Tokeniser(derive_domain_key(b"m" * 32, "web", 1), 1)
    index = ConsentIndex(WEB, b"k" * 32)
    [views] = build_pipelines(WEB, tokens, StreamSettings(), index)
    people = make_people(3, 5)
    build = BUILDERS[("web", "page_views")]
    at = datetime.fromtimestamp(time.time(), tz=UTC).isoformat()
    events = [build(p, random.Random(i), i, at) for i, p in enumerate(people)]
    index.apply(
        ConsentRecord(str(events[0]["visitor_id"]), "product_analytics", ConsentStatus.GRANTED, NOW)
    )
    index.apply(
        ConsentRecord(
            str(events[2]["visitor_id"]), "product_analytics", ConsentStatus.WITHDRAWN, NOW
        )
    )
    outcomes = []
    for event in events:
        key = str(event["visitor_id"]).encode()
        raw = json.dumps(event).encode()
        outcomes.append(views.route(raw, partition_for(key, 4), 4, key))
    assert isinstance(outcomes[0], Accepted) and outcomes[1] is None and outcomes[2] is None
    assert views.counters["accepted"] == 1 and views.counters["consent_dropped"] == 2
    assert views.counters[f"consent_dropped.{codes.CONSENT_MISSING}"] == 1
    assert views.counters[f"consent_dropped.{codes.CONSENT_WITHDRAWN}"] == 1
    assert views.buffered_events == 1  # dropped events are not kept for the offline store
    assert sum(a.open_windows for a in views.aggregators.values()) == 1


def test_synthetic_consent_follows_each_products_mode() -> None:
    people = make_people(200, 3)
    web = [json.loads(v) for _, v in consent_records(WEB, people, 1, 0.9, 0.0, now=NOW)]
    assert 150 < len(web) < 200 and {r["status"] for r in web} == {"granted"}
    shop = [json.loads(v) for _, v in consent_records(SHOP, people, 1, 0.9, 0.1, now=NOW)]
    assert {r["status"] for r in shop} == {"withdrawn"}  # opt-out: objections only
    for value in (consent_value("x", "sales_analytics", ConsentStatus.GRANTED, NOW),):
        assert parse_consent(value, PURPOSES, now=NOW).timestamp == NOW
