"""Every demo product's generator: good events pass, bad events are rejected, no raw identifier;
the people pool is large, unique and heavy-tailed, and the truncation estimate is right."""

from __future__ import annotations

import ipaddress
import itertools
import json
import statistics
from collections import Counter
from datetime import date

import numpy as np
import pytest

from domains.registry import load_contracts
from infra.settings import GeneratorSettings
from streams.errors import StreamError
from streams.generator import (
    DEFAULT_ACTIVITY_SIGMA,
    PRODUCT_ACTIVITY,
    PRODUCT_SHARES,
    SUBJECTS,
    EventGenerator,
    events_per_day,
    expected_truncation,
    has_generator,
    make_people,
    mixed,
    product_weights,
)
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


def test_people_are_unique_reproducible_and_valid() -> None:
    """A large pool has unique e-mails and cookies, public IPv4s, adult birth dates, and the
    same seed gives the same people (another seed other people)."""
    people = make_people(20_000, 3)
    assert len({p.email for p in people}) == len(people)
    assert len({p.cookie for p in people}) == len(people)
    assert all(ipaddress.IPv4Address(p.ip).is_global for p in people)
    assert all(date(1935, 12, 31) < p.birth_date < date(2008, 1, 1) for p in people)
    assert make_people(500, 3) == make_people(500, 3)
    assert {p.email for p in make_people(500, 4)}.isdisjoint(p.email for p in people[:500])


