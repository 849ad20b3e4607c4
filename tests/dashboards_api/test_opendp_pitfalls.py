"""The OpenDP pitfalls the API is built to avoid (docs: ENVIRONMENT.md, "OpenDP 0.16").

* float budget drift: OpenDP's float accounting refuses 5 queries at 0.1 against 0.5;
* one over-budget request closes an OpenDP filter (``Context``) for good;
* ``Context`` re-runs a binary search for the noise scale on every release (1-2 s);
* and the privacy map of the mechanism actually used must match the declared epsilon.

Through the HTTP app where a status is part of the claim, with a sqlite ledger, the real
OpenDP mechanism and a fake window source; the service clock is frozen and moved by hand.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import pytest
from fastapi.testclient import TestClient

from dashboards_api import mechanisms
from dashboards_api.budget import to_micro
from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.mechanisms import DiscreteLaplaceCount, discrete_laplace_count
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases import ReleaseService
from domains.registry import load_contracts
from tests.dashboards_api.per_window import raised_policy
from tests.fakes import FakeWindowSource

NOW = 1_795_427_055.0  # 2026-11-23T09:44:15Z, 5 s into a 10 s window
LAST_CLOSED = 1_795_427_040
DAY = 86_400
PERIOD = "2026-11-23"


class Clock:
    """A service clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def query_class(
    class_id: str, epsilon: str, budget: str, domain: str = "shop", product: str = "orders"
) -> QueryClass:
    """A distinct-subject count class with the given cost and daily budget."""
    return QueryClass.model_validate(
        {
            "id": class_id,
            "title": f"{class_id} (pitfall test)",
            "domain": domain,
            "product": product,
            "aggregate": "count_distinct_subjects",
            "epsilon_per_release": epsilon,
            "budget_per_day": budget,
        }
    )


def windows_around(*days: int, count: int = 20) -> dict[int, int]:
    """Data for the ``count`` newest closed windows at NOW plus each of ``days`` days."""
    return {LAST_CLOSED + d * DAY - 10 * i: 100 + i for d in days for i in range(count)}


def app(
    tmp_path: Path, classes: list[QueryClass], clock: Clock | None = None
) -> tuple[TestClient, SqliteLedger, ReleaseService]:
    """The HTTP app over shop data for today and tomorrow, and no web data at all."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    service = ReleaseService(
        classes={qc.id: qc for qc in classes},
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(windows_around(0, 1)), "web": FakeWindowSource({})},
        ledger=ledger,
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=1,
        clock=clock or Clock(NOW),
        policy=raised_policy(),
    )
    return TestClient(create_app(service)), ledger, service


def get(client: TestClient, class_id: str, window: int | None = None) -> Any:
    """GET a release (of ``window``, or of the last closed window)."""
    params = {} if window is None else {"window_start": window}
    return client.get(f"/v1/queries/{class_id}", params=params)


@pytest.mark.parametrize(
    ("epsilon", "budget", "fits"),
    [
        ("0.1", "0.5", 5),  # the documented OpenDP refusal
        ("0.1", "0.3", 3),  # float: 0.1 + 0.1 + 0.1 = 0.30000000000000004 > 0.3
        ("0.7", "2.1", 3),  # float: 0.7 * 3 summed = 2.0999999999999996 < 2.1
    ],
)
def test_decimal_costs_fill_the_budget_exactly(
    tmp_path: Path, epsilon: str, budget: str, fits: int
) -> None:
    """``fits`` releases at ``epsilon`` spend a budget of ``fits * epsilon`` exactly, whatever
    floats would make of the sum; the next fresh window is refused with a 429 problem."""
    client, ledger, _ = app(tmp_path, [query_class("shop.orders.drift", epsilon, budget)])
    for i in range(fits):
        response = get(client, "shop.orders.drift", LAST_CLOSED - 10 * i)
        assert response.status_code == 200, response.json()
    assert ledger.spent("shop.orders.drift", PERIOD) == to_micro(budget) == fits * to_micro(epsilon)
    refused = get(client, "shop.orders.drift", LAST_CLOSED - 10 * fits)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "budget_exhausted"
    assert ledger.spent("shop.orders.drift", PERIOD) == to_micro(budget)


def test_a_refusal_closes_nothing(tmp_path: Path) -> None:
    """After a 429, the refused class still re-reads what it released (free), other classes
    still release, and the refused class releases again in the next period; a 503 (no data
    yet) or a 404 (no data for the asked window) spends nothing."""
    clock = Clock(NOW)
    small = query_class("shop.orders.small", "0.5", "1")  # two releases a day
    other = query_class("shop.orders.other", "1", "100")
    empty = query_class("web.page_views.empty", "1", "100", domain="web", product="page_views")
    client, ledger, _ = app(tmp_path, [small, other, empty], clock)

    first = get(client, small.id, LAST_CLOSED).json()
    assert get(client, small.id, LAST_CLOSED - 10).status_code == 200
    assert get(client, small.id, LAST_CLOSED - 20).status_code == 429

    again = get(client, small.id, LAST_CLOSED)
    assert again.status_code == 200
    assert again.json()["reused"] is True and again.json()["value"] == first["value"]
    assert get(client, other.id).status_code == 200
    assert get(client, small.id, LAST_CLOSED - 20).status_code == 429  # still spent today

    before = len(ledger.entries(limit=1000))
    no_data = get(client, empty.id)
    assert no_data.status_code == 503 and no_data.json()["code"] == "no_data_yet"
    missing = get(client, empty.id, LAST_CLOSED - 10)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert len(ledger.entries(limit=1000)) == before
    assert ledger.spent(empty.id, PERIOD) == 0

    clock.now = NOW + DAY
    tomorrow = get(client, small.id)
    assert tomorrow.status_code == 200, tomorrow.json()
    assert tomorrow.json()["budget"]["epsilon_spent"] == "0.5"
    assert ledger.spent(small.id, PERIOD) == to_micro("1")


def test_releases_reuse_one_measurement_and_search_no_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fresh releases of one class build the OpenDP measurement at most once (the cache
    answers the rest) and never run a scale search or an OpenDP Context; re-reading a
    released window draws no noise at all."""
    built: list[float] = []
    make_laplace = dp.m.make_laplace

    def counting_make_laplace(*args: Any, **kwargs: Any) -> Any:
        built.append(args[2] if len(args) > 2 else kwargs["scale"])
        return make_laplace(*args, **kwargs)

    def forbidden(*_: Any, **__: Any) -> Any:
        raise AssertionError("a release must not search for a noise scale or compose")

    monkeypatch.setattr(dp.m, "make_laplace", counting_make_laplace)
    for name in ("binary_search", "binary_search_param", "binary_search_chain"):
        monkeypatch.setattr(dp, name, forbidden)
    monkeypatch.setattr(dp.Context, "compositor", forbidden)

    # An epsilon no other test uses, so the first release may build it (once).
    qc = query_class("shop.orders.cached", "0.123", "10")
    client, _, _ = app(tmp_path, [qc])
    before = discrete_laplace_count.cache_info()
    for i in range(5):
        assert get(client, qc.id, LAST_CLOSED - 10 * i).status_code == 200
    for i in range(3):
        assert get(client, qc.id, LAST_CLOSED - 10 * i).json()["reused"] is True
    after = discrete_laplace_count.cache_info()

    assert len(built) == after.misses - before.misses <= 1
    assert after.hits + after.misses - before.hits - before.misses == 5  # reuses draw nothing
    mech = discrete_laplace_count(Decimal("0.123"), 1)
    assert mech is discrete_laplace_count(Decimal("0.123"), 1)
    assert mech.scale == pytest.approx(1 / 0.123)


