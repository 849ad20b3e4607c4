"""Send the catalog to an OpenMetadata server with the SDK's real client, idempotently.

Every entity goes through ``OpenMetadata.create_or_update`` (HTTP PUT: create, or update
in place), lineage through ``add_lineage``; re-running a push changes nothing that did
not change. References carry placeholder ids (``catalog.openmetadata``): each is replaced
by the id the server gave the referenced entity earlier in the same push, or looked up by
name when that entity was pushed before. Each entity's outcome is reported on its own; an
entity whose reference could not be resolved fails with the name of what it needs, and
the rest go on. An unreachable server or a rejected token stops the push at once with a
clear error (nothing would succeed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from catalog.errors import CatalogError, ServerUnreachable, TokenRejected
from catalog.openmetadata import Request, placeholder_id, quiet_sdk_import

log = logging.getLogger(__name__)
Status = Literal["created", "updated", "failed"]

# The SDK's entity model of each type (under metadata.generated.schema.entity), for lookups.
_ENTITY_CLASSES = {
    "classification": "classification.classification:Classification",
    "tag": "classification.tag:Tag",
    "team": "teams.team:Team",
    "domain": "domains.domain:Domain",
    "dataProduct": "domains.dataProduct:DataProduct",
    "messagingService": "services.messagingService:MessagingService",
    "databaseService": "services.databaseService:DatabaseService",
    "database": "data.database:Database",
    "databaseSchema": "data.databaseSchema:DatabaseSchema",
    "topic": "data.topic:Topic",
    "table": "data.table:Table",
}  # fmt: skip


@dataclass(frozen=True)
class EntityResult:
    """What happened to one entity (or lineage edge) of a push."""

    entity_type: str
    fqn: str
    status: Status
    error: str | None = None


@dataclass
class PushReport:
    """Per-entity outcomes of a push, in push order."""

    server: str
    results: list[EntityResult] = field(default_factory=list)

    @property
    def failed(self) -> list[EntityResult]:
        """The entities that did not make it."""
        return [r for r in self.results if r.status == "failed"]

    def counts(self) -> dict[str, int]:
        """How many entities were created, updated and failed."""
        out = {"created": 0, "updated": 0, "failed": 0}
        for result in self.results:
            out[result.status] += 1
        return out


def connect(url: str, token: str, timeout_seconds: float = 30.0) -> Any:
    """The SDK client of the server at ``url`` (``http://host:8585``) with a bot's JWT;
    refuses an unreachable server or a rejected token with a clear error."""
    with quiet_sdk_import():
        from metadata.generated.schema.entity.services.connections.metadata.openMetadataConnection import (  # noqa: E501
            AuthProvider,
            OpenMetadataConnection,
        )
        from metadata.generated.schema.security.client.openMetadataJWTClientConfig import (
            OpenMetadataJWTClientConfig,
        )
        from metadata.ingestion.ometa.client import APIError
        from metadata.ingestion.ometa.ometa_api import OpenMetadata

    host = url.rstrip("/")
    host = host if host.endswith("/api") else f"{host}/api"
    config = OpenMetadataConnection.model_validate(
        {
            "hostPort": host,
            "authProvider": AuthProvider.openmetadata,
            "securityConfig": OpenMetadataJWTClientConfig.model_validate({"jwtToken": token}),
        }
    )
    try:
        client: Any = OpenMetadata(config, additional_client_config_arguments={"retry": 0})
        client.health_check()
    except APIError as exc:
        raise _api_failure(exc, url) from exc
    except Exception as exc:  # connection refused, DNS, TLS, timeout: all "cannot reach"
        if _rejected(exc):
            raise TokenRejected(_token_message(url), url) from exc
        raise ServerUnreachable(
            f"OpenMetadata at {url} does not answer ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); check the address "
            "(--server / PRIVMESH_CATALOG_OPENMETADATA_URL) and that the server is up",
            url,
        ) from exc
    return client


def push(requests: list[Request], client: Any, server: str = "") -> PushReport:
    """Create or update every request's entity on ``client``'s server, in order."""
    return _Pusher(client, server).run(requests)


class _Pusher:
    def __init__(self, client: Any, server: str) -> None:
        self.client = client
        self.report = PushReport(server)
        self.ids: dict[tuple[str, str], str] = {}
        self.failed: set[tuple[str, str]] = set()

    def run(self, requests: list[Request]) -> PushReport:
        for request in requests:
            try:
                status = self._one(request)
            except (TokenRejected, ServerUnreachable):
                raise
            except _Unresolved as exc:
                self._fail(request, str(exc))
            except Exception as exc:  # one entity's failure never stops the others
                self._check_fatal(exc)
                self._fail(request, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            else:
                self.report.results.append(EntityResult(request.entity_type, request.fqn, status))
        return self.report

    def _fail(self, request: Request, error: str) -> None:
        log.warning("push of %s %s failed: %s", request.entity_type, request.fqn, error)
        self.failed.add((request.entity_type, request.fqn))
        self.report.results.append(EntityResult(request.entity_type, request.fqn, "failed", error))

    def _one(self, request: Request) -> Status:
        body = self._resolved(request.as_json())
        model = type(request.model).model_validate(body)
        if request.entity_type == "lineage":
            result = self.client.add_lineage(model)
            if isinstance(result, dict) and result.get("error"):
                raise RuntimeError(str(result["error"]))
            return "updated"
        entity = self.client.create_or_update(model)
        self.ids[(request.entity_type, request.fqn)] = str(entity.id.root)
        version = getattr(entity, "version", None)
        version_value = getattr(version, "root", version)
        return "created" if version_value in (None, 0.1) else "updated"

    def _resolved(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._resolved(v) for v in value]
        if not isinstance(value, dict):
            return value
        if {"id", "type", "fullyQualifiedName"} <= value.keys():
            kind, fqn = value["type"], value["fullyQualifiedName"]
            if value["id"] == placeholder_id(kind, fqn):
                return {**value, "id": self._id_of(kind, fqn)}
        return {k: self._resolved(v) for k, v in value.items()}

    def _id_of(self, kind: str, fqn: str) -> str:
        known = self.ids.get((kind, fqn))
        if known is not None:
            return known
        if (kind, fqn) in self.failed:
            raise _Unresolved(f"needs {kind} {fqn}, whose own push failed")
        entity = self.client.get_by_name(entity=_entity_class(kind), fqn=fqn)
        if entity is None:
            raise _Unresolved(f"needs {kind} {fqn}, which the server does not have")
        self.ids[(kind, fqn)] = str(entity.id.root)
        return self.ids[(kind, fqn)]

    @staticmethod
    def _check_fatal(exc: Exception) -> None:
        from metadata.ingestion.ometa.client import APIError

        if isinstance(exc, APIError) and exc.status_code in (401, 403):
            raise TokenRejected(_token_message("the server"), None) from exc
        if _connection_error(exc):
            raise ServerUnreachable(
                f"lost the OpenMetadata server mid-push ({type(exc).__name__}); re-run the "
                "push: it is idempotent",
                None,
            ) from exc


class _Unresolved(CatalogError):
    code = "openmetadata_unresolved_reference"


def _entity_class(kind: str) -> Any:
    import importlib

    module, _, name = f"metadata.generated.schema.entity.{_ENTITY_CLASSES[kind]}".partition(":")
    return getattr(importlib.import_module(module), name)


def _api_failure(exc: Any, url: str) -> CatalogError:
    if getattr(exc, "status_code", None) in (401, 403):
        return TokenRejected(_token_message(url), url)
    return ServerUnreachable(f"OpenMetadata at {url} answered with an error: {exc}", url)


def _token_message(url: str) -> str:
    return (
        f"OpenMetadata at {url} rejects the token (401/403); give a bot's JWT with write "
        "access (--token / PRIVMESH_CATALOG_OPENMETADATA_TOKEN)"
    )


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = [exc]
    while len(chain) < 10:
        nxt = chain[-1].__cause__ or chain[-1].__context__ or getattr(chain[-1], "cause", None)
        if not isinstance(nxt, BaseException):
            break
        chain.append(nxt)
    return chain


def _rejected(exc: BaseException) -> bool:
    return any(getattr(e, "status_code", None) in (401, 403) for e in _chain(exc))


def _connection_error(exc: BaseException) -> bool:
    import requests
    from metadata.ingestion.ometa.client import RestTransportError

    return any(
        isinstance(e, requests.exceptions.ConnectionError | RestTransportError) for e in _chain(exc)
    )
