"""Sensitivities of window and daily classes: the per-day sum cap lowers every sum's bound."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dashboards_api.query_classes import QueryClass
from dashboards_api.sensitivity import EVENTS, NEW_HOUR, NEW_PERIOD, SUM, daily_sensitivities
from dashboards_api.sensitivity import sensitivity as window_sensitivity
from domains.contract import DataProduct, DomainContract
from domains.registry import get_contract

SHOP = get_contract("shop").model_dump(mode="json")


def orders(cap: float | None = None, measure_type: str = "int") -> DataProduct:
    """shop.orders with ``amount_cents`` (clamped to 0..20000) capped at ``cap`` a day."""
    raw: dict[str, Any] = copy.deepcopy(SHOP)
    product = raw["products"][0]
    product["contribution"]["max_sum_per_period"] = {} if cap is None else {"amount_cents": cap}
    next(f for f in product["fields"] if f["name"] == "amount_cents")["type"] = measure_type
    return DomainContract.model_validate(raw).products[0]


def daily(aggregate: str, **extra: Any) -> QueryClass:
    """A daily shop.orders class of ``aggregate``."""
    return QueryClass.model_validate(
        {
            "id": f"shop.orders.t_{aggregate}",
            "title": "t",
            "domain": "shop",
            "product": "orders",
            "aggregate": aggregate,
            "release": "daily",
            "privacy_unit": "subject_day",
            "epsilon_per_release": "0.5",
            "budget_per_day": "0.5",
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("cap", "expected"),
    [(None, 10 * 20_000), (50_000, 50_000), (10**9, 10 * 20_000), (1, 1)],
)
def test_a_daily_sum_is_bounded_by_the_cap_or_records_times_clamp(
    cap: float | None, expected: int
) -> None:
    """A daily bounded_sum's Δ is min(max_records x max|clamp|, cap); counts and distinct
    counts do not depend on the cap."""
    product = orders(cap)
    assert daily_sensitivities(daily("bounded_sum", measure="amount_cents"), product) == {
        SUM: expected
    }
    assert daily_sensitivities(daily("count_records"), product) == {EVENTS: 10}
    assert daily_sensitivities(daily("count_distinct_subjects"), product) == {
        NEW_HOUR: 10,
        NEW_PERIOD: 1,
    }


def test_a_float_measures_daily_sum_adds_one_per_window_for_rounding() -> None:
    """A float measure's window sums are rounded once per window: Δ gains max_windows."""
    product = orders(1234.5, measure_type="float")
    assert daily_sensitivities(daily("bounded_sum", measure="amount_cents"), product) == {
        SUM: 1235 + 10
    }


def test_a_window_sum_is_bounded_by_the_day_cap_too() -> None:
    """A per-window sum of a capped measure moves by at most the day cap (a window is part
    of the day); the per-window bound times the field's bounds when that is smaller."""
    qc = QueryClass.model_validate(
        {
            "id": "shop.orders.t_window",
            "title": "t",
            "domain": "shop",
            "product": "orders",
            "aggregate": "bounded_sum",
            "measure": "amount_cents",
            "epsilon_per_release": "0.5",
            "budget_per_day": "5",
        }
    )
    assert window_sensitivity(qc, orders(50_000), 20) == 50_000
    assert window_sensitivity(qc, orders(None), 20) == 20 * 100_000
    assert window_sensitivity(qc, orders(10**9), 1) == 100_000


def test_the_shipped_revenue_class_uses_the_shipped_cap() -> None:
    """shop.orders.revenue_cents' daily Δ is the contract's cap, below 10 x 20000."""
    product = get_contract("shop").products[0]
    cap = product.sum_cap_of("amount_cents")
    assert cap is not None
    revenue = daily("bounded_sum", measure="amount_cents")
    assert daily_sensitivities(revenue, product) == {SUM: int(cap)} and cap < 200_000
