"""The catalog's PII lint: the classifier on clear cases, the catalog findings, and the
product-topic scan against events that leak (in memory and through a real broker)."""

from __future__ import annotations

import json

import pytest

from catalog.graph import Catalog
from catalog.pii_lint import check_events, classify, lint_catalog, name_words, scan_product_topics
from domains.registry import get_product


@pytest.mark.parametrize(
    ("name", "samples", "personal"),
    [
        ("customerEmail", [], True),
        ("firstname", [], True),
        ("zipcode", [], True),
        ("user_id", [], True),
        ("device_id", [], True),
        ("email_template", ["welcome_v2"], False),
        ("user_count", ["1290"], False),
        ("product_name", [], False),
        ("order_total", ["19.99"], False),
        ("notes", ["call me on +44 7700 900456"], True),
        ("col_17", ["203.0.113.88"], True),
        ("value", ["GB29NWBK60161331926819"], True),
        ("ref", ["078-05-1120"], True),
        ("timestamp", ["1700000000"], False),
        ("order_date", ["2026-11-23"], False),
        ("data", ["1984-03-09"], True),
    ],
)
def test_classify(name: str, samples: list[str], personal: bool) -> None:
    """Names with person words or subject identifiers, and personal-looking values, are
    personal; things, counts, epoch seconds and recent dates are not."""
    assert classify(name, samples).personal is personal, classify(name, samples)


def test_name_words_split_every_convention() -> None:
    """snake, kebab, camel case and glued compounds become the same words."""
    assert name_words("customerEmailAddress") == ["customer", "email", "address"]
    assert name_words("date-of-birth") == ["date", "of", "birth"]
    assert name_words("emailaddress") == ["email", "address"]
    assert name_words("zipcode") == ["zip", "code"]


def test_demo_catalog_has_no_errors(catalog: Catalog) -> None:
    """The demo contracts keep every direct identifier off the shared topics; any
    warning is about a non-personal field, and names it."""
    findings = lint_catalog(catalog)
    assert [f for f in findings if f.severity == "error"] == []
    assert all(f.entity.startswith("field:") for f in findings)


def test_leaks_in_product_events_are_found_without_echoing_values() -> None:
    """An extra field, a raw e-mail where a token belongs, an e-mail in a non-personal
    field: each reported once, by topic and field, and no finding repeats the value."""
    _, product = get_product("shop", "orders")
    token = "k1." + "a" * 26
    clean = {"order_id": "ord-1", "customer_email_token": token, "payment_method": "card"}
    leaked = [
        clean,
        {**clean, "customer_name": "Ana Ruiz"},
        {**clean, "customer_email_token": "ana@example.org"},
        {**clean, "order_id": "bob@example.org"},
        {**clean, "customer_name": "Li Wei"},
    ]
    findings = check_events("shop", product, "shop.orders.v1", leaked)
    codes = sorted((f.code, f.entity) for f in findings)
    assert codes == [
        ("direct_identifier_in_clear", "topic:shop.orders.v1#customer_email_token"),
        ("personal_value_in_product_topic", "topic:shop.orders.v1#order_id"),
        ("unexpected_field_in_product_topic", "topic:shop.orders.v1#customer_name"),
    ]
    text = json.dumps([f.as_dict() for f in findings])
    assert "ana@example.org" not in text and "Ana Ruiz" not in text
    assert check_events("shop", product, "shop.orders.v1", [clean]) == []


@pytest.mark.integration
def test_scan_reads_the_product_topic_from_the_broker(broker: str) -> None:
    """A raw e-mail published to a real product topic is found by the scan."""
    from infra.broker import ensure_topics
    from streams.producing import RawProducer
    from streams.settings import KafkaSettings

    ensure_topics(broker, ["shop.orders.v1"], 1, 1)
    event = {"order_id": "ord-9", "customer_email_token": "ana@example.org"}
    with RawProducer(KafkaSettings(bootstrap_servers=broker), "test-leak") as producer:
        producer.send("shop.orders.v1", json.dumps(event).encode(), key=b"k")
    findings = scan_product_topics(50, broker)
    leaks = [f for f in findings if f.entity.startswith("topic:shop.orders.v1#")]
    assert [(f.code, f.entity) for f in leaks] == [
        ("direct_identifier_in_clear", "topic:shop.orders.v1#customer_email_token")
    ]
