"""The budget planner: costs and half-widths per resolution, minimal suggestions, volumes
from released values only, the plan endpoint and the registry's accuracy refusal.

Everything here is deterministic (exact quantiles, no noise is drawn): no false failures.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import pytest
from fastapi.testclient import TestClient

from dashboards_api.bounds import BoundsAdvice, Candidate
from dashboards_api.continual import ci95_half_width
from dashboards_api.errors import InvalidQueryClasses
from dashboards_api.hierarchy import expected_half_width
from dashboards_api.ledger import LedgerEntry, SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.planner import (
    bound_options,
    mechanism_comparison,
    plan,
    rho_for,
    structures_of,
    volume_from_releases,
)
from dashboards_api.policy import GovernancePolicy, check_at_start
from dashboards_api.query_classes import (
    ProductBudget,
    QueryClass,
    load_query_classes,
)
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import ApiSettings
from domains.contract import DataProduct
from domains.registry import load_contracts
from tests.dashboards_api.test_classes import KEYS
from tests.fakes import FakeWindowSource

HALF = Decimal("0.5")
NOW = 1_795_427_055.0
DAILY = {
    "id": "shop.orders.hourly_orders",
    "title": "Orders, every resolution",
    "domain": "shop",
    "product": "orders",
    "aggregate": "count_records",
    "release": "daily",
    "privacy_unit": "subject_day",
    "epsilon_per_release": "0.5",
    "budget_per_day": "0.5",
    "accuracy": {"relative": 0.05, "resolution": "1h"},
}


def orders() -> DataProduct:
    """The shop's orders contract (10 orders per customer per day, 0..20000 cents)."""
    product = load_contracts()["shop"].product("orders")
    assert product is not None
    return product


def daily(**changes: Any) -> QueryClass:
    """The daily order count class above, with ``changes``."""
    return QueryClass.model_validate({**DAILY, **changes})


def entry(class_id: str, resolution: str, value: int, start: str, end: str, n: int = 1) -> Any:
    """A released daily answer as the ledger stores it."""
    answer = {"resolution": resolution, "value": value, "span": {"start": start, "end": end}}
    return LedgerEntry(n, class_id, "2026-11-23", "v", 0, 0, answer, end, "shop.orders")


def test_structures_are_the_release_paths() -> None:
    """A count pays one structure on the stream windows; a distinct count two, half the
    epsilon each: hour-long windows answering 1h (Δ = min(24, windows)), the day stream
    answering today (Δ = 1)."""
    classes = load_query_classes()
    count = structures_of(classes["shop.orders.order_count"], orders(), 10)
    assert [(s.window_seconds, s.epsilon, s.sensitivity) for s in count] == [(10, HALF, 10)]
    assert list(count[0].answers) == ["window", "1m", "1h", "today", "24h"]
    distinct = structures_of(classes["shop.orders.distinct_customers"], orders(), 10)
    assert [(s.window_seconds, s.epsilon, s.sensitivity, s.answers) for s in distinct] == [
        (3600, Decimal("0.25"), 10, {"1h": "window"}),
        (10, Decimal("0.25"), 1, {"today": "today"}),
    ]
    with pytest.raises(ValueError, match="daily mean costs nothing"):
        structures_of(classes["shop.orders.mean_order_cents"], orders(), 10)


def test_unknown_volume_gives_absolute_widths_only() -> None:
    """Without a released value or a given volume, the plan has the hierarchy's half-widths,
    no relative ones, and does not judge the accuracy."""
    p = plan(daily(), orders(), None, window_seconds=10)
    assert [(r.resolution, r.half_width) for r in p.rows] == [
        (r, expected_half_width(r, 10, HALF, 10)) for r in ("window", "1m", "1h", "today", "24h")
    ]
    assert p.rows[0].half_width == 288 and p.rows[3].half_width == 1364
    assert all(r.relative is None and r.meets is None for r in p.rows)
    assert p.meets is None and p.suggestion is None and p.volume_source == "unknown"
    assert p.to_dict()["epsilon_per_day"] == "0.5"


