"""Prometheus metrics: requests and latency by route template, budget gauges, no values."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from dashboards_api.metrics import METHODS
from tests.dashboards_api.test_api import CLASS, make_client
from tests.streams.test_metrics import assert_conventional, families

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


def served_routes(app: FastAPI) -> list[BaseRoute]:
    """Every route the app serves, through its included routers."""
    found: list[BaseRoute] = []
    for route in app.routes:
        inner = getattr(route, "original_router", None)
        found.extend(inner.routes if inner is not None else [route])
    return found


def series(text: str, counter: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of ``counter``'s ``_total`` samples."""
    samples = families(text)[counter][1]
    return {tuple(sorted(s.labels.items())) for s in samples if s.name == f"{counter}_total"}


def test_metrics_follow_prometheus_conventions(tmp_path: Path) -> None:
    """Request counts are a counter (_total), latency a histogram in seconds, budgets
    gauges; the process and Python collectors are on the same page."""
    client, _ = make_client(tmp_path, {WINDOW: 10})
    client.get("/healthz")
    found = families(client.get("/metrics").text)
    kinds = {name: kind for name, (kind, _) in found.items()}
    assert kinds["privmesh_api_requests"] == "counter"
    assert kinds["privmesh_api_request_seconds"] == "histogram"
    for gauge in ("spent_epsilon", "remaining_epsilon", "epsilon"):
        assert kinds[f"privmesh_budget_{gauge}"] == "gauge"
    assert_conventional(found)


def test_every_served_route_is_counted_under_its_template(tmp_path: Path) -> None:
    """Each route of the app, the docs pages, the OpenAPI document and the page assets
    included, is labelled with its own template; only a path no route serves is unmatched."""
    client, _ = make_client(tmp_path, {WINDOW: 10}, {"g-key": "governance"})
    app: FastAPI = client.app  # type: ignore[assignment]
    routes = [r for r in served_routes(app) if isinstance(r, APIRoute)]
    templates = {r.path_format for r in routes}
    assert {"/docs", "/redoc", "/openapi.json", "/docs/assets/redoc.standalone.js"} <= templates
    for route in routes:  # no key: a protected route answers 401 without doing anything
        path = re.sub(r"\{[^}]+\}", "x", route.path_format)
        client.request(sorted(route.methods or {"GET"})[0], path)
    client.get("/no/such/route")
    headers = {"Authorization": "Bearer g-key"}
    labels = {
        dict(s)["route"]
        for s in series(client.get("/metrics", headers=headers).text, "privmesh_api_requests")
    }
    assert labels == templates | {"unmatched"}


def test_hostile_paths_and_methods_do_not_grow_the_series(tmp_path: Path) -> None:
    """Hundreds of distinct unknown paths (NUL, lone surrogates, huge, dot segments) and
    invented methods add at most a fixed few series, and no raw path becomes a label."""
    client, _ = make_client(tmp_path, {WINDOW: 10})
    client.get("/nothing-here")
    client.request("BREW", "/healthz")
    before = client.get("/metrics").text
    hostile = [
        *(f"/probe-{i}" for i in range(200)),
        "/%00",
        "/%ED%A0%80",
        "/" + "a" * 20_000,
        "/v1/../metrics",
        "/v1/queries/shop.orders.distinct_customers/../../x",
        "/docs/assets/" + "z" * 300,
    ]
    for i, path in enumerate(hostile):
        client.get(path)
        client.request(f"M{i}", path)
    text = client.get("/metrics").text
    grown = series(text, "privmesh_api_requests") - series(before, "privmesh_api_requests")
    assert len(grown) <= 3, grown  # (unmatched, other, 400/404/405) at most
    methods = {dict(s)["method"] for s in series(text, "privmesh_api_requests")}
    assert methods <= METHODS | {"other"}
    assert "probe-" not in text and "zzz" not in text and "aaaa" not in text
