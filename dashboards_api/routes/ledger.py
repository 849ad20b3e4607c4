"""Governance view of the privacy ledger."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from dashboards_api.budget import from_micro
from dashboards_api.deps import LedgerDep, require
from dashboards_api.routes.problems import problems

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])


@router.get(
    "",
    dependencies=[require("governance", "domain_owner")],
    responses=problems(401, 403, 422),
)
def entries(
    ledger: LedgerDep,
    limit: int = Query(100, ge=1, le=1000),
    class_id: str | None = Query(None, max_length=96),
    product: str | None = Query(
        None,
        max_length=130,
        pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$",
        description="A data product as domain.product",
    ),
    period: str | None = Query(
        None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="Budget period (UTC day): 2026-11-23"
    ),
) -> dict[str, Any]:
    """Most recent ledger entries first: what was released, when, at what cost; filtered by
    class, data product and budget period for governance."""
    return {
        "entries": [
            {
                "id": e.id,
                "class_id": e.class_id,
                "period": e.period,
                "product": e.product,
                "data_version": e.data_version,
                "epsilon": str(from_micro(e.cost_micro)),
                "created_at": e.created_at,
                "value": e.answer.get("value"),
            }
            for e in ledger.entries(
                limit=limit,
                class_id=class_id,
                product=product,
                period=period,
            )
        ]
    }
