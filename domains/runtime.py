"""Deployment facts every component shares: environment name and data directory.

Read from ``PRIVMESH_ENV`` and ``PRIVMESH_DATA_DIR``. Components embed these in
their own settings classes instead of reading the environment themselves.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    """Development allows generated local secrets and open endpoints; production does not."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


class RuntimeSettings(BaseSettings):
    """Shared runtime facts (env prefix ``PRIVMESH_``)."""

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_", extra="ignore")

    env: Environment = Environment.DEVELOPMENT
    data_dir: Path = Field(
        default=Path(".privmesh"),
        description="Where local state lives: broker-independent stores, ledger, logs, keys.",
    )
    contracts_dir: Path | None = Field(
        default=None,
        description="Folder of domain contract YAML files; the packaged demo contracts if unset.",
    )

    @property
    def is_production(self) -> bool:
        """True outside development: unsafe defaults are refused."""
        return self.env is Environment.PRODUCTION


@cache
def get_runtime() -> RuntimeSettings:
    """The process-wide runtime settings (tests call ``get_runtime.cache_clear()``)."""
    return RuntimeSettings()
