"""Settings of the DP dashboards API."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dashboards_api.policy import GovernancePolicy
from domains.addresses import BindAddress

Role = Literal["consumer", "domain_owner", "governance"]


class KeyGrant(BaseModel):
    """What one API key may do: its role and, for a domain owner, the domains it owns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    domains: frozenset[str] = Field(
        default=frozenset(),
        description="Domains whose query classes a domain_owner key may change.",
    )


def grant_of(value: Role | KeyGrant) -> KeyGrant:
    """A bare role string is a grant with no domains."""
    return value if isinstance(value, KeyGrant) else KeyGrant(role=value)


class ApiSettings(BaseSettings):
    """HTTP server, ledger and credentials (env prefix ``PRIVMESH_API_``).

    ``ledger_url`` is ``sqlite`` (a file under the data directory, one API process)
    or ``postgresql://user@host:port/db`` (shared by several API replicas).
    ``keys`` maps API keys to roles, as JSON: ``{"key-1": "consumer", "key-2":
    {"role": "domain_owner", "domains": ["shop"]}}``; empty means open access, which
    is refused when ``PRIVMESH_ENV=production``.
    """

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_API_", extra="ignore")

    host: BindAddress = Field(
        default="127.0.0.1",
        description="Address the API (and the posture page) listens on: loopback in "
        "development, 0.0.0.0 or :: to be reached from other hosts (the manifests set it).",
    )
    port: Annotated[int, Field(ge=1024, le=65535)] = 8000
    ledger_url: str = "sqlite"
    keys: dict[str, Role | KeyGrant] = Field(default_factory=dict, repr=False)
    release_lookback_windows: Annotated[int, Field(ge=1, le=100)] = 3
    history_windows: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=8_640,
        description="How many past stream windows a client may ask to release (window_start).",
    )
    live_poll_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.5, description="How often the live endpoint checks for newly closed windows."
    )
    registry_sync_seconds: Annotated[float, Field(ge=0, le=300)] = Field(
        default=2.0,
        description="How often a replica reloads the classes domain owners changed elsewhere.",
    )
    live_keepalive_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        default=15.0, description="Idle time after which the live stream sends a comment line."
    )
    policy: GovernancePolicy = Field(
        default_factory=GovernancePolicy,
        description=(
            "The governance policy until the governance role stores one (JSON: caps on "
            "epsilon per release, per class and per product per day, default product total)."
        ),
    )


@cache
def get_api_settings() -> ApiSettings:
    """Process-wide API settings (tests override through FastAPI dependencies)."""
    return ApiSettings()
