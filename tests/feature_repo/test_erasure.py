"""Erasing subjects removes their online rows (sqlite, Redis, Postgres) and offline history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from domains.registry import load_contracts
from feature_repo.errors import NoOfflineHistory
from feature_repo.offline import part_files, read_all
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore


def subject_rows(subjects: list[str], window: int, at: datetime) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "subject": s,
                "window_start": window,
                "events": i + 1,
                "amount_cents_sum": 100.0 * (i + 1),
                "event_timestamp": at,
            }
            for i, s in enumerate(subjects)
        ]
    )


def erase_roundtrip(store: DomainFeatureStore) -> None:
    store.apply()
    view = store.product_features("orders").subject_view.name
    push = store.product_features("orders").subject_push.name
    run = uuid.uuid4().hex[:8]
    gone, kept = f"k1.gone{run}", f"k1.kept{run}"
    at = datetime.now(UTC) - timedelta(minutes=5)
    frame = subject_rows([gone, kept], 1_795_000_000, at)
    store.push(push, frame)
    store.append_offline(view, frame)
    store.append_offline(view, subject_rows([gone], 1_795_000_010, at + timedelta(seconds=10)))
    assert [r["events"] for r in store.subject_features("orders", [gone, kept])] == [1, 2]

    erased = store.erase_subjects({gone})

    assert erased.online >= 1 and erased.offline == 2
    after = store.subject_features("orders", [gone, kept])
    assert after[0]["events"] is None and after[1]["events"] == 2
    history = read_all(store.offline_folder(view))
    assert set(history["subject"]) == {kept}
    assert len(part_files(store.offline_folder(view))) == 1  # the emptied part file is gone
    again = store.erase_subjects({gone})
    assert again.online == 0 and again.offline == 0


def test_sqlite_erasure(tmp_path: Path) -> None:
    erase_roundtrip(DomainFeatureStore(load_contracts()["shop"], tmp_path, FeatureStoreSettings()))


@pytest.mark.integration
def test_redis_erasure(tmp_path: Path, redis_url: str) -> None:
    settings = FeatureStoreSettings(online_store=redis_url)
    erase_roundtrip(DomainFeatureStore(load_contracts()["shop"], tmp_path, settings))


@pytest.mark.integration
def test_postgres_erasure(tmp_path: Path, postgres_url: str) -> None:
    settings = FeatureStoreSettings(online_store=postgres_url)
    erase_roundtrip(DomainFeatureStore(load_contracts()["shop"], tmp_path, settings))


def test_historical_features_are_point_in_time(tmp_path: Path) -> None:
    """Training reads the offline parquet history with Feast's point-in-time join."""
    store = DomainFeatureStore(load_contracts()["shop"], tmp_path, FeatureStoreSettings())
    store.apply()
    view = store.product_features("orders").subject_view.name
    entity_rows = pd.DataFrame(
        {"subject": ["k1.a"], "event_timestamp": [datetime(2026, 11, 1, 12, 0, 30, tzinfo=UTC)]}
    )
    with pytest.raises(NoOfflineHistory):
        store.historical_features("orders", entity_rows)
    t0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    store.append_offline(view, subject_rows(["k1.a"], 100, t0))
    store.append_offline(view, subject_rows(["k1.a"], 110, t0 + timedelta(seconds=20)))
    store.append_offline(view, subject_rows(["k1.a"], 120, t0 + timedelta(seconds=40)))
    frame = store.historical_features("orders", entity_rows)
    assert frame.loc[0, "window_start"] == 110
