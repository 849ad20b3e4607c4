"""Settings of the DP dashboards API."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["consumer", "domain_owner", "governance"]


class ApiSettings(BaseSettings):
    """HTTP server, ledger and credentials (env prefix ``PRIVMESH_API_``).

    ``ledger_url`` is ``sqlite`` (a file under the data directory, one API process)
    or ``postgresql://user@host:port/db`` (shared by several API replicas).
    ``keys`` maps API keys to roles, as JSON: ``{"key-1": "consumer"}``; empty
    means open access, which is refused when ``PRIVMESH_ENV=production``.
    """

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_API_", extra="ignore")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1024, le=65535)] = 8000
    ledger_url: str = "sqlite"
    keys: dict[str, Role] = Field(default_factory=dict, repr=False)
    release_lookback_windows: Annotated[int, Field(ge=1, le=100)] = 3
    history_windows: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=8_640,
        description="How many past stream windows a client may ask to release (window_start).",
    )
    live_poll_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.5, description="How often the live endpoint checks for newly closed windows."
    )
    live_keepalive_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        default=15.0, description="Idle time after which the live stream sends a comment line."
    )


@cache
def get_api_settings() -> ApiSettings:
    """Process-wide API settings (tests override through FastAPI dependencies)."""
    return ApiSettings()
