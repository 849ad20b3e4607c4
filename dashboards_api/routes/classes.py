"""Domain owners manage their domains' query classes; governance reads the changes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from dashboards_api.deps import Caller, CallerDep, ServiceDep, require
from dashboards_api.errors import Forbidden, InvalidParameters, InvalidQueryClasses
from dashboards_api.planner import Plan, check_accuracy, plan_in_context
from dashboards_api.policy import reserve_micro
from dashboards_api.query_classes import QueryClass
from dashboards_api.registry import ClassRegistry
from dashboards_api.releases import ReleaseService
from dashboards_api.routes.problems import problems
from dashboards_api.routes.queries import CLASS_ID, describe
from dashboards_api.sensitivity import check_class

router = APIRouter(prefix="/v1/classes", tags=["classes"])
OWNER = require("domain_owner")


def _registry(request: Request) -> ClassRegistry:
    registry: ClassRegistry = request.app.state.registry
    return registry


def _who(caller: Caller) -> str:
    if not caller.authenticated:
        return "development (no API keys)"
    return f"{caller.role} of {','.join(sorted(caller.domains)) or 'no domain'}"


def _owned(caller: Caller) -> frozenset[str] | None:
    return caller.domains if caller.authenticated else None


def _plan(service: ReleaseService, qc: QueryClass, volume_per_day: float | None = None) -> Plan:
    """The planner's view of ``qc`` next to the classes served now (released values of its
    product from the ledger give the typical volume; never raw counts)."""
    key, total = f"{qc.domain}.{qc.product}", service.product_total(qc.domain, qc.product)
    return plan_in_context(
        qc,
        service.contracts,
        service.classes,
        total,
        service.ledger.entries(limit=1_000, product=key),
        service.window_seconds,
        volume_per_day,
        reserve_micro(service.policy.current, service.product_budgets.get(key), total),
    )


def _fits_contract(service: ReleaseService, qc: QueryClass) -> bool:
    try:
        check_class(qc, service.contracts)
    except InvalidQueryClasses:
        return False
    return True


@router.post(
    "/plan",
    dependencies=[require("domain_owner", "governance")],
    responses=problems(400, 401, 403, 422),
)
def plan_class(
    service: ServiceDep,
    caller: CallerDep,
    body: QueryClass,
    volume_per_day: Annotated[
        float | None,
        Query(
            ge=0,
            le=1e15,
            description=(
                "Typical value of the statistic per day, used only when no value of the "
                "product was released yet (records, cents, subjects)."
            ),
        ),
    ] = None,
) -> dict[str, Any]:
    """A daily class's cost per day and expected 95% half-width at each resolution, and
    what would meet its declared accuracy (nothing is stored, drawn or spent)."""
    if caller.authenticated and caller.role == "domain_owner" and body.domain not in caller.domains:
        raise Forbidden(f"this key does not own domain {body.domain!r}")
    try:
        check_class(body, service.contracts)
    except InvalidQueryClasses as exc:
        raise InvalidParameters(str(exc)) from exc
    return _plan(service, body, volume_per_day).to_dict()


@router.put(
    "/{class_id}",
    dependencies=[OWNER],
    responses=problems(400, 401, 403, 422),
)
def put_class(
    request: Request,
    service: ServiceDep,
    caller: CallerDep,
    body: QueryClass,
    class_id: str = CLASS_ID,
) -> dict[str, Any]:
    """Add or replace a class of a domain the caller owns (checked against its contract)."""
    if body.id != class_id:
        raise InvalidParameters(f"the body's id {body.id!r} differs from the path's {class_id!r}")
    owned = _owned(caller)
    if owned is not None and body.domain not in owned:
        raise Forbidden(f"this key does not own domain {body.domain!r}")
    if body.release == "daily" and not body.derived_mean and _fits_contract(service, body):
        # A declared accuracy the class cannot meet within its product's budget is refused
        # (422 accuracy_unreachable) with the planner's suggestion; a class that does not
        # fit its contract is left to the registry, which says why.
        check_accuracy(_plan(service, body))
    _registry(request).put(body, owned, _who(caller))
    return describe(service, service.query_class(class_id))


@router.delete(
    "/{class_id}",
    dependencies=[OWNER],
    responses=problems(400, 401, 403, 404, 422),
)
def withdraw_class(request: Request, caller: CallerDep, class_id: str = CLASS_ID) -> dict[str, Any]:
    """Stop serving a class of a domain the caller owns; its ledger entries remain."""
    _registry(request).withdraw(class_id, _owned(caller), _who(caller))
    return {"class_id": class_id, "withdrawn": True}


@router.get(
    "/{class_id}/versions",
    dependencies=[require("domain_owner", "governance")],
    responses=problems(400, 401, 403, 422),
)
def class_versions(request: Request, class_id: str = CLASS_ID) -> dict[str, Any]:
    """Every run-time change of a class: who, when, and the definition."""
    return {
        "class_id": class_id,
        "versions": [
            {
                "seq": v.seq,
                "active": v.active,
                "changed_at": v.changed_at,
                "changed_by": v.changed_by,
                "definition": v.definition or None,
            }
            for v in _registry(request).versions(class_id)
        ],
    }