def test_met_accuracy_needs_no_suggestion() -> None:
    """At 200,000 orders a day an hour holds 8,333 and ±179 is 2.1%: within 5%."""
    p = plan(daily(), orders(), (200_000.0, "given"), window_seconds=10)
    hour = next(r for r in p.rows if r.resolution == "1h")
    assert hour.typical_value == pytest.approx(200_000 / 24)
    assert hour.relative == pytest.approx(179 / (200_000 / 24))
    assert hour.meets is True and p.meets is True and p.suggestion is None


def test_suggestion_is_the_least_that_meets() -> None:
    """At 20,000 orders a day (833 an hour) a 20% promise at 1h is not met at epsilon 0.5;
    the suggestion names the finest coarser resolution that meets it (today), the smallest
    epsilon that does (one micro-epsilon less does not), whether the product has room for
    it, and the largest contribution bound that meets it (one more does not)."""
    qc = daily(accuracy={"relative": 0.2, "resolution": "1h"})
    p = plan(
        qc,
        orders(),
        (20_000.0, "given"),
        window_seconds=10,
        product_total_micro=2_000_000,
        allocated_micro=1_500_000,
    )
    assert p.meets is False and p.suggestion is not None
    s = p.suggestion
    target = 0.2 * 20_000 / 24
    assert s.coarser == "today"
    assert s.epsilon is not None
    assert expected_half_width("1h", 10, s.epsilon, 10) <= target
    assert expected_half_width("1h", 10, s.epsilon - Decimal("0.000001"), 10) > target
    assert s.epsilon_fits is (s.epsilon <= Decimal("0.5"))
    assert p.product_room == Decimal("0.5")
    assert s.sensitivity is not None and 1 <= s.sensitivity < 10
    assert expected_half_width("1h", 10, HALF, s.sensitivity) <= target
    assert expected_half_width("1h", 10, HALF, s.sensitivity + 1) > target
    assert s.max_records_per_period == s.sensitivity  # a count's Δ is its records bound
    assert "today" in s.text and str(s.epsilon) in s.text


def test_bound_options_set_each_candidates_bias_against_its_noise() -> None:
    """Each candidate bound of a bound advice keeps its released dropped share and gets the
    class's half-widths with that bound: the contract's own bound gives the plan's widths,
    and a count's widths scale with the bound (Δ = the record bound)."""
    candidates = [
        Candidate(2, 0.2, 0.01, "q0.9"),
        Candidate(5, 0.05, 0.01, "q0.99"),
        Candidate(10, 0.0, 0.01, "contract"),
    ]
    advice = BoundsAdvice(
        "shop.orders",
        "2026-12-01",
        Decimal(1),
        1,
        False,
        {"0.9": 2, "0.95": 3, "0.99": 5},
        {"0.9": 10.0, "0.95": 10.0, "0.99": 10.0},
        40_000,
        {"0.9": True, "0.95": True, "0.99": True},
        candidates,
        20,
        [],
        {},
        {},
    )
    options = bound_options(advice, daily(), orders(), 10)
    assert [(o.bound, o.dropped_share, o.source) for o in options] == [
        (2, 0.2, "q0.9"),
        (5, 0.05, "q0.99"),
        (10, 0.0, "contract"),
    ]
    widths = {
        r.resolution: r.half_width for r in plan(daily(), orders(), None, window_seconds=10).rows
    }
    assert options[-1].half_widths == widths
    for option in options:
        for resolution, width in option.half_widths.items():
            expected = expected_half_width(resolution, 10, HALF, option.bound)
            assert width == expected


def test_volume_comes_from_released_values_of_the_same_statistic() -> None:
    """The newest released 24h value wins over an hourly one (times 24); values of another
    statistic and 'today' values over less than an hour are not used; nothing released:
    None."""
    classes = load_query_classes()
    qc = daily()
    day = ("2026-11-22T12:00:00+00:00", "2026-11-23T12:00:00+00:00")
    hour = ("2026-11-23T11:00:00+00:00", "2026-11-23T12:00:00+00:00")
    short = ("2026-11-23T00:00:00+00:00", "2026-11-23T00:30:00+00:00")
    count, revenue = "shop.orders.order_count", "shop.orders.revenue_cents"
    hourly = entry(count, "1h", 900, *hour, n=3)
    found = volume_from_releases(qc, [hourly, entry(count, "24h", 20_000, *day, n=2)], classes)
    assert found is not None and found[0] == 20_000.0 and "24h" in found[1]
    found = volume_from_releases(qc, [entry(revenue, "24h", 9, *day), hourly], classes)
    assert found is not None and found[0] == 900 * 24
    assert volume_from_releases(qc, [entry(count, "today", 5, *short)], classes) is None
    assert volume_from_releases(qc, [], classes) is None


