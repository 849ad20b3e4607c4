"""Opening a domain's Feast store, applying its definitions, pushing and reading."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import yaml
from feast import FeatureStore, RepoConfig
from feast.data_source import PushMode

from domains.contract import DataProduct, DomainContract
from feature_repo.definitions import WINDOW_KEY, ProductFeatures, build_features
from feature_repo.errors import StoreNotApplied, UnsupportedOnlineStore
from feature_repo.settings import FeatureStoreSettings


def online_store_config(url: str, domain_dir: Path) -> dict[str, Any]:
    """Feast ``online_store`` settings for ``url`` (sqlite | redis:// | postgresql://)."""
    if url == "sqlite":
        return {"type": "sqlite", "path": str(domain_dir / "online.db")}
    parts = urlsplit(url)
    if parts.scheme in {"redis", "rediss"}:
        host = parts.hostname or "127.0.0.1"
        conn = f"{host}:{parts.port or 6379}"
        db = parts.path.strip("/")
        if db:
            conn += f",db={db}"
        if parts.password:
            conn += f",password={parts.password}"
        if parts.scheme == "rediss":
            conn += ",ssl=true"
        return {"type": "redis", "connection_string": conn}
    if parts.scheme in {"postgres", "postgresql"}:
        return {
            "type": "postgres",
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 5432,
            "database": parts.path.strip("/") or "postgres",
            "user": parts.username or "postgres",
            "password": parts.password or "",
            "db_schema": "public",
            # Feast defaults to sslmode=require; follow the URL (libpq's default is "prefer").
            "sslmode": parse_qs(parts.query).get("sslmode", ["prefer"])[0],
        }
    raise UnsupportedOnlineStore(
        f"PRIVMESH_FEATURES_ONLINE_STORE={url!r} is not supported; use 'sqlite', "
        "'redis://host:port[/db]' or 'postgresql://user@host:port/db'"
    )


class DomainFeatureStore:
    """One domain's Feast store (its own project, registry and online tables)."""

    def __init__(
        self, contract: DomainContract, data_dir: Path, settings: FeatureStoreSettings
    ) -> None:
        self.contract = contract
        self.directory = (data_dir / "features" / contract.domain).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        online = online_store_config(settings.online_store, self.directory)
        config: dict[str, Any] = {
            "project": f"privmesh_{contract.domain}",
            "provider": "local",
            "registry": {
                "path": str(self.directory / "registry.db"),
                "cache_ttl_seconds": settings.registry_cache_ttl_seconds,
            },
            "online_store": online,
            "offline_store": {"type": "file"},
            "entity_key_serialization_version": 3,
            "repo_path": str(self.directory),
        }
        self._config_dict = config
        self.store = FeatureStore(config=RepoConfig(**config))
        self.features = {
            p.name: build_features(p, self.directory / "offline") for p in contract.products
        }

    def write_feature_store_yaml(self) -> Path:
        """Write ``feature_store.yaml`` so the ``feast`` CLI can inspect this store."""
        path = self.directory / "feature_store.yaml"
        path.write_text(yaml.safe_dump(self._config_dict, sort_keys=False), encoding="utf-8")
        return path

    def apply(self) -> None:
        """Register every product's entities, sources and feature views (idempotent)."""
        objects: list[Any] = []
        seen: set[str] = set()
        for features in self.features.values():
            for obj in features.objects():
                key = f"{type(obj).__name__}:{getattr(obj, 'name', '')}"
                if key not in seen:
                    seen.add(key)
                    objects.append(obj)
        (self.directory / "offline").mkdir(exist_ok=True)
        self.store.apply(objects)
        self.write_feature_store_yaml()

    def product_features(self, product: DataProduct | str) -> ProductFeatures:
        """The feature definitions of ``product``."""
        name = product if isinstance(product, str) else product.name
        return self.features[name]

    def push(self, push_source: str, rows: pd.DataFrame) -> None:
        """Write rows through a push source to the online store."""
        self.store.push(push_source, rows, to=PushMode.ONLINE)

    def window_stats(self, product: str, window_starts: list[int]) -> list[dict[str, Any]]:
        """Online window aggregates for ``window_starts`` (missing windows have None values)."""
        features = self.product_features(product)
        names = ["distinct_subjects", "events", *features.measure_features]
        refs = [f"{features.window_view.name}:{n}" for n in names]
        try:
            response = self.store.get_online_features(
                features=refs, entity_rows=[{WINDOW_KEY: w} for w in window_starts]
            ).to_dict()
        except Exception as exc:  # Feast raises several unrelated types when unapplied
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                raise StoreNotApplied(
                    f"feature store of domain {self.contract.domain!r} is not applied; "
                    "run `privmesh features apply`"
                ) from exc
            raise
        return [
            {WINDOW_KEY: w, **{n: response[n][i] for n in names}}
            for i, w in enumerate(window_starts)
        ]
