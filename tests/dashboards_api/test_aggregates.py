"""Counts of records and bounded sums: sensitivity from the contract and the window's bound."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path

import pytest

from dashboards_api.errors import InvalidQueryClasses, NoDataYet
from dashboards_api.ledger import SqliteLedger
from dashboards_api.query_classes import QueryClass, load_query_classes
from dashboards_api.releases import ReleaseService
from dashboards_api.sensitivity import check_against_contracts, sensitivity
from domains.registry import load_contracts
from tests.dashboards_api.per_window import raised_policy, window_classes
from tests.fakes import FakeWindowSource

NOW = 1_795_427_055.0
WINDOW = 1_795_427_040


def service(tmp_path: Path, row: dict[str, object]) -> ReleaseService:
    return ReleaseService(
        classes=window_classes(),
        policy=raised_policy(),
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(rows={WINDOW: row})},
        ledger=SqliteLedger(tmp_path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=1,
        clock=lambda: NOW,
    )


def window_row(bound: int | None = 20) -> dict[str, object]:
    return {
        "distinct_subjects": 40,
        "events": 55,
        "amount_cents_sum": 1_234_567.0,
        "amount_cents_sum_cap": 100_658.0,  # the contract's per-day cap, applied
        "contribution_bound": bound,
    }


def shop_orders():  # type: ignore[no-untyped-def]
    return load_contracts()["shop"].products[0]


def make_class(**changes: object) -> QueryClass:
    base = window_classes()["shop.orders.revenue_cents"].model_dump()
    return QueryClass.model_validate({**base, **changes})


def test_sensitivities_follow_contract_bounds_and_window_bound() -> None:
    """One subject moves a distinct count by 1, a record count by k, a sum by k * max|bound|,
    at most the measure's per-day cap (a window is part of the subject's day)."""
    classes = window_classes()
    product = shop_orders()
    assert sensitivity(classes["shop.orders.distinct_customers"], product, None) == 1
    assert sensitivity(classes["shop.orders.order_count"], product, 20) == 20
    cap = product.sum_cap_of("amount_cents")
    assert cap is not None and cap < 20 * 100_000
    assert sensitivity(classes["shop.orders.revenue_cents"], product, 20) == cap
    assert sensitivity(classes["shop.orders.revenue_cents"], product, 1) == 100_000
    assert sensitivity(classes["shop.orders.order_count"], product, 3) == 3


def test_bound_missing_from_the_window_refuses_instead_of_guessing() -> None:
    """Without the processor's bound a count of records is not released (503, no spend)."""
    with pytest.raises(NoDataYet, match="contribution bound"):
        sensitivity(window_classes()["shop.orders.order_count"], shop_orders(), None)


def test_release_of_each_aggregate_uses_its_value_and_scale(tmp_path: Path) -> None:
    """Each aggregate releases its own statistic, with the sensitivity it was noised for."""
    svc = service(tmp_path, window_row())
    distinct = svc.release("shop.orders.distinct_customers")
    orders = svc.release("shop.orders.order_count")
    revenue = svc.release("shop.orders.revenue_cents")
    assert (distinct["sensitivity"], orders["sensitivity"]) == (1, 20)
    # 20 x 100000 per window, above shop.orders' per-day cap of a customer's revenue
    assert revenue["sensitivity"] == 100_658 and revenue["contribution_bound"] == 20
    # 95% intervals of Laplace noise of scale b = sensitivity / epsilon are +-b ln(20)
    for released in (orders, revenue):
        low, high = released["ci95"]
        scale = released["sensitivity"] / 1.0
        assert (high - low) / 2 == pytest.approx(scale * math.log(20), rel=0.02)
    assert svc.budget(svc.classes["shop.orders.revenue_cents"])["epsilon_spent"] == "1"


def test_sum_needs_a_measure_and_counts_take_none() -> None:
    """A bounded_sum without a measure, or a count with one, is refused at load."""
    with pytest.raises(ValueError, match="needs a 'measure'"):
        make_class(measure=None)
    with pytest.raises(ValueError, match=r"takes no .measure."):
        make_class(aggregate="count_records")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"measure": "payment_method"}, "not a bounded numeric field"),
        ({"measure": "no_such_field"}, "not a bounded numeric field"),
        ({"product": "refunds"}, "no data product"),
    ],
)
def test_classes_must_fit_their_contracts(changes: dict[str, object], message: str) -> None:
    """A class over an unknown product or an unbounded measure stops the API at start-up."""
    bad = make_class(**changes)
    with pytest.raises(InvalidQueryClasses, match=message):
        check_against_contracts({bad.id: bad}, load_contracts())


def test_epsilon_is_exact_decimal() -> None:
    """Declared costs are decimals (no float drift in the ledger)."""
    assert load_query_classes()["shop.orders.order_count"].epsilon_per_release == Decimal("0.5")
    assert window_classes()["shop.orders.order_count"].epsilon_per_release == Decimal("1.0")
