"""FastAPI dependencies: the release service, the ledger and the caller's role."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, params

from dashboards_api.errors import Forbidden, Unauthorized
from dashboards_api.ledger import ReleaseLedger
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import KeyGrant, Role


@dataclass(frozen=True)
class Caller:
    """Who is asking: a role and owned domains (never the key itself)."""

    role: Role | None
    authenticated: bool
    domains: frozenset[str] = frozenset()

    def owns(self, domain: str) -> bool:
        """May this caller manage ``domain``'s classes? (Open development: yes.)"""
        if not self.authenticated:
            return True
        return self.role == "domain_owner" and domain in self.domains


async def get_service(request: Request) -> ReleaseService:
    """The app's release service, with classes other replicas changed reloaded."""
    request.app.state.registry.maybe_sync()
    service: ReleaseService = request.app.state.service
    return service


async def get_ledger(request: Request) -> ReleaseLedger:
    """The app's ledger (its releases: what routes read)."""
    ledger: ReleaseLedger = request.app.state.service.ledger
    return ledger


async def get_caller(request: Request) -> Caller:
    """Authenticate ``Authorization: Bearer <key>`` (or ``X-API-Key``) against the keys."""
    keys: dict[str, KeyGrant] = request.app.state.api_keys
    if not keys:
        return Caller(role=None, authenticated=False)  # development: open access
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
    presented = presented or request.headers.get("x-api-key", "").strip()
    if not presented:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    for key, grant in keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            return Caller(role=grant.role, authenticated=True, domains=grant.domains)
    raise Unauthorized("the API key is not recognised")


def require(*roles: Role) -> params.Depends:
    """Dependency that admits only callers holding one of ``roles`` (or open development),
    typed as what a route's ``dependencies=[...]`` takes."""

    async def check(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
        if caller.authenticated and caller.role not in roles:
            raise Forbidden(f"this endpoint needs one of the roles: {', '.join(roles)}")
        return caller

    return params.Depends(check)


ServiceDep = Annotated[ReleaseService, Depends(get_service)]
LedgerDep = Annotated[ReleaseLedger, Depends(get_ledger)]
CallerDep = Annotated[Caller, Depends(get_caller)]
