"""Domain owners manage their own classes; every replica sees the change; totals hold."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.query_classes import ProductBudget
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import ApiSettings, KeyGrant
from domains.registry import load_contracts
from tests.dashboards_api.per_window import raised_policy, window_classes
from tests.fakes import FakeWindowSource

NOW = 1_795_427_055.0
WINDOW = 1_795_427_040
KEYS = {
    "shop-owner": KeyGrant(role="domain_owner", domains=frozenset({"shop"})),
    "web-owner": KeyGrant(role="domain_owner", domains=frozenset({"web"})),
    "reader": KeyGrant(role="consumer"),
    "gov": KeyGrant(role="governance"),
}
NEW = {
    "id": "shop.orders.small_counts",
    "title": "Orders per window, withheld below 50",
    "domain": "shop",
    "product": "orders",
    "aggregate": "count_records",
    "suppress_below": 50,
    "epsilon_per_release": "0.5",
    "budget_per_day": "10",
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make(path: Path, total: str = "300") -> TestClient:
    row = {"distinct_subjects": 40, "events": 60, "contribution_bound": 20}
    service = ReleaseService(
        classes=window_classes(),
        policy=raised_policy(),
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(rows={WINDOW: row})},
        ledger=SqliteLedger(path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=lambda: NOW,
        product_budgets={"shop.orders": ProductBudget(budget_per_day=Decimal(total))},
    )
    return TestClient(create_app(service, KEYS, ApiSettings(registry_sync_seconds=0)))


def put(client: TestClient, body: dict[str, Any], key: str = "shop-owner") -> Any:
    return client.put(f"/v1/classes/{body['id']}", json=body, headers=auth(key))


def test_owner_adds_a_class_that_is_served(tmp_path: Path) -> None:
    """A shop owner's new class is listed and released, with its suppression threshold."""
    client = make(tmp_path)
    response = put(client, NEW)
    assert response.status_code == 200, response.text
    assert response.json()["suppress_below"] == 50
    listed = client.get("/v1/queries", headers=auth("reader")).json()["classes"]
    assert NEW["id"] in {c["id"] for c in listed}
    released = client.get(f"/v1/queries/{NEW['id']}", headers=auth("reader")).json()
    assert released["epsilon_charged"] == "0.5"
    # 60 events, sensitivity 20 at epsilon 0.5: noise scale 40, so the count is often
    # withheld; either way the answer says which, and a withheld one has no value.
    assert released["suppressed"] is (released["value"] is None)


def test_owner_of_another_domain_and_consumers_are_refused(tmp_path: Path) -> None:
    """Only an owner of the class's domain may change it: 403 for others, nothing stored."""
    client = make(tmp_path)
    assert put(client, NEW, "web-owner").status_code == 403
    assert put(client, NEW, "reader").status_code == 403
    assert client.put(f"/v1/classes/{NEW['id']}", json=NEW).status_code == 401
    versions = client.get(f"/v1/classes/{NEW['id']}/versions", headers=auth("gov"))
    assert versions.json()["versions"] == []


def test_invalid_classes_are_422_with_the_reason(tmp_path: Path) -> None:
    """A private group-by key, a budget above the product total, a mismatched id: 422."""
    client = make(tmp_path, total="5")
    private_key = {**NEW, "aggregate": "histogram", "group_by": "zip_code"}
    private_key["max_records_per_subject"] = 5
    response = put(client, private_key)
    assert response.status_code == 422 and "public keys" in response.json()["detail"]
    over = put(client, NEW)
    assert over.status_code == 422 and "exceeds the total" in over.json()["detail"]
    wrong = client.put("/v1/classes/shop.orders.other", json=NEW, headers=auth("shop-owner"))
    assert wrong.status_code == 422


def test_withdrawn_class_is_gone_and_audited(tmp_path: Path) -> None:
    """Withdrawing stops serving the class; governance sees both versions and who made them."""
    client = make(tmp_path)
    put(client, NEW)
    assert client.delete(f"/v1/classes/{NEW['id']}", headers=auth("shop-owner")).status_code == 200
    assert client.get(f"/v1/queries/{NEW['id']}", headers=auth("reader")).status_code == 404
    versions = client.get(f"/v1/classes/{NEW['id']}/versions", headers=auth("gov")).json()
    assert [v["active"] for v in versions["versions"]] == [True, False]
    assert versions["versions"][0]["changed_by"] == "domain_owner of shop"


def test_other_replica_sees_the_change(tmp_path: Path) -> None:
    """A second app on the same ledger database serves a class added through the first."""
    first, second = make(tmp_path), make(tmp_path)
    put(first, NEW)
    assert second.get(f"/v1/queries/{NEW['id']}", headers=auth("reader")).status_code == 200


def test_product_total_caps_all_classes(tmp_path: Path) -> None:
    """When the product's total is spent, every class of the product gets 429."""
    client = make(tmp_path, total="1.5")
    reader = auth("reader")
    assert (
        client.get("/v1/queries/shop.orders.distinct_customers", headers=reader).status_code == 200
    )
    refused = client.get("/v1/queries/shop.orders.order_count", headers=reader)
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "budget_exhausted" and body["product_budget_micro"] == 1_500_000


def test_governance_filters_the_ledger(tmp_path: Path) -> None:
    """Governance reads the ledger by class, data product and period."""
    client = make(tmp_path)
    reader, gov = auth("reader"), auth("gov")
    client.get("/v1/queries/shop.orders.distinct_customers", headers=reader)
    client.get("/v1/queries/shop.orders.order_count", headers=reader)
    by_product = client.get("/v1/ledger?product=shop.orders&period=2026-11-23", headers=gov)
    entries = by_product.json()["entries"]
    assert len(entries) == 2 and {e["product"] for e in entries} == {"shop.orders"}
    assert client.get("/v1/ledger?product=web.page_views", headers=gov).json()["entries"] == []
    assert client.get("/v1/ledger?period=2026-11-24", headers=gov).json()["entries"] == []
    assert client.get("/v1/ledger?period=yesterday", headers=gov).status_code == 422
