"""The processor's /metrics: the per-day contribution bounds' truncation is exported."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from streams.metrics import metrics_registry, render
from streams.pipeline import partition_for
from streams.settings import KafkaSettings, StreamSettings
from streams.transform import Accepted
from streams.worker import build_domain_processor
from tests.streams.test_pipeline import T0, order


def test_truncated_events_are_exported_per_product(isolated_env: Path) -> None:
    """A customer's 13 orders of one day: the 3 beyond shop.orders' 10 records a day appear
    as privmesh_stream_truncated_events for shop/orders."""
    processor = build_domain_processor(
        "shop", RuntimeSettings(), KafkaSettings(), StreamSettings(), FeatureStoreSettings()
    )
    [orders] = [p for p in processor.pipelines if p.product.name == "orders"]
    key, _ = order(0, T0)
    partition = partition_for(key, 4)
    for seq in range(1, 14):
        _, raw = order(0, T0 + 1, seq)
        assert isinstance(orders.route(raw, partition, 4, key, T0), Accepted)
    text = render(metrics_registry(processor, time.time())).decode()
    [family] = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "privmesh_stream_truncated_events"
    ]
    values = {s.labels["product"]: s.value for s in family.samples}
    assert values["orders"] == 3 == orders.truncated_events
