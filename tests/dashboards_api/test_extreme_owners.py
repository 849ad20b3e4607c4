"""Property: owners who try extreme values on any class field never get a 5xx, never a
release without a finite interval, and a refused class commits nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.query_classes import QueryClass, load_product_budgets, load_query_classes
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import ApiSettings, KeyGrant
from domains.registry import load_contracts
from tests.fakes import FakeWindowSource

NOW = 1_795_427_055.0
WINDOW = 1_795_427_040
KEYS = {
    "owner": KeyGrant(role="domain_owner", domains=frozenset({"shop", "jfk"})),
    "gov": KeyGrant(role="governance"),
}
ROW = {
    "distinct_subjects": 40,
    "events": 90,
    "contribution_bound": 20,
    "amount_cents_sum": 1e6,
    "amount_cents_sum_cap": 100_658.0,
}
COMMON = {"title": "extreme", "domain": "shop", "product": "orders", "budget_per_day": "50"}
SHAPES: list[dict[str, Any]] = [
    {"aggregate": "count_records", "epsilon_per_release": "1", "suppress_below": 5},
    {"aggregate": "bounded_sum", "measure": "amount_cents", "epsilon_per_release": "0.5"},
    {"aggregate": "count_distinct_subjects", "epsilon_per_release": "1"},
    {
        "aggregate": "count_records",
        "release": "continual",
        "horizon_windows": 8,
        "privacy_unit": "subject_window",
        "epsilon_per_release": "1",
    },
    {
        "aggregate": "quantile",
        "measure": "amount_cents",
        "quantile": 0.5,
        "candidates": [0, 1_000, 5_000],
        "max_records_per_subject": 3,
        "window": "1m",
        "epsilon_per_release": "1",
    },
]
FIELDS = sorted(set(QueryClass.model_fields) - {"id", "domain", "product"})
# Extremes an adversarial owner tries: tiny to astronomic, NaN, infinities, negative,
# zero, strings, wrong types, huge integers.
EXTREME: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(
        [
            "1e-12",
            "0.0000001",
            "0.000001",
            "1e-6",
            "1e30",
            "1e20",
            "1000000",
            "100",
            "100.000001",
            "NaN",
            "nan",
            "Infinity",
            "-Infinity",
            "-1",
            "-0",
            "0",
            "",
            "lots",
            "1e308",
            "9" * 40,
            "0x10",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([None, True, [], {}, [1e30, -1e30], "count_records", "subject_window"]),
)


def build_client(path: Path) -> TestClient:
    source = FakeWindowSource(rows={WINDOW - 10 * i: ROW for i in range(10)})
    service = ReleaseService(
        classes=load_query_classes(),
        contracts=load_contracts(),
        sources={"shop": source},
        ledger=SqliteLedger(path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=lambda: NOW,
        product_budgets=load_product_budgets(),
    )
    return TestClient(create_app(service, KEYS, ApiSettings(registry_sync_seconds=0)))


def state(client: TestClient, class_id: str) -> tuple[int, int]:
    """(class versions of ``class_id``, ledger entries): what a refusal must leave alone."""
    gov = {"Authorization": "Bearer gov"}
    versions = client.get(f"/v1/classes/{class_id}/versions", headers=gov).json()["versions"]
    ledger = client.get("/v1/ledger?limit=1000", headers=gov).json()["entries"]
    return len(versions), len(ledger)


def finite_interval(body: dict[str, Any]) -> bool:
    intervals = [body.get("ci95")] + [g.get("ci95") for g in body.get("groups") or []]
    widths = [w for ci in intervals if ci is not None for w in ci]
    if body.get("rank_ci95_half_width") is not None:
        widths.append(body["rank_ci95_half_width"])
    has_value = body.get("value") is not None or any(
        g.get("value") is not None for g in body.get("groups") or []
    )
    return all(math.isfinite(w) for w in widths) and (not has_value or bool(widths))


COUNTER = iter(range(10**9))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """One app for every example (a fresh ledger)."""
    return build_client(tmp_path_factory.mktemp("extreme"))


@hypothesis.settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(shape=st.sampled_from(SHAPES), field=st.sampled_from(FIELDS), value=EXTREME)
def test_extreme_class_fields_never_5xx_never_unbounded(
    client: TestClient, shape: dict[str, Any], field: str, value: Any
) -> None:
    """Any one class field set to an extreme value: the PUT is 200 or a 4xx problem; a
    refused PUT stores nothing and commits nothing; an accepted class releases only with a
    finite interval (or a 4xx problem), never a 5xx."""
    class_id = f"shop.orders.x{next(COUNTER)}"
    body = {**COMMON, **shape, "id": class_id, field: value}
    before = state(client, class_id)
    put = client.put(
        f"/v1/classes/{class_id}",
        content=json.dumps(body),  # NaN and infinities as the JSON tokens a client may send
        headers={"Authorization": "Bearer owner", "Content-Type": "application/json"},
    )
    assert put.status_code < 500, put.text
    if put.status_code != 200:
        assert put.headers["content-type"].startswith("application/problem+json")
        assert state(client, class_id) == before
        return
    released = client.get(f"/v1/queries/{class_id}", headers={"Authorization": "Bearer gov"})
    assert released.status_code < 500 or released.json().get("code") == "no_data_yet"
    if released.status_code == 200:
        assert finite_interval(released.json()), released.json()
    else:
        assert released.headers["content-type"].startswith("application/problem+json")
        assert state(client, class_id)[1] == before[1]  # nothing committed on refusal


def test_extreme_policies_never_5xx(tmp_path: Path) -> None:
    """Governance trying extremes on each policy field: 200 or a 422 problem, never a 5xx;
    a refused policy leaves the policy in force unchanged."""
    client = build_client(tmp_path)
    gov = {"Authorization": "Bearer gov"}
    fields = [
        "max_epsilon_per_release",
        "max_class_budget_per_day",
        "max_product_budget_per_day",
        "default_product_budget_per_day",
    ]
    for field in fields:
        for value in ["1e-12", "1e30", "NaN", "-1", "lots", None, 1e308, "0", "100.5"]:
            before = client.get("/v1/policy", headers=gov).json()
            response = client.put(
                "/v1/policy",
                content=json.dumps({field: value}),
                headers={**gov, "Content-Type": "application/json"},
            )
            assert response.status_code in (200, 422), response.text
            if response.status_code == 422:
                assert client.get("/v1/policy", headers=gov).json() == before
