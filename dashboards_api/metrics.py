"""Prometheus metrics: request counts and latency per route, budget per query class.

Never a data value: labels are route templates, methods, status codes and class ids;
budget gauges are read from the ledger at scrape time, so every API replica sharing a
Postgres ledger reports the same spend.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from dashboards_api.budget import from_micro
from dashboards_api.releases import ReleaseService

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class BudgetCollector(Collector):
    """Spent, remaining and total epsilon of each class in the current period."""

    def __init__(self, service: ReleaseService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per class and gauge, read from the ledger now."""
        spent = GaugeMetricFamily(
            "privmesh_budget_spent_epsilon", "Epsilon spent this period", labels=["class_id"]
        )
        remaining = GaugeMetricFamily(
            "privmesh_budget_remaining_epsilon",
            "Epsilon left this period",
            labels=["class_id"],
        )
        total = GaugeMetricFamily(
            "privmesh_budget_epsilon", "Epsilon budget per period", labels=["class_id"]
        )
        for qc in self._service.classes.values():
            state = self._service.budget(qc)
            spent.add_metric([qc.id], float(state["epsilon_spent"]))
            remaining.add_metric([qc.id], float(state["epsilon_remaining"]))
            total.add_metric([qc.id], float(from_micro(qc.budget_micro)))
        yield from (spent, remaining, total)


class ApiMetrics:
    """The app's own registry (several apps in one process do not share counters)."""

    def __init__(self, service: ReleaseService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "privmesh_api_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "privmesh_api_request_seconds",
            "Request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(BudgetCollector(service))

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Count and time every request under its route template (never its raw path)."""
        began = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.requests.labels(template, request.method, str(status)).inc()
            self.latency.labels(template).observe(time.perf_counter() - began)
