"""From a throttled processor to the API: windows written to a real Feast store are released
complete only when every partition's watermark passed them; the others are marked partial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dashboards_api.ledger import SqliteLedger
from dashboards_api.releases import ReleaseService
from domains.registry import load_contracts
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.pipeline import partition_for
from tests.dashboards_api.per_window import raised_policy, window_classes
from tests.streams.test_pipeline import T0
from tests.streams.test_watermarks import WINDOW, per_window, produced, throttled_run

CLASS = "shop.orders.distinct_customers"


def store_with(tmp_path: Path, records: list[dict[str, Any]]) -> DomainFeatureStore:
    store = DomainFeatureStore(load_contracts()["shop"], tmp_path, FeatureStoreSettings())
    store.apply()
    view = store.store.get_feature_view(store.product_features("orders").window_view.name)
    store.write_online(view, records)
    return store


def service(tmp_path: Path, store: DomainFeatureStore) -> ReleaseService:
    return ReleaseService(
        classes=window_classes(),
        policy=raised_policy(),
        contracts=load_contracts(),
        sources={"shop": store},
        ledger=SqliteLedger(tmp_path / "ledger.db"),
        window_seconds=WINDOW,
        grace_seconds=2,
        lookback_windows=3,
        partitions=2,
        clock=lambda: T0 + 600,
    )


def test_throttled_windows_reach_the_api_complete_or_partial(tmp_path: Path) -> None:
    """Every window both partitions closed by their watermark is released partial: false;
    windows some partition closed by the wall clock say partial with the complete share."""
    events = produced(60, 20.0, seed=11)
    _, records = throttled_run(events, slowdown=3.0, drain_every=1.0)
    rows = per_window(records)
    api = service(tmp_path, store_with(tmp_path / "store", list(rows.values())))
    starts = sorted({w for w, _ in rows})
    complete = [w for w in starts if rows[(w, 0)]["complete"] and rows[(w, 1)]["complete"]]
    assert len(complete) >= 4
    for w in starts:
        body = api.release(CLASS, w)
        share = (rows[(w, 0)]["complete"] + rows[(w, 1)]["complete"]) / 2
        assert body["partitions_complete_share"] == share
        assert body["partial"] is (w not in complete)
        assert body["late_events"] == 0


def test_late_events_reach_the_api_as_a_partial_window(tmp_path: Path) -> None:
    """An event arriving after its window closed is counted for that window: the amended
    row makes the API mark the window partial with its late count."""
    events = produced(40, 20.0, seed=12)
    orders, records = throttled_run(events, slowdown=1.0, drain_every=1.0)
    late_at, key, raw = events[5]  # an event of the first window, delivered again late
    assert orders.route(raw, partition_for(key, 2), 2, key, late_at) is not None
    records += orders.window_records(orders.drain(T0 + 500)[1])
    rows = per_window(records)
    first = int(late_at) - int(late_at) % WINDOW
    assert rows[(first, partition_for(key, 2))]["late_events"] == 1
    api = service(tmp_path, store_with(tmp_path / "store", list(rows.values())))
    body = api.release(CLASS, first)
    assert body["partial"] is True and body["late_events"] == 1
    assert body["partitions_complete_share"] == 0.5
