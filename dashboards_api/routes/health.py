"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from dashboards_api.deps import ServiceDep
from dashboards_api.routes.problems import problems

router = APIRouter(tags=["health"])


@router.get("/healthz", responses=problems())
async def healthz(service: ServiceDep) -> dict[str, Any]:
    """The API is up; lists the registered query classes."""
    return {"status": "ok", "query_classes": sorted(service.classes)}
