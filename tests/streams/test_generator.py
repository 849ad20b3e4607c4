"""Every demo product's generator: good events pass, bad events are rejected, no raw identifier."""

from __future__ import annotations

import json

import pytest

from domains.registry import load_contracts
from streams.errors import StreamError
from streams.generator import EventGenerator, has_generator, make_people
from streams.keys import derive_domain_key
from streams.pseudonymise import Tokeniser
from streams.transform import Accepted, ProductTransform, Rejected

PEOPLE = make_people(40, 11)
PRODUCTS = [
    (domain, product)
    for domain, contract in sorted(load_contracts().items())
    for product in contract.products
]


def transform_of(domain: str, product_name: str) -> ProductTransform:
    product = load_contracts()[domain].product(product_name)
    assert product is not None
    return ProductTransform(product, Tokeniser(derive_domain_key(b"k" * 32, domain, 1), 1))


@pytest.mark.parametrize(("domain", "product"), PRODUCTS, ids=lambda v: getattr(v, "name", v))
def test_every_demo_product_has_a_generator(domain: str, product: object) -> None:
    assert has_generator(domain, product.name)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("domain", "product"), PRODUCTS, ids=lambda v: getattr(v, "name", v))
def test_good_events_pass_and_carry_no_raw_identifier(domain: str, product: object) -> None:
    name: str = product.name  # type: ignore[attr-defined]
    gen = EventGenerator(domain, product, PEOPLE, 0.0, 5)  # type: ignore[arg-type]
    transform = transform_of(domain, name)
    for _ in range(200):
        key, value = gen.next_event()
        outcome = transform.apply(value)
        assert isinstance(outcome, Accepted), outcome
        assert key is not None
        text = json.dumps(outcome.event)
        for person in PEOPLE:
            for raw in (person.name, person.email, person.phone, person.cookie):
                assert raw not in text
            assert f'"{person.ip}"' not in text
            assert person.birth_date.isoformat() not in text


@pytest.mark.parametrize(("domain", "product"), PRODUCTS, ids=lambda v: getattr(v, "name", v))
def test_bad_events_are_rejected_with_every_reason(domain: str, product: object) -> None:
    name: str = product.name  # type: ignore[attr-defined]
    gen = EventGenerator(domain, product, PEOPLE, 1.0, 5)  # type: ignore[arg-type]
    transform = transform_of(domain, name)
    reasons = set()
    for _ in range(400):
        key, value = gen.next_event()
        outcome = transform.apply(value)
        assert isinstance(outcome, Rejected), value[:200]
        assert key is None
        reasons.add(outcome.reason)
    assert {"malformed_json", "missing_field", "unknown_field", "too_large"} <= reasons
    assert len(reasons) >= 6


def test_same_person_has_unrelated_tokens_in_two_domains() -> None:
    person = PEOPLE[0]
    shop = transform_of("shop", "orders")
    support = transform_of("support", "tickets")
    shop_gen = EventGenerator("shop", shop.product, [person], 0.0, 1)
    support_gen = EventGenerator("support", support.product, [person], 0.0, 1)
    a = shop.apply(json.dumps(shop_gen.good()).encode())
    b = support.apply(json.dumps(support_gen.good()).encode())
    assert isinstance(a, Accepted) and isinstance(b, Accepted)
    assert a.subject != b.subject
    assert a.subject[3:13] != b.subject[3:13]


def test_unknown_product_is_a_clear_error() -> None:
    product = load_contracts()["shop"].products[0]
    with pytest.raises(StreamError, match=r"no synthetic events for web\.orders"):
        EventGenerator("web", product, PEOPLE)
