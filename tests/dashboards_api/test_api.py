"""HTTP behaviour of the DP API with a real ledger and OpenDP, and a fake window source."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import check_safe, create_app
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import ApiSettings
from domains.registry import load_contracts
from domains.runtime import RuntimeSettings
from tests.dashboards_api.per_window import raised_policy, window_classes
from tests.fakes import FakeWindowSource

CLASS = "shop.orders.distinct_customers"
NOW = 1_795_427_055.0  # 5 s into a 10 s window; the last closed window starts at ...040


def make_service(
    ledger: SqliteLedger,
    windows: dict[int, int],
    lookback_windows: int = 3,
    now: float = NOW,
) -> ReleaseService:
    return ReleaseService(
        classes=window_classes(),
        policy=raised_policy(),
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(windows)},
        ledger=ledger,
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=lookback_windows,
        clock=lambda: now,
    )


def make_client(
    tmp_path: Path,
    windows: dict[int, int],
    keys: dict[str, str] | None = None,
) -> tuple[TestClient, SqliteLedger]:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    service = make_service(ledger, windows)
    return TestClient(create_app(service, keys)), ledger  # type: ignore[arg-type]


def test_release_records_spend_and_reuses(tmp_path: Path) -> None:
    """A release carries value, CI, epsilon and budget; the ledger has it; a repeat is free."""
    client, ledger = make_client(tmp_path, {1_795_427_040: 500})
    first = client.get(f"/v1/queries/{CLASS}")
    assert first.status_code == 200
    body = first.json()
    assert body["epsilon_charged"] == "1" and body["reused"] is False
    assert body["ci95"][0] < body["value"] < body["ci95"][1]
    assert body["budget"]["epsilon_spent"] == "1"
    assert body["data_version"] == "window:1795427040"
    entries = ledger.entries()
    assert len(entries) == 1 and entries[0].answer["value"] == body["value"]
    again = client.get(f"/v1/queries/{CLASS}").json()
    assert again["reused"] is True and again["value"] == body["value"]
    assert again["epsilon_charged"] == "0" and len(ledger.entries()) == 1
    assert client.get("/v1/ledger").json()["entries"][0]["value"] == body["value"]


def test_falls_back_to_previous_window(tmp_path: Path) -> None:
    """When the newest closed window is not pushed yet, the one before is released."""
    client, _ = make_client(tmp_path, {1_795_427_030: 7})
    assert client.get(f"/v1/queries/{CLASS}").json()["data_version"] == "window:1795427030"


def test_no_data_is_503_problem(tmp_path: Path) -> None:
    """No closed window yet: 503 problem+json with Retry-After, nothing spent."""
    client, ledger = make_client(tmp_path, {})
    response = client.get(f"/v1/queries/{CLASS}")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "10"
    assert response.json()["code"] == "no_data_yet"
    assert ledger.entries() == []


def test_unknown_class_is_404(tmp_path: Path) -> None:
    """An unregistered class gets 404 naming the registered ones."""
    client, _ = make_client(tmp_path, {})
    response = client.get("/v1/queries/shop.orders.everything")
    assert response.status_code == 404
    assert CLASS in response.json()["detail"]


@pytest.mark.parametrize(
    "path",
    ["/v1/queries/" + "x" * 200, "/v1/queries/a%20b", "/v1/ledger?limit=0", "/v1/ledger?limit=abc"],
)
def test_bad_parameters_are_422(tmp_path: Path, path: str) -> None:
    """Malformed parameters get 422 problem+json listing what to fix, never a 500."""
    client, _ = make_client(tmp_path, {})
    response = client.get(path)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_parameters"


def test_budget_exhausted_is_429(tmp_path: Path) -> None:
    """After the daily budget is spent, a fresh window gets 429 with the remaining budget."""
    client, ledger = make_client(tmp_path, {1_795_427_040: 5})
    qc = window_classes()[CLASS]
    for i in range(qc.budget_micro // qc.cost_micro):
        ledger.commit_release(
            CLASS, "2026-11-23", f"fill:{i}", qc.cost_micro, qc.budget_micro, {"value": 0}
        )
    response = client.get(f"/v1/queries/{CLASS}")
    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "budget_exhausted" and body["spent_micro"] == qc.budget_micro


def test_roles_and_credentials(tmp_path: Path) -> None:
    """Missing or unknown keys get 401, a consumer reading the ledger 403, with no data."""
    keys = {"consumer-key": "consumer", "gov-key": "governance"}
    client, _ = make_client(tmp_path, {1_795_427_040: 5}, keys)
    assert client.get(f"/v1/queries/{CLASS}").status_code == 401
    assert (
        client.get(f"/v1/queries/{CLASS}", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    consumer = {"Authorization": "Bearer consumer-key"}
    assert client.get(f"/v1/queries/{CLASS}", headers=consumer).status_code == 200
    denied = client.get("/v1/ledger", headers=consumer)
    assert denied.status_code == 403 and "entries" not in denied.json()
    assert client.get("/v1/ledger", headers={"X-API-Key": "gov-key"}).status_code == 200


def test_production_refuses_open_access() -> None:
    """PRIVMESH_ENV=production without API keys refuses to build the app."""
    with pytest.raises(ValueError, match="PRIVMESH_API_KEYS"):
        check_safe(RuntimeSettings(env="production"), ApiSettings())


def test_released_values_are_noisy(tmp_path: Path) -> None:
    """Across 50 fresh windows the released value is not always the exact count
    (false-failure probability at epsilon 1 is below 1e-16)."""
    exact = 1_000
    windows = {1_795_427_040 - 10 * i: exact for i in range(50)}
    ledger = SqliteLedger(tmp_path / "ledger.db")
    values = []
    for i in range(50):
        service = make_service(ledger, windows, lookback_windows=1, now=NOW - 10 * i)
        values.append(service.release(CLASS)["value"])
    assert any(v != exact for v in values)
    assert len(ledger.entries(limit=100)) == 50
