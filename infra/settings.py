"""Settings of the local stack launcher and the synthetic event generator."""

from __future__ import annotations

from functools import cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GeneratorSettings(BaseSettings):
    """Synthetic event generator (env prefix ``PRIVMESH_GENERATOR_``)."""

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_GENERATOR_", extra="ignore")

    rate: Annotated[float, Field(ge=0, le=1_000_000)] = 200.0
    people: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=100_000,
        description="Size of the fake people pool every domain's events come from.",
    )
    activity_sigma: Annotated[float, Field(ge=0, le=4)] = Field(
        default=1.5,
        description="Log-normal sigma of each person's activity weight (0: everyone equally "
        "active; 1.5: most people a few events a day, a few hundreds), the generator's "
        "DEFAULT_ACTIVITY_SIGMA.",
    )
    product_shares: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Relative share of the events per product, as JSON such as "
        '{"shop.orders": 0.03, "web.page_views": 0.66}; empty: the generator\'s '
        "PRODUCT_SHARES (page views most, orders 3%, tickets 1%).",
    )
    bad_ratio: Annotated[float, Field(ge=0, le=1)] = 0.02
    seed: int = 7
    consent_grant_share: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.9, description="Share of the people who grant consent to opt-in purposes."
    )
    consent_withdraw_share: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.02, description="Share of the people who withdraw (or object) per purpose."
    )

    @field_validator("product_shares")
    @classmethod
    def _product_keys(cls, shares: dict[str, float]) -> dict[str, float]:
        bad = [key for key in shares if not all(key.partition(".")[::2])]
        if bad:
            raise ValueError(f"product_shares keys must read 'domain.product', not {bad}")
        return shares

    def shares(self) -> dict[tuple[str, str], float] | None:
        """``product_shares`` keyed by (domain, product); None: the generator's defaults."""
        if not self.product_shares:
            return None
        split = {key: key.partition(".") for key in self.product_shares}
        return {(d, p): self.product_shares[key] for key, (d, _, p) in split.items()}


class StackSettings(BaseSettings):
    """What ``privmesh up`` runs (env prefix ``PRIVMESH_STACK_``)."""

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_STACK_", extra="ignore")

    domains: list[str] = Field(
        default_factory=list,
        description='Domains `up` runs, as a JSON list such as ["shop"]; empty: every contract.',
    )
    start_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 90.0
    stop_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 15.0
    max_restarts: Annotated[int, Field(ge=0, le=100)] = Field(
        default=5,
        description="Restarts of one component within the window before it is marked failed.",
    )
    restart_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    backoff_initial_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        default=1.0, description="Backoff before a component's first restart; doubles after."
    )
    backoff_max_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0, description="Cap of the restart backoff (half of each wait is jitter)."
    )
    component_env: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='Extra environment per component, as JSON such as {"worker-shop": '
        '{"PRIVMESH_STREAMS_BATCH_SIZE": "500"}}: one component\'s settings differ.',
    )
    generator: bool = Field(
        default=True,
        description="Run the demo generator (false: the events come from elsewhere).",
    )
    fast_restarts: bool = Field(
        default=True,
        description="Restart workers, API, retention and generator by forking a pre-imported "
        "zygote (a few seconds) instead of a cold start; false: always a cold start.",
    )
    retention_every_seconds: Annotated[float, Field(ge=0, le=604_800)] = Field(
        default=3600.0,
        description="How often `up` runs the retention pass (0: never; `privmesh retention run`).",
    )


@cache
def get_generator_settings() -> GeneratorSettings:
    """Process-wide generator settings."""
    return GeneratorSettings()


@cache
def get_stack_settings() -> StackSettings:
    """Process-wide launcher settings."""
    return StackSettings()