def test_activity_is_heavy_tailed_and_events_follow_it() -> None:
    """Activity weights are log-normal (median 1, the top 1% of people about a fifth of all
    activity at sigma 1.5), and a product's events are drawn in proportion to its weights."""
    people = make_people(20_000, 5)
    weights = sorted((p.activity for p in people), reverse=True)
    assert 0.9 < statistics.median(weights) < 1.1
    top = weights[: len(weights) // 100]
    assert 0.12 < sum(top) / sum(weights) < 0.35
    assert all(p.activity == 1.0 for p in make_people(50, 5, activity_sigma=0))
    gen = EventGenerator("shop", load_contracts()["shop"].products[0], people, 0.0, 9)
    own = gen.weights
    cut = np.quantile(own, 0.99)
    heavy = {id(p) for p, w in zip(people, own, strict=True) if w >= cut}
    drawn = [gen.person() for _ in range(40_000)]
    share = sum(id(p) in heavy for p in drawn) / len(drawn)
    expected = float(own[own >= cut].sum() / own.sum())
    # Binomial(40000, ~0.1): sd 0.0015; 0.015 is over 9 sd (false failure < 1e-12).
    assert abs(share - expected) < 0.015


def test_each_product_has_its_own_correlated_activity() -> None:
    """Orders and page views get their own weights per person: reproducible, correlated with
    the shared weight but not equal to it, page views heavier-tailed than orders; a product
    without a profile, or a pool without spread, uses the shared weights."""
    people = make_people(20_000, 5)
    shared = np.log([p.activity for p in people])
    orders = product_weights(people, "shop", "orders", 3)
    views = product_weights(people, "web", "page_views", 3)
    assert np.array_equal(orders, product_weights(people, "shop", "orders", 3))
    assert not np.array_equal(orders, product_weights(people, "shop", "orders", 4))
    profiles = (PRODUCT_ACTIVITY[("shop", "orders")], PRODUCT_ACTIVITY[("web", "page_views")])
    for weights, spec in zip((orders, views), profiles, strict=True):
        logs = np.log(weights)
        # sd of a correlation estimate at n = 20,000 is < 0.01: 0.05 is over 5 sd.
        assert abs(np.corrcoef(shared, logs)[0, 1] - spec.correlation) < 0.05
        assert abs(logs.std() / shared.std() * DEFAULT_ACTIVITY_SIGMA - spec.sigma) < 0.05
    assert np.log(views).std() > np.log(orders).std()
    tickets = product_weights(people, "support", "tickets", 3)
    assert np.array_equal(tickets, [p.activity for p in people])
    flat = make_people(50, 5, activity_sigma=0)
    assert np.all(product_weights(flat, "shop", "orders", 3) == 1.0)


def test_orders_per_person_day_have_a_realistic_shape() -> None:
    """At the demo defaults most people order 0 or 1 times a day and a few order several:
    at least 80% of the person-days expect at most 1 order, the top 1% more than 3."""
    settings = GeneratorSettings()
    people = make_people(settings.people, settings.seed, settings.activity_sigma)
    gen = EventGenerator("shop", load_contracts()["shop"].products[0], people, 0.0, 1)
    per_day = events_per_day(settings.rate, "shop", "orders", bad_ratio=settings.bad_ratio)
    lam = per_day * gen.weights / gen.weights.sum()
    assert 0.3 < per_day / len(people) < 1.5
    assert np.mean(lam <= 1) > 0.8
    assert np.quantile(lam, 0.99) > 3


def test_products_get_their_share_of_the_traffic() -> None:
    """The mix draws each product in proportion to its share (orders rarer than page views)."""
    contracts = load_contracts()
    generators = [
        (f"{d}.{p.name}", EventGenerator(d, p, PEOPLE, 0.0, 1))
        for d, c in sorted(contracts.items())
        for p in c.products
    ]
    tags = Counter(tag for tag, _ in itertools.islice(mixed(generators, 3), 50_000))
    total = sum(PRODUCT_SHARES.values())
    for (domain, product), share in PRODUCT_SHARES.items():
        seen = tags[f"{domain}.{product}"] / 50_000
        # Binomial sd <= 0.0023 at 50,000 draws; 0.012 is over 5 sd (false failure < 1e-6).
        assert abs(seen - share / total) < 0.012, (domain, product, seen)
    assert tags["shop.orders"] < tags["web.page_views"] / 10
    equal = Counter(t for t, _ in itertools.islice(mixed(generators, 3, shares={}), 6_000))
    assert min(equal.values()) > 800  # no share anywhere: every product equally often


def test_events_per_day_splits_the_rate_by_share() -> None:
    """A product's daily events are the rate's share of it, net of malformed events."""
    orders = events_per_day(200, "shop", "orders", bad_ratio=0.02)
    share = PRODUCT_SHARES[("shop", "orders")] / sum(PRODUCT_SHARES.values())
    assert orders == pytest.approx(200 * 86_400 * 0.98 * share)
    assert events_per_day(10, "shop", "orders", running=[("shop", "orders")]) == 864_000
    assert events_per_day(10, "shop", "orders", running=[("web", "page_views")]) == 0


def test_expected_truncation_matches_a_simulated_day() -> None:
    """The expected share of events a per-day bound drops agrees with one simulated day of
    draws by weight, and a bound nobody reaches drops nothing."""
    people = make_people(5_000, 8)
    gen = EventGenerator("shop", load_contracts()["shop"].products[0], people, 0.0, 4)
    day = Counter(id(gen.person()) for _ in range(60_000))  # 12 events per person on average
    dropped = sum(max(0, n - 10) for n in day.values()) / 60_000
    bias = expected_truncation(people, 60_000, 10, 10, weights=gen.weights)
    assert bias.bound == 10
    # The day's dropped share has sd about 0.004 here (dominated by the heaviest people).
    assert abs(bias.events_dropped_share - dropped) < 0.03
    assert 0.2 < bias.events_dropped_share < 0.8
    assert bias.median_person_events < 12 < bias.top_percent_person_events
    none = expected_truncation(make_people(100, 1, activity_sigma=0), 100, 50)
    assert none.events_dropped_share < 1e-12 and none.people_truncated_share < 1e-12
    assert expected_truncation(people, 60_000, 10, 3).bound == 3
    shared = expected_truncation(people, 60_000, 10, 10)
    assert shared.events_dropped_share != bias.events_dropped_share  # the weights matter


@pytest.mark.parametrize(("domain", "product"), PRODUCTS, ids=lambda v: getattr(v, "name", v))
def test_subject_of_a_person_is_their_events_privacy_unit(domain: str, product: object) -> None:
    """SUBJECTS reads the privacy-unit value the product's builder writes into its events."""
    name: str = product.name  # type: ignore[attr-defined]
    unit: str = product.privacy_unit  # type: ignore[attr-defined]
    for person in PEOPLE[:5]:
        gen = EventGenerator(domain, product, [person], 0.0, 2)  # type: ignore[arg-type]
        assert str(gen.good()[unit]) == SUBJECTS[(domain, name)](person)


def test_default_pool_is_large_and_heavy_tailed() -> None:
    """The demo generator's defaults model at least 100,000 people with the module's tail."""
    settings = GeneratorSettings()
    assert settings.people >= 100_000
    assert settings.activity_sigma == DEFAULT_ACTIVITY_SIGMA
    assert settings.shares() is None
    custom = GeneratorSettings(product_shares={"shop.orders": 1.0})
    assert custom.shares() == {("shop", "orders"): 1.0}
    with pytest.raises(ValueError, match=r"domain\.product"):
        GeneratorSettings(product_shares={"orders": 1.0})
