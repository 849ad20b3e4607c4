"""Catalog errors; each names the entity at fault and what to fix, with a stable ``code``."""

from __future__ import annotations


class CatalogError(Exception):
    """Base class; ``code`` is machine-readable and never changes meaning; ``status`` is
    the HTTP status the API answers it with."""

    code = "catalog_error"
    status = 400

    def __init__(self, message: str, entity: str | None = None) -> None:
        super().__init__(message)
        self.entity = entity


class UnknownOwner(CatalogError):
    """A contract names an owner that the owners directory does not list."""

    code = "unknown_owner"


class UnknownReference(CatalogError):
    """A contract, query class or task names a domain, product or field that does not exist."""

    code = "unknown_reference"


class LineageCycle(CatalogError):
    """Declared upstream products form a cycle: data would derive from itself."""

    code = "lineage_cycle"


class EntityNotFound(CatalogError):
    """No catalog entity has the requested name."""

    code = "entity_not_found"
    status = 404


class InvalidSearch(CatalogError):
    """A search combines filters that do not apply to the requested kind of entity."""

    code = "invalid_search"
    status = 422


class ExportInvalid(CatalogError):
    """An entity does not validate against the OpenMetadata SDK's generated model."""

    code = "export_invalid"


class ServerUnreachable(CatalogError):
    """The OpenMetadata server does not answer at the configured address."""

    code = "openmetadata_unreachable"
    status = 502


class TokenRejected(CatalogError):
    """The OpenMetadata server refuses the token (401/403)."""

    code = "openmetadata_token_rejected"
    status = 502
