"""Per-domain Feast stores: definitions from the contract, push and online reads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from domains.registry import load_contracts
from feature_repo.errors import UnsupportedOnlineStore
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore, online_store_config


def roundtrip(store: DomainFeatureStore) -> None:
    store.apply()
    features = store.product_features("orders")
    window = int(uuid.uuid4().int % 1_000_000) * 10
    frame = pd.DataFrame(
        [
            {
                "window_start": w,
                "partition": partition,
                "distinct_subjects": subjects,
                "events": subjects + 8,
                "contribution_bound": 20,
                "amount_cents_sum": 1000.0 + partition,
                "amount_cents_sum_cap": 100_658.0 - partition,
                "complete": partition,  # partition 1's watermark passed, partition 0's not
                "watermark": w + 12 + partition,
                "late_events": 3,
                "new_subjects_period": subjects // 2,
                "new_subjects_hour": subjects - 1,
                "truncated_events": 5,
                "max_records_per_period": 10,
                "max_windows_per_period": 10 - partition,
                "event_timestamp": datetime.now(UTC),
            }
            for w, partition, subjects in [(window, 0, 40), (window, 1, 2), (window - 10, 0, 7)]
        ]
    )
    store.push(features.window_push.name, frame)
    rows = store.window_stats("orders", [window, window - 10, window - 20], partitions=2)
    assert rows[0]["distinct_subjects"] == 42 and rows[0]["amount_cents_sum"] == 2001.0
    # the contribution bound is the largest one used, not a sum over partitions
    assert rows[0]["contribution_bound"] == 20
    # completeness: partitions whose watermark passed; late events add up; oldest watermark
    assert (rows[0]["complete"], rows[0]["late_events"], rows[0]["partitions"]) == (1, 6, 2)
    assert rows[0]["watermark"] == window + 12
    # the per-day bounds' counts add up over partitions; the bounds are the largest used
    assert (rows[0]["new_subjects_period"], rows[0]["new_subjects_hour"]) == (21, 40)
    assert rows[0]["truncated_events"] == 10
    assert (rows[0]["max_records_per_period"], rows[0]["max_windows_per_period"]) == (10, 10)
    assert rows[0]["amount_cents_sum_cap"] == 100_658.0  # the per-day cap: the largest used
    # a window missing from one partition, or from all, is not released as a partial sum
    assert rows[1]["distinct_subjects"] is None and rows[2]["distinct_subjects"] is None
    assert store.window_stats("orders", [window - 10], partitions=1)[0]["events"] == 15


def test_sqlite_store_roundtrip(tmp_path: Path) -> None:
    """Window aggregates pushed to the default sqlite store are read back online."""
    roundtrip(DomainFeatureStore(load_contracts()["shop"], tmp_path, FeatureStoreSettings()))
    assert (tmp_path / "features" / "shop" / "feature_store.yaml").exists()


def test_fields_carry_privacy_tags(tmp_path: Path) -> None:
    """Every feature field carries a privacy tag derived from the contract."""
    store = DomainFeatureStore(load_contracts()["shop"], tmp_path, FeatureStoreSettings())
    features = store.product_features("orders")
    for view in (features.subject_view, features.window_view):
        for field in view.schema:
            if field.name != "subject":
                assert field.tags.get("privacy_tag"), (view.name, field.name)
    amount = next(f for f in features.subject_view.schema if f.name == "amount_cents_sum")
    assert amount.tags == {"privacy_tag": "sensitive", "source_field": "amount_cents"}


def test_unsupported_online_store(tmp_path: Path) -> None:
    """An unknown online-store URL names the setting and the supported forms."""
    with pytest.raises(UnsupportedOnlineStore, match="PRIVMESH_FEATURES_ONLINE_STORE"):
        online_store_config("mongodb://x", tmp_path)


def test_redis_url_parsing(tmp_path: Path) -> None:
    """redis:// URLs become Feast connection strings with db and password."""
    config = online_store_config("redis://:pw@cache:6380/2", tmp_path)
    assert config == {"type": "redis", "connection_string": "cache:6380,db=2,password=pw"}


@pytest.mark.integration
def test_redis_store_roundtrip(tmp_path: Path, redis_url: str) -> None:
    """The same push/read works with Redis as the online store (one setting)."""
    settings = FeatureStoreSettings(online_store=redis_url)
    roundtrip(DomainFeatureStore(load_contracts()["shop"], tmp_path, settings))


@pytest.mark.integration
def test_postgres_store_roundtrip(tmp_path: Path, postgres_url: str) -> None:
    """The same push/read works with Postgres as the online store (one setting)."""
    settings = FeatureStoreSettings(online_store=postgres_url)
    roundtrip(DomainFeatureStore(load_contracts()["shop"], tmp_path, settings))
