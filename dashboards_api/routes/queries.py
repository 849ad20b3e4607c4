"""Registered query classes and their DP releases."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dashboards_api.budget import from_micro
from dashboards_api.deps import ServiceDep, require
from dashboards_api.policy import reserve_micro
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases import ReleaseService, privacy_unit_of
from dashboards_api.releases.body import ReleaseBody
from dashboards_api.routes.problems import problems

router = APIRouter(prefix="/v1/queries", tags=["queries"])
ANY_ROLE = require("consumer", "domain_owner", "governance")
# A class id never starts with a dot, so "." and ".." cannot stand for one.
CLASS_ID = Path(max_length=96, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def describe(service: ReleaseService, qc: QueryClass) -> dict[str, Any]:
    """What a consumer needs to know about a class: shape, cost and budget state."""
    return {
        "privacy_unit": privacy_unit_of(qc),
        "resolutions": list(qc.answered_resolutions) or None,
        "accuracy": None if qc.accuracy is None else qc.accuracy.model_dump(mode="json"),
        "numerator": qc.numerator,
        "denominator": qc.denominator,
        "budget_per_day": from_micro(service.class_budget(qc)),
        "id": qc.id,
        "title": qc.title,
        "domain": qc.domain,
        "product": qc.product,
        "aggregate": qc.aggregate,
        "measure": qc.measure,
        "group_by": qc.group_by,
        "window": qc.window,
        "release": qc.release,
        "horizon_windows": qc.horizon_windows,
        "mechanism": qc.noise,
        "suppress_below": qc.suppress_below,
        "epsilon_per_release": from_micro(qc.cost_micro),
        "budget": service.budget(qc),
        "product_budget": service.product_budget(qc.domain, qc.product),
    }


def products(service: ReleaseService, classes: list[QueryClass]) -> list[dict[str, Any]]:
    """Per data product: the user-level loss per subject per UTC day (its total, which every
    release of its classes together stays within), the allocation per class, and what is
    spent and left today."""
    out = []
    for key in sorted({f"{qc.domain}.{qc.product}" for qc in classes}):
        domain, _, product = key.partition(".")
        state = service.product_budget(domain, product)
        mine = [qc for qc in classes if (qc.domain, qc.product) == (domain, product)]
        out.append(
            {
                "product": key,
                "privacy_unit": "subject_day",
                "epsilon_per_subject_per_day": None if state is None else state["epsilon_budget"],
                "allocation": {qc.id: from_micro(service.class_budget(qc)) for qc in mine},
                # kept from every class's allocation for planning (the bound advisor)
                "reserve_per_day": None
                if state is None
                else from_micro(
                    reserve_micro(
                        service.policy.current,
                        service.product_budgets.get(key),
                        service.product_total(domain, product),
                    )
                ),
                "epsilon_spent_today": None if state is None else state["epsilon_spent"],
                "epsilon_left_today": None if state is None else state["epsilon_remaining"],
                "period": service.period(),
            }
        )
    return out


@router.get("", dependencies=[ANY_ROLE], responses=problems(401, 403))
def list_classes(service: ServiceDep) -> dict[str, Any]:
    """Every registered query class with its cost and budget state, and per data product the
    user-level loss per subject per day, the allocation per class, spent and left today."""
    classes = list(service.classes.values())
    return {
        "classes": [describe(service, qc) for qc in classes],
        "products": products(service, classes),
    }


@router.get(
    "/{class_id}",
    dependencies=[ANY_ROLE],
    responses={
        200: {"model": ReleaseBody, "description": "The committed (or reused) release"},
        **problems(400, 401, 403, 404, 409, 422, 429, 503),
    },
)
async def release(
    service: ServiceDep,
    class_id: str = CLASS_ID,
    window_start: int | None = Query(
        None,
        ge=0,
        le=4_102_444_800,
        description="Epoch seconds of a closed window to release (default: the last closed).",
    ),
    resolution: Literal["auto", "window", "1m", "1h", "today", "24h"] | None = Query(
        None,
        description=(
            "Daily classes: the span of the value (default auto: the finest that meets the "
            "class's declared accuracy). Other classes take none."
        ),
    ),
) -> JSONResponse:
    """The DP answer of ``class_id`` for one closed window (ledger entry first).

    A release already made is answered on the event loop from the ledger; a fresh one
    (store read, noise, commit) runs in the thread pool.
    """
    body = service.cached(class_id, window_start, resolution)
    if body is None:
        body = await run_in_threadpool(service.release_new, class_id, window_start, resolution)
    return JSONResponse(body)


@router.get(
    "/{class_id}/history",
    dependencies=[ANY_ROLE],
    responses=problems(400, 401, 403, 404, 422),
)
def history(
    service: ServiceDep,
    class_id: str = CLASS_ID,
    limit: int = Query(30, ge=1, le=1000),
) -> dict[str, Any]:
    """Answers already released for ``class_id``, oldest first; reading them spends nothing."""
    return {"class_id": class_id, "releases": service.history(class_id, limit)}
