"""The catalog API in the served app: governance only, clear 4xx errors, live spend."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.query_classes import load_product_budgets, load_query_classes
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import ApiSettings, KeyGrant
from domains.registry import load_contracts
from infra.api_app import with_catalog
from tests.catalog.conftest import day_rows
from tests.fakes import FakeWindowSource

NOW = 1_795_427_055.0
WINDOW = 1_795_427_040
KEYS = {
    "gov": KeyGrant(role="governance"),
    "reader": KeyGrant(role="consumer"),
    "shop-owner": KeyGrant(role="domain_owner", domains=frozenset({"shop"})),
}
GOV = {"Authorization": "Bearer gov"}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    """The dashboards app with the catalog mounted, over a real ledger."""
    service = ReleaseService(
        classes=load_query_classes(),
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(rows=day_rows(WINDOW))},
        ledger=SqliteLedger(tmp_path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=lambda: NOW,
        product_budgets=load_product_budgets(),
    )
    app = create_app(service, KEYS, ApiSettings(registry_sync_seconds=0))
    return TestClient(with_catalog(app, ttl_seconds=0))


def test_only_governance_reads_the_catalog(client: TestClient) -> None:
    """No key: 401; consumer and domain-owner keys: 403; governance: 200."""
    assert client.get("/v1/catalog").status_code == 401
    for key in ("reader", "shop-owner"):
        response = client.get("/v1/catalog", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"
    summary = client.get("/v1/catalog", headers=GOV).json()
    assert summary["entities"]["product"] == 6


def test_search_entity_and_lineage(client: TestClient) -> None:
    """Search by tag, one entity with its neighbours, the lineage graph of a field."""
    found = client.get(
        "/v1/catalog/entities", params={"kind": "field", "tag": "direct_identifier"}, headers=GOV
    ).json()
    assert found["count"] == 9
    assert {e["protection"] for e in found["entities"]} <= {"drop", "tokenise"}
    entity = client.get("/v1/catalog/entities/field:shop.orders.zip_code", headers=GOV).json()
    assert entity["kind"] == "field"
    assert entity["protection_detail"] == "generalised: cut to its first 3 characters"
    assert entity["lineage"]["root"] == "field:shop.orders.zip_code"
    graph = client.get(
        "/v1/catalog/lineage",
        params={"root": "field:shop.orders.amount_cents", "direction": "downstream"},
        headers=GOV,
    ).json()
    assert "query_class:shop.orders.revenue_cents" in {n["id"] for n in graph["nodes"]}


def test_a_release_shows_up_as_spend(client: TestClient) -> None:
    """A daily class's first value pays its day: at once the class's and the product's
    spend in the catalog, whose user-level total is the one the API's answer states."""
    released = client.get("/v1/queries/shop.orders.distinct_customers", headers=GOV)
    assert released.status_code == 200, released.text
    body = released.json()
    paid = body["daily_epsilon"]["epsilon"]
    qc = client.get(
        "/v1/catalog/entities/query_class:shop.orders.distinct_customers", headers=GOV
    ).json()
    assert qc["budget"]["spent"] == paid != "0"
    assert qc["privacy_unit"] == body["privacy_unit"] == "subject_day"
    product = client.get("/v1/catalog/entities/product:shop.orders", headers=GOV).json()
    assert product["budget"]["spent"] == paid
    level = product["user_level"]
    assert level["epsilon_per_subject_per_day"] == body["user_level"]["product_total"]
    assert level["statement"] == (
        f"ε = {body['user_level']['product_total']} per person per UTC day (pure DP)"
    )


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/v1/catalog/entities/field:shop.orders.nope", {}, 404, "entity_not_found"),
        ("/v1/catalog/entities", {"tag": "personal"}, 422, "invalid_parameters"),
        ("/v1/catalog/entities", {"kind": "owner", "budget_above": 0.5}, 422, "invalid_search"),
        ("/v1/catalog/entities", {"budget_above": 2}, 422, "invalid_parameters"),
        ("/v1/catalog/lineage", {"root": "topic:nope"}, 404, "entity_not_found"),
        ("/v1/catalog/lineage", {"depth": 0}, 422, "invalid_parameters"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    client: TestClient, path: str, params: dict[str, object], status: int, code: str
) -> None:
    """Unknown ids and filters that do not apply: a problem response naming the issue."""
    response = client.get(path, params=params, headers=GOV)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["detail"]


def test_the_governance_page_is_served_without_data(client: TestClient) -> None:
    """The page and assets need no key, hold no data and keep to this origin."""
    page = client.get("/catalog")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert client.get("/catalog/catalog.js").status_code == 200
    assert client.get("/catalog/catalog.css").status_code == 200


def test_the_api_and_stream_workers_never_import_the_openmetadata_sdk() -> None:
    """Serving the catalog (app factory, a catalog request) and loading a stream worker
    leave the ~20 s, ~450 MB SDK unimported."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "import infra.api_app, streams.worker\n"
        "client = TestClient(infra.api_app.app_from_settings())\n"
        "assert client.get('/v1/catalog').status_code == 200\n"
        "assert client.get('/v1/catalog/lineage').status_code == 200\n"
        "loaded = [m for m in sys.modules if m == 'metadata' or m.startswith('metadata.')]\n"
        "assert not loaded, loaded[:5]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
