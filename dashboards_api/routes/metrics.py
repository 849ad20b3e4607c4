"""Prometheus exposition (governance role, or open in development)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dashboards_api.deps import require
from dashboards_api.routes.problems import problems

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    dependencies=[require("governance")],
    responses=problems(401, 403),
)
def metrics(request: Request) -> Response:
    """Request counters, latency histograms and budget gauges; no data values."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
