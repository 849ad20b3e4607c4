"""Settings of the privacy-posture view and its alerts."""

from __future__ import annotations

from functools import cache
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PostureSettings(BaseSettings):
    """The privacy-posture view and its alerts (env prefix ``PRIVMESH_POSTURE_``)."""

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_POSTURE_", extra="ignore")

    worker_health_urls: dict[str, str] = Field(
        default_factory=dict,
        description='Health URL per domain, e.g. {"shop": "http://shop-1:6066/privmesh/health"}; '
        "empty: the workers `privmesh up` recorded.",
    )
    timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 1.0
    budget_alert_share: Annotated[float, Field(gt=0, le=1)] = 0.9
    mia_advantage_alert: Annotated[float, Field(ge=0, le=1)] = 0.1
    dsr_deadline_seconds: Annotated[float, Field(gt=0)] = Field(
        default=2.0, description="A data-subject request slower than this is a finding."
    )


@cache
def get_posture_settings() -> PostureSettings:
    """Process-wide posture settings."""
    return PostureSettings()
