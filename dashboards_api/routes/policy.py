"""The governance policy: read by every role, changed by the governance role only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dashboards_api.deps import Caller, CallerDep, ServiceDep, require
from dashboards_api.policy import GovernancePolicy
from dashboards_api.registry import ClassRegistry
from dashboards_api.releases import ReleaseService
from dashboards_api.routes.problems import problems

router = APIRouter(prefix="/v1/policy", tags=["policy"])


def _view(service: ReleaseService) -> dict[str, Any]:
    cell = service.policy
    return {"version": cell.seq, "policy": cell.current.model_dump(mode="json")}


@router.get(
    "",
    dependencies=[require("consumer", "domain_owner", "governance")],
    responses=problems(401, 403),
)
def get_policy(service: ServiceDep) -> dict[str, Any]:
    """The governance policy in force (version 0: the settings' policy) and its caps."""
    return _view(service)


@router.put(
    "",
    dependencies=[require("governance")],
    responses=problems(401, 403, 422),
)
def put_policy(
    request: Request, service: ServiceDep, caller: CallerDep, body: GovernancePolicy
) -> dict[str, Any]:
    """Store a new policy version (kept in the ledger database; every replica applies it)."""
    registry: ClassRegistry = request.app.state.registry
    registry.put_policy(body, _who(caller))
    return _view(service)


def _who(caller: Caller) -> str:
    return "development (no API keys)" if not caller.authenticated else f"{caller.role}"
