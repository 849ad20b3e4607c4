"""Deployment facts every component shares: environment name and data directory.

Read from ``PRIVMESH_ENV`` and ``PRIVMESH_DATA_DIR``. Components embed these in
their own settings classes instead of reading the environment themselves.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_DOMAINS_DIR = Path(__file__).with_name("demo")


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
    domain_dirs: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(DEMO_DOMAINS_DIR,),
        description=(
            "Folders of domain folders the mesh loads (os.pathsep- or comma-separated); each "
            "<folder>/<domain>/ holds contract.yaml, query_classes, tasks and owners.yaml. "
            "The packaged demo domains if unset; an empty value loads none."
        ),
    )
    contracts_dir: Path | None = Field(
        default=None,
        description=(
            "Deprecated: a flat folder of contract YAML files, loaded as well (each borrows "
            "the query classes, tasks and owners of the packaged demo domain of its name). "
            "Without PRIVMESH_DOMAIN_DIRS it replaces the demo domains."
        ),
    )

    @field_validator("domain_dirs", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            parts = value.replace(os.pathsep, ",").split(",")
            return tuple(Path(p.strip()) for p in parts if p.strip())
        return value

    @property
    def is_production(self) -> bool:
        """True outside development: unsafe defaults are refused."""
        return self.env is Environment.PRODUCTION


@cache
def get_runtime_settings() -> RuntimeSettings:
    """The process-wide runtime settings, read once from the environment.

    Every component reads them through here, never ``RuntimeSettings()``; a process that
    changes its environment (tests, the zygote's children) calls
    ``get_runtime_settings.cache_clear()`` to read them again.
    """
    return RuntimeSettings()