def test_comparison_matches_the_mechanisms() -> None:
    """The comparison's hierarchy widths are the planner's, its independent hourly releases
    get epsilon / 24 each, and (measured) the hierarchy is narrower than the binary tree at
    every resolution, on average and at worst, and than its version 1 at every resolution
    but the window."""
    rows = {r["resolution"]: r for r in mechanism_comparison(10, HALF, 10)}
    one_hour = expected_half_width("1h", 10, HALF, 10)
    assert rows["1h"]["hierarchy"] == (one_hour, one_hour)
    assert rows["1h"]["hierarchy_v1"] == (240, 240)
    assert rows["today"]["hierarchy"][1] == expected_half_width("today", 10, HALF, 10)
    assert rows["1h"]["independent"][0] == ci95_half_width(24 * 10 / 0.5, 1)
    for row in rows.values():
        assert row["hierarchy"][0] < row["tree"][0] and row["hierarchy"][1] < row["tree"][1]
    for resolution in ("1m", "1h", "today", "24h"):  # version 2 narrower than version 1
        assert rows[resolution]["hierarchy"] < rows[resolution]["hierarchy_v1"]


def test_rho_converts_back_to_the_daily_epsilon() -> None:
    """OpenDP's zCDP -> (epsilon, delta) conversion of rho_for(2, 1e-6) gives epsilon 2."""
    rho = rho_for(2.0, 1e-6)
    gaussian = dp.m.make_gaussian(
        dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), (1 / (2 * rho)) ** 0.5
    )
    epsilon = dp.c.make_zCDP_to_approxDP(gaussian).map(1).epsilon(1e-6)
    assert epsilon == pytest.approx(2.0, rel=1e-6)
    assert 0.08 < rho < 0.1


def make(path: Path, total: str = "300") -> tuple[TestClient, ReleaseService]:
    """An API with the shipped classes, a file ledger and one fake window."""
    service = ReleaseService(
        classes=load_query_classes(),
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(rows={})},
        ledger=SqliteLedger(path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=lambda: NOW,
        product_budgets={"shop.orders": ProductBudget(budget_per_day=Decimal(total))},
    )
    client = TestClient(create_app(service, KEYS, ApiSettings(registry_sync_seconds=0)))
    return client, service


