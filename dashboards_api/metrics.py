"""Prometheus metrics: request counts and latency per route, budget per query class, and
the process's own (CPU, memory, file descriptors, garbage collection).

Never a data value: labels are route templates, methods, status codes and class ids, each
from a bounded set (a path no route serves is ``unmatched``, a method outside HTTP's
usual ones ``other``), so hostile requests cannot grow the series. Budget gauges are read
from the ledger at scrape time, so every API replica sharing a Postgres ledger reports
the same spend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboards_api.releases import ReleaseService

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UNMATCHED = "unmatched"  # the route label of a request no route serves (a 404, a refused path)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def register_process_collectors(registry: CollectorRegistry) -> None:
    """The process's CPU, memory, open files and start time, the Python version, and
    garbage collection, on ``registry`` (each /metrics the project serves has them)."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def route_label(scope: Scope) -> str:
    """The template of the route that served ``scope`` (a mount's as ``/prefix/{path}``),
    never the raw path; ``unmatched`` when no route did."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED


def method_label(scope: Scope) -> str:
    """The request method, or ``other`` for one outside HTTP's usual set (any token is a
    valid method on the wire)."""
    method = scope.get("method")
    return method if method in METHODS else OTHER_METHOD


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
            total.add_metric([qc.id], float(state["epsilon_budget"]))  # capped by the policy
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
        register_process_collectors(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request under its route template
    (never its raw path). Starlette's ``BaseHTTPMiddleware`` costs ~0.5 ms a request."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = route_label(scope)
            self.metrics.requests.labels(template, method_label(scope), str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - began)
