"""Direct sqlite online reads give exactly Feast's answer (issue 22, item 4)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from feast import FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto

from domains.registry import load_contracts
from feature_repo.errors import StoreNotApplied
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import (
    ENTITY_KEY_VERSION,
    DomainFeatureStore,
    _value_proto,
    entity_key_encoder,
)


def _feast(store: DomainFeatureStore, view: FeatureView, rows: list[dict[str, Any]]) -> Any:
    refs = [f"{view.name}:{f.name}" for f in view.features]
    return store.store.get_online_features(features=refs, entity_rows=rows).to_dict()


def _store(tmp_path: Path) -> DomainFeatureStore:
    store = DomainFeatureStore(load_contracts()["shop"], tmp_path, FeatureStoreSettings())
    store.apply()
    return store


def test_subject_reads_equal_feasts(tmp_path: Path) -> None:
    """1, 100 and 2,000 subjects (unknown and repeated ones among them) read alike; the
    entity column comes first (Feast orders the feature columns by a set, so per process)."""
    store = _store(tmp_path)
    view = store.product_features("orders").subject_view
    now = datetime.now(UTC)
    written = [f"k1.subject{i:05d}" for i in range(1500)]
    records = [
        {"subject": s, "window_start": 1_800_000_000 + i, "events": i % 11}
        | {"amount_cents_sum": float(i) * 1.5}
        | {"event_timestamp": now}
        for i, s in enumerate(written)
    ]
    store.write_online(view, records)
    rng = random.Random(4)
    for n in (1, 100, 2000):
        subjects = [rng.choice([*written[:50], "k1.unknown", "k1.other"]) for _ in range(n // 2)]
        subjects += rng.sample(written, n - len(subjects))
        rows = [{"subject": s} for s in subjects]
        direct = store.online_features(view, rows)
        assert direct == _feast(store, view, rows)
        assert next(iter(direct)) == "subject"
    assert store.subject_features("orders", ["k1.unknown"])[0]["events"] is None
    assert store.subject_features("orders", [written[7]])[0]["events"] == 7


def test_window_reads_equal_feasts(tmp_path: Path) -> None:
    """Two-key window rows read directly equal Feast's, and window_stats merges them."""
    store = _store(tmp_path)
    view = store.product_features("orders").window_view
    names = [f.name for f in view.features]
    records = [
        {"window_start": 600 * w, "partition": p, "event_timestamp": datetime.now(UTC)}
        | {name: (w + p if name != "amount_cents_sum" else w * 0.5) for name in names}
        for w in range(20)
        for p in range(2)
        if (w, p) != (3, 1)
    ]
    store.write_online(view, records)
    rows = [{"window_start": 600 * w, "partition": p} for w in range(25) for p in range(3)]
    assert store.online_features(view, rows) == _feast(store, view, rows)
    stats = store.window_stats("orders", [600 * 2, 600 * 3], partitions=2)
    assert stats[0]["events"] == 2 + 3
    assert stats[1]["events"] is None  # partition 1 never wrote window 3


@pytest.mark.parametrize(
    ("keys", "values"),
    [
        (["subject"], ["k1.abc"]),
        (["subject"], ["é😀 \x00"]),
        (["subject"], [""]),
        (["window_start", "partition"], [1_800_000_000, 3]),
        (["partition", "window_start"], [-1, -(2**63)]),
        (["window_start"], [2**63 - 1]),
        (["b", "a", "c"], ["x", 7, "z"]),
    ],
)
def test_entity_keys_encode_as_feasts(keys: list[str], values: list[object]) -> None:
    """The direct key encoding is byte for byte Feast's ``serialize_entity_key``."""
    proto = EntityKeyProto(join_keys=keys, entity_values=[_value_proto(v) for v in values])
    expected = serialize_entity_key(proto, entity_key_serialization_version=ENTITY_KEY_VERSION)
    assert entity_key_encoder(keys)(values) == expected


def test_entity_keys_of_other_types_fail_as_feasts() -> None:
    """A float key is no Feast entity key: both encodings refuse it."""
    with pytest.raises(ValueError, match="not supported"):
        entity_key_encoder(["flag"])([1.5])


def test_an_unapplied_store_still_says_so(tmp_path: Path) -> None:
    """Without tables the read falls back to Feast, whose error names the missing store."""
    store = DomainFeatureStore(load_contracts()["shop"], tmp_path, FeatureStoreSettings())
    with pytest.raises(StoreNotApplied):
        store.window_stats("orders", [600], partitions=1)