def release_day_volume(service: ReleaseService, value: int) -> None:
    """A released 24h order count in the ledger (what the dashboard already showed)."""
    answer = {
        "resolution": "24h",
        "value": value,
        "span": {"start": "2026-11-22T12:00:00+00:00", "end": "2026-11-23T12:00:00+00:00"},
    }
    service.ledger.commit_release(
        "shop.orders.order_count",
        "2026-11-23",
        "day:x:24h:1",
        0,
        500_000,
        answer,
        product="shop.orders",
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_plan_endpoint_for_owners_and_governance(tmp_path: Path) -> None:
    """The owner of the class's domain and governance get the plan; another domain's owner
    and consumers are refused; nothing is spent."""
    client, service = make(tmp_path)
    for key in ("shop-owner", "gov"):
        response = client.post("/v1/classes/plan", json=DAILY, headers=auth(key))
        assert response.status_code == 200, response.text
        body = response.json()
        assert [r["resolution"] for r in body["rows"]] == ["window", "1m", "1h", "today", "24h"]
        assert body["volume_source"] == "unknown" and body["meets"] is None
    given = client.post(
        "/v1/classes/plan?volume_per_day=2000", json=DAILY, headers=auth("shop-owner")
    ).json()
    assert given["meets"] is False and given["suggestion"]["epsilon"] is not None
    for key in ("web-owner", "reader"):
        assert client.post("/v1/classes/plan", json=DAILY, headers=auth(key)).status_code == 403
    for bad in ({**DAILY, "product": "nothing"}, {**DAILY, "release": "per_window"}):
        del bad["accuracy"]
        refused = client.post("/v1/classes/plan", json=bad, headers=auth("shop-owner"))
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_parameters"
    assert service.ledger.entries() == []


def test_registry_refuses_an_unreachable_accuracy(tmp_path: Path) -> None:
    """With 2,000 orders a day released, a class promising 5% at 1h for epsilon 0.5 is
    refused (422 accuracy_unreachable) with the planner's suggestion (an epsilon of about
    19.5, which the product's total of 2, 1.7 allocated, has no room for); the same class is
    accepted when 200,000 orders a day were released, and when nothing was released yet."""
    for volume, status in ((2_000, 422), (200_000, 200), (None, 200)):
        where = tmp_path / str(volume)
        where.mkdir()
        client, service = make(where)
        if volume is not None:
            release_day_volume(service, volume)
        response = client.put(f"/v1/classes/{DAILY['id']}", json=DAILY, headers=auth("shop-owner"))
        assert response.status_code == status, response.text
        if status == 422:
            body = response.json()
            assert body["code"] == "accuracy_unreachable"
            suggestion = body["suggestion"]
            assert suggestion["coarser"] is None and suggestion["epsilon_fits"] is False
            assert 19 < float(suggestion["epsilon"]) < 20
            assert body["plan"]["product_room"] == "0.3"  # this service declares no reserve
            assert body["plan"]["volume_source"].startswith(
                "released 24h value of shop.orders.order_count"
            )


def test_the_registry_keeps_the_planning_reserve_out_of_every_allocation(tmp_path: Path) -> None:
    """shop.orders' classes are allocated 1.7 of its 2 with 0.3 reserved: a further class,
    however small, is refused (422 policy_limit_exceeded at product_reserve_per_day, nothing
    stored); replacing a class with a smaller budget is accepted; the plan counts the reserve
    as spoken for (no room)."""
    client, service = make(tmp_path)
    service.product_budgets["shop.orders"] = ProductBudget(
        budget_per_day=Decimal(2), reserve_per_day=Decimal("0.3")
    )
    extra = {**DAILY, "epsilon_per_release": "0.01", "budget_per_day": "0.01"}
    del extra["accuracy"]
    refused = client.put(f"/v1/classes/{DAILY['id']}", json=extra, headers=auth("shop-owner"))
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["code"] == "policy_limit_exceeded"
    assert (body["limit"], body["limit_value"]) == ("product_reserve_per_day", "1.7")
    assert DAILY["id"] not in service.classes
    smaller = service.classes["shop.orders.payment_methods"].model_dump(mode="json")
    smaller.update(epsilon_per_release="0.05", budget_per_day="0.05")
    accepted = client.put(
        "/v1/classes/shop.orders.payment_methods", json=smaller, headers=auth("shop-owner")
    )
    assert accepted.status_code == 200, accepted.text
    planned = client.post("/v1/classes/plan", json=DAILY, headers=auth("shop-owner")).json()
    assert planned["product_room"] == "0.05"  # 2 - 0.3 reserved - 1.65 allocated


def test_start_up_refuses_classes_allocated_into_the_reserve() -> None:
    """The API refuses to start when a product's classes are allocated more than its total
    less its declared reserve (the shipped 1.7 fits 2 - 0.3, not 2 - 0.4); a reserve above
    the total is refused when the file is read."""
    classes = load_query_classes()
    policy = GovernancePolicy()
    totals, products = {"shop.orders": 2_000_000}, ["shop.orders"]
    check_at_start(policy, classes, totals, products, {"shop.orders": 300_000})
    with pytest.raises(InvalidQueryClasses, match="reserved for planning"):
        check_at_start(policy, classes, totals, products, {"shop.orders": 400_000})
    with pytest.raises(InvalidQueryClasses, match="reserved for planning"):  # a policy default
        check_at_start(
            GovernancePolicy(default_product_reserve_per_day=Decimal("0.4")),
            classes,
            totals,
            products,
        )
    with pytest.raises(ValueError, match="reserve_per_day 3 exceeds budget_per_day 2"):
        ProductBudget(budget_per_day=Decimal(2), reserve_per_day=Decimal(3))
