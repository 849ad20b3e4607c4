"""Registered query classes and their DP releases."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from dashboards_api.budget import from_micro
from dashboards_api.deps import ServiceDep, require

router = APIRouter(prefix="/v1/queries", tags=["queries"])
ANY_ROLE = require("consumer", "domain_owner", "governance")


@router.get("", dependencies=[ANY_ROLE])  # type: ignore[list-item]
def list_classes(service: ServiceDep) -> dict[str, Any]:
    """Every registered query class with its cost and budget state."""
    return {
        "classes": [
            {
                "id": qc.id,
                "title": qc.title,
                "domain": qc.domain,
                "product": qc.product,
                "aggregate": qc.aggregate,
                "window": qc.window,
                "mechanism": qc.mechanism,
                "epsilon_per_release": from_micro(qc.cost_micro),
                "budget": service.budget(qc),
            }
            for qc in service.classes.values()
        ]
    }


@router.get("/{class_id}", dependencies=[ANY_ROLE])  # type: ignore[list-item]
def release(
    service: ServiceDep,
    class_id: str = Path(max_length=96, pattern=r"^[A-Za-z0-9_.\-]+$"),
) -> dict[str, Any]:
    """The DP answer of ``class_id`` for the last closed window (ledger entry first)."""
    return service.release(class_id)
