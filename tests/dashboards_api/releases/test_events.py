"""Event-level classes through the release service: grouped counts, means, quantiles."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from dashboards_api.errors import InvalidParameters
from dashboards_api.ledger import SqliteLedger
from dashboards_api.releases import ReleaseService, StoreEvents
from domains.registry import load_contracts
from feature_repo.events import event_schema, event_table
from feature_repo.offline import append_part
from tests.dashboards_api.per_window import raised_policy, window_classes

MINUTE = 1_795_427_040 - 1_795_427_040 % 60  # a closed UTC minute
METHODS = ["card", "paypal", "invoice", "gift_card"]
HISTOGRAM = "shop.orders.payment_methods"
MEAN = "shop.orders.mean_order_cents"
MEDIAN = "shop.orders.median_order_cents"


def make(tmp_path: Path, customers: int = 400, orders_each: int = 7) -> ReleaseService:
    """Orders in MINUTE: each customer orders ``orders_each`` times (k=5 keeps five)."""
    contracts = load_contracts()
    product = contracts["shop"].product("orders")
    assert product is not None
    events = [
        {
            product.subject_field: f"tok-{c:04d}",
            "order_id": f"o-{c}-{i}",
            "payment_method": METHODS[c % 4],
            "amount_cents": 1_000 + 100 * (c % 50),
            "occurred_at": MINUTE + (c * orders_each + i) % 60,
        }
        for c in range(customers)
        for i in range(orders_each)
    ]
    folder = tmp_path / "orders_events"
    append_part(folder, event_table(event_schema(product), events).to_pandas())
    return ReleaseService(
        classes=window_classes(),
        policy=raised_policy(),
        contracts=contracts,
        sources={},
        ledger=SqliteLedger(tmp_path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=lambda: MINUTE + 60 + 75,  # the minute has settled (70 s)
        events={"shop": StoreEvents(lambda _: folder)},
    )


def test_histogram_releases_every_public_category(tmp_path: Path) -> None:
    """Every payment method gets a noisy count near 100 customers x 5 kept orders."""
    service = make(tmp_path)
    answer = service.release(HISTOGRAM)
    assert answer["data_version"] == f"events-1m:{MINUTE}"
    groups = {g["key"]: g for g in answer["groups"]}
    assert set(groups) == set(METHODS)
    for group in groups.values():
        if group["suppressed"]:
            # Noise of about -480 at scale 100 (p ~ 0.004 a group) puts a count under the
            # class's suppression threshold: withheld, with no value and no interval.
            assert group["value"] is None and group["ci95"] is None
            continue
        lo, hi = group["ci95"]
        # k=5 at epsilon 0.05: scale 100, 95% half-width ~300; truth 500 per method.
        assert lo < group["value"] < hi and abs(group["value"] - 500) < 1_500
    assert sum(not g["suppressed"] for g in groups.values()) >= 2
    assert answer["epsilon_charged"] == "0.05"
    again = service.release(HISTOGRAM)
    assert again["reused"] is True and again["groups"] == answer["groups"]


def test_mean_and_median_are_near_the_truth(tmp_path: Path) -> None:
    """The mean and median of bounded order values land near the exact ones (at epsilon 1:
    the shipped 0.05 on 0..100,000 cents is too noisy to test closeness on one minute)."""
    service = make(tmp_path, customers=2_000)
    for class_id in (MEAN, MEDIAN):
        qc = service.query_class(class_id)
        service.classes[class_id] = qc.model_copy(update={"epsilon_per_release": Decimal(1)})
    mean = service.release(MEAN)
    truth = sum(1_000 + 100 * (c % 50) for c in range(2_000)) / 2_000
    assert abs(mean["value"] - truth) < 0.2 * truth
    median = service.release(MEDIAN)
    assert median["value"] in window_classes()[MEDIAN].candidates  # type: ignore[operator]
    assert 2_500 <= median["value"] <= 5_000 and median["ci95"] is None
    assert median["rank_ci95_half_width"] > 0


def test_event_windows_are_minutes(tmp_path: Path) -> None:
    """A window_start not aligned to the class's minute, or not settled yet, is a 422."""
    service = make(tmp_path)
    with pytest.raises(InvalidParameters, match="aligned"):
        service.release(HISTOGRAM, MINUTE + 10)
    with pytest.raises(InvalidParameters, match="not closed"):
        service.release(HISTOGRAM, MINUTE + 60)
    assert service.due(service.query_class(HISTOGRAM)) == MINUTE


def test_suppression_withholds_small_groups(tmp_path: Path) -> None:
    """With few customers, groups whose noisy count is under the threshold are withheld."""
    service = make(tmp_path, customers=4, orders_each=1)
    qc = service.query_class(HISTOGRAM)
    service.classes[HISTOGRAM] = qc.model_copy(update={"suppress_below": 10_000})
    answer = service.release(HISTOGRAM)
    assert all(g["suppressed"] and g["value"] is None for g in answer["groups"])
    assert answer["suppressed"] is True
    spent = service.budget(service.query_class(HISTOGRAM))["epsilon_spent"]
    assert Decimal(spent) == Decimal("0.05")
    assert datetime.fromisoformat(answer["window"]["start"]) == datetime.fromtimestamp(
        MINUTE, tz=UTC
    )
