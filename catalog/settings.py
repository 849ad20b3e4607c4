"""Catalog settings (env prefix ``PRIVMESH_CATALOG_``): OpenMetadata target and names."""

from __future__ import annotations

from functools import cache
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CatalogSettings(BaseSettings):
    """Where ``privmesh catalog push`` sends the catalog, and the names it files it under.

    ``openmetadata_url`` is the server's base address (``http://host:8585``; the client
    adds ``/api``). ``openmetadata_token`` is a bot's JWT. The messaging and database
    services are created if absent: the Kafka cluster's topics and the domains' Feast
    stores appear under them.
    """

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_CATALOG_", extra="ignore")

    openmetadata_url: str = "http://127.0.0.1:8585"
    openmetadata_token: SecretStr | None = Field(default=None, repr=False)
    messaging_service: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = "privmesh_kafka"
    database_service: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = "privmesh_feast"
    classification: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")] = "privmesh"
    push_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    cache_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=5.0, description="How long the API reuses an assembled catalog."
    )


@cache
def get_catalog_settings() -> CatalogSettings:
    """Process-wide catalog settings (tests call ``get_catalog_settings.cache_clear()``)."""
    return CatalogSettings()
