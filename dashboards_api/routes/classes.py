"""Domain owners manage their domains' query classes; governance reads the changes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dashboards_api.deps import Caller, CallerDep, ServiceDep, require
from dashboards_api.errors import InvalidParameters
from dashboards_api.query_classes import QueryClass
from dashboards_api.registry import ClassRegistry
from dashboards_api.routes.problems import problems
from dashboards_api.routes.queries import CLASS_ID, describe

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


@router.put(
    "/{class_id}",
    dependencies=[OWNER],  # type: ignore[list-item]
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
    _registry(request).put(body, _owned(caller), _who(caller))
    return describe(service, service.query_class(class_id))


@router.delete(
    "/{class_id}",
    dependencies=[OWNER],  # type: ignore[list-item]
    responses=problems(400, 401, 403, 404, 422),
)
def withdraw_class(request: Request, caller: CallerDep, class_id: str = CLASS_ID) -> dict[str, Any]:
    """Stop serving a class of a domain the caller owns; its ledger entries remain."""
    _registry(request).withdraw(class_id, _owned(caller), _who(caller))
    return {"class_id": class_id, "withdrawn": True}


@router.get(
    "/{class_id}/versions",
    dependencies=[require("domain_owner", "governance")],  # type: ignore[list-item]
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
