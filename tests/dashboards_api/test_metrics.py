"""Prometheus metrics: requests and latency by route template, budget gauges, no values."""

from __future__ import annotations

from pathlib import Path

from tests.dashboards_api.test_api import CLASS, make_client

WINDOW = 1_795_427_040


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text exposition."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{wanted}}}")


def test_metrics_count_requests_and_report_budget_without_values(tmp_path: Path) -> None:
    """After releases, /metrics shows request counts, latency and spend, never the answer."""
    client, _ = make_client(tmp_path, {WINDOW: 4321})
    route = "/v1/queries/{class_id}"
    # Deltas between two scrapes, as Prometheus uses counters. Importing feast sets
    # PROMETHEUS_MULTIPROC_DIR, which makes prometheus_client keep values per metric name
    # and labels for the whole process: earlier apps' counts show up in a new app's
    # series, so each series is created (one request each) before the first scrape.
    client.get("/v1/queries/shop.orders.nope")
    released = client.get(f"/v1/queries/{CLASS}").json()
    before = client.get("/metrics").text
    client.get(f"/v1/queries/{CLASS}")  # reused: spends nothing
    client.get(f"/v1/queries/{CLASS}")
    client.get("/v1/queries/shop.orders.nope")
    text = client.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        try:
            start = sample(before, name, **labels)
        except AssertionError:
            start = 0.0
        return sample(text, name, **labels) - start

    assert delta("privmesh_api_requests_total", route=route, status="200") == 2
    assert delta("privmesh_api_requests_total", route=route, status="404") == 1
    assert delta("privmesh_api_request_seconds_count", route=route) == 3
    assert sample(text, "privmesh_budget_spent_epsilon", class_id=CLASS) == 1.0
    assert sample(text, "privmesh_budget_remaining_epsilon", class_id=CLASS) == 99.0
    assert "shop.orders.nope" not in text  # raw paths never become labels
    assert str(released["value"]) not in text.replace(".0\n", "\n").split()


def test_metrics_need_the_governance_role(tmp_path: Path) -> None:
    """With keys configured, a consumer key gets 403 and no body data; governance gets 200."""
    client, _ = make_client(tmp_path, {WINDOW: 10}, {"c-key": "consumer", "g-key": "governance"})
    assert client.get("/metrics").status_code == 401
    denied = client.get("/metrics", headers={"Authorization": "Bearer c-key"})
    assert denied.status_code == 403 and "privmesh_" not in denied.text
    allowed = client.get("/metrics", headers={"Authorization": "Bearer g-key"})
    assert allowed.status_code == 200 and "privmesh_budget_epsilon" in allowed.text
