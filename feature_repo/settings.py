"""Settings of the per-domain Feast stores."""

from __future__ import annotations

from functools import cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FeatureStoreSettings(BaseSettings):
    """Feast online/offline store choice (env prefix ``PRIVMESH_FEATURES_``).

    ``online_store`` is ``sqlite`` (default: one file per domain under the data
    directory), ``redis://host:port[/db]`` or ``postgresql://user@host:port/db``.
    Each domain gets its own Feast project, so domains never share tables or keys.
    """

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_FEATURES_", extra="ignore")

    online_store: str = Field(
        default="sqlite", description="sqlite | redis://... | postgresql://..."
    )
    registry_cache_ttl_seconds: int = Field(default=60, ge=0)


@cache
def get_feature_settings() -> FeatureStoreSettings:
    """Process-wide feature-store settings."""
    return FeatureStoreSettings()