PAIRS = [("0.1", 1), ("0.5", 1), ("1", 20), ("0.3", 3), ("2.5", 7), ("1", 2_000_000)]


@pytest.mark.parametrize(("epsilon", "sensitivity"), PAIRS)
def test_privacy_map_matches_the_declared_epsilon(epsilon: str, sensitivity: int) -> None:
    """OpenDP's privacy map of the measurement the API uses, at the declared sensitivity, is
    the declared epsilon up to float rounding (relative 1e-9: no budget wasted on a larger
    scale than needed), and a larger sensitivity would cost more."""
    mech = DiscreteLaplaceCount(Decimal(epsilon), sensitivity)
    mapped = Decimal(mech._measurement.map(sensitivity))
    declared = Decimal(epsilon)
    assert abs(mapped - declared) <= declared * Decimal("1e-9"), mapped
    assert Decimal(mech._measurement.map(sensitivity + 1)) > declared


@pytest.mark.parametrize(("epsilon", "sensitivity"), [*PAIRS, ("0.7", 3), ("0.000001", 1)])
def test_privacy_map_never_exceeds_the_declared_epsilon(epsilon: str, sensitivity: int) -> None:
    """The certified loss of one release is at most the decimal epsilon the ledger charges,
    compared exactly: sensitivity / epsilon in floats maps a few ulps above it for some pairs
    (0.1 and 1, 0.3 and 3, 2.5 and 7), which the mechanism must absorb in its scale."""
    mech = DiscreteLaplaceCount(Decimal(epsilon), sensitivity)
    assert Decimal(mech._measurement.map(sensitivity)) <= Decimal(epsilon)


def test_a_mechanism_mapping_above_its_epsilon_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """If OpenDP's map of the built measurement exceeded the declared epsilon (here: half
    the scale), the mechanism refuses to exist instead of under-charging the ledger."""
    make_laplace = dp.m.make_laplace

    def half_scale(domain: Any, metric: Any, scale: float) -> Any:
        return make_laplace(domain, metric, scale / 2)

    monkeypatch.setattr(mechanisms.dp.m, "make_laplace", half_scale)
    with pytest.raises(ValueError, match="OpenDP maps this mechanism to epsilon"):
        DiscreteLaplaceCount(Decimal("1"), 1)
