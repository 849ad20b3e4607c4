"""The processor's /metrics: Prometheus conventions (counts since start are counters that
never go down at a rebalance, levels are gauges, the process's own metrics beside them)
and the per-day contribution bounds' truncation exported per product."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from streams.metrics import metrics_registry, render
from streams.pipeline import ProductPipeline, partition_for
from streams.processor import Processor
from streams.settings import KafkaSettings, StreamSettings
from streams.transform import Accepted
from streams.worker import build_domain_processor
from tests.streams.test_pipeline import T0, order

# The type of every family the worker exports; a new one must be added here.
TYPES = {
    "privmesh_stream_consumed_events": "counter",
    "privmesh_stream_events": "counter",
    "privmesh_stream_dead_letters": "counter",
    "privmesh_stream_consent_dropped_events": "counter",
    "privmesh_stream_subject_rows_pushed": "counter",
    "privmesh_stream_late_events": "counter",
    "privmesh_stream_capped_events": "counter",
    "privmesh_stream_truncated_events": "counter",
    "privmesh_stream_truncated_sum": "counter",
    "privmesh_consent_subjects": "gauge",
    "privmesh_consent_records": "counter",
    "privmesh_consent_index_ready": "gauge",
    "privmesh_stream_erasures_applied": "counter",
    "privmesh_pseudonymisation_key_version": "gauge",
    "privmesh_stream_start_time_seconds": "gauge",
    "privmesh_stream_feature_flush_seconds": "histogram",
    "privmesh_stream_feature_flush_rows": "counter",
    "privmesh_stream_feature_queued_rows": "gauge",
    "privmesh_stream_feature_flush_max_rows": "gauge",
}
PROCESS = {
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_start_time_seconds": "gauge",
    "python_info": "gauge",
    "python_gc_objects_collected": "counter",
}


def shop(max_events_per_subject: int = 20) -> Processor:
    settings = StreamSettings(max_events_per_subject=max_events_per_subject)
    return build_domain_processor(
        "shop", RuntimeSettings(), KafkaSettings(), settings, FeatureStoreSettings()
    )


Families = dict[str, tuple[str, list[Sample]]]


def families(text: str) -> Families:
    """Family name -> (type, samples) of an exposition, parsed as Prometheus parses it."""
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def assert_conventional(found: Families) -> None:
    """Counter samples end in _total, gauges' never do; the process and Python collectors'
    families are there with their types."""
    assert {n: found[n][0] for n in PROCESS} == PROCESS
    for name, (kind, samples) in found.items():
        for sample in samples:
            if kind == "counter":
                assert sample.name in (f"{name}_total", f"{name}_created"), sample.name
            elif kind == "gauge":
                assert not sample.name.endswith("_total"), sample.name


def scrape(processor: Processor, started: float = 0.0) -> Families:
    """The families of the processor's exposition."""
    return families(render(metrics_registry(processor, started)).decode())


def by_product(found: Families, name: str) -> dict[str, float]:
    return {s.labels["product"]: s.value for s in found[name][1]}


def orders_of(processor: Processor) -> ProductPipeline:
    [orders] = [p for p in processor.pipelines if p.product.name == "orders"]
    return orders


def test_families_follow_prometheus_conventions(isolated_env: Path) -> None:
    """Counts since start are counters whose samples end in _total, levels are gauges with
    no _total, times are in seconds; process and Python collectors are on the page."""
    found = scrape(shop(), started=1_795_000_000.0)
    own = {name: kind for name, (kind, _) in found.items() if name.startswith("privmesh_")}
    assert own == TYPES
    assert_conventional(found)
    [started] = found["privmesh_stream_start_time_seconds"][1]
    assert (started.labels, started.value) == ({"domain": "shop"}, 1_795_000_000.0)


def test_late_and_capped_events_are_counters_that_survive_a_rebalance(
    isolated_env: Path,
) -> None:
    """One late order and 3 over the per-window cap of 2 are counted; giving the partitions
    up keeps the counters (the owned-partition tallies drop to 0); more events add on."""
    processor = shop(max_events_per_subject=2)
    orders = orders_of(processor)
    late_key, _ = order(1, T0)
    late_partition = partition_for(late_key, 4)
    capped = next(i for i in range(2, 60) if partition_for(order(i, T0)[0], 4) != late_partition)
    capped_key, _ = order(capped, T0)
    capped_partition = partition_for(capped_key, 4)
    orders.assign(late_partition, T0 + 60)  # opened a minute later: T0's window is closed
    _, raw = order(1, T0 + 1)
    assert orders.route(raw, late_partition, 4, late_key, T0 + 61) is not None
    for seq in range(1, 6):
        _, raw = order(capped, T0 + 1, seq)
        assert isinstance(orders.route(raw, capped_partition, 4, capped_key, T0 + 2), Accepted)
    before = scrape(processor)
    assert by_product(before, "privmesh_stream_late_events")["orders"] == 1 == orders.late_events
    assert by_product(before, "privmesh_stream_capped_events")["orders"] == 3
    orders.revoke(late_partition)
    orders.revoke(capped_partition)
    assert orders.late_events == orders.capped_events == 0  # the owned partitions' tallies
    after = scrape(processor)
    assert by_product(after, "privmesh_stream_late_events")["orders"] == 1
    assert by_product(after, "privmesh_stream_capped_events")["orders"] == 3
    for seq in range(6, 9):  # the partition comes back: a fresh window, 1 over the cap
        _, raw = order(capped, T0 + 11, seq)
        orders.route(raw, capped_partition, 4, capped_key, T0 + 12)
    again = scrape(processor)
    assert by_product(again, "privmesh_stream_capped_events")["orders"] == 4
    assert by_product(again, "privmesh_stream_late_events")["orders"] == 1


def test_truncated_events_are_exported_per_product(isolated_env: Path) -> None:
    """A customer's 13 orders of one day: the 3 beyond shop.orders' 10 records a day appear
    as privmesh_stream_truncated_events_total for shop/orders."""
    processor = shop()
    orders = orders_of(processor)
    key, _ = order(0, T0)
    partition = partition_for(key, 4)
    for seq in range(1, 14):
        _, raw = order(0, T0 + 1, seq)
        assert isinstance(orders.route(raw, partition, 4, key, T0), Accepted)
    found = scrape(processor, time.time())
    assert by_product(found, "privmesh_stream_truncated_events")["orders"] == 3
    assert orders.truncated_events == 3


def test_amounts_cut_by_the_day_cap_are_a_counter_that_survives_a_rebalance(
    isolated_env: Path,
) -> None:
    """A customer's 10 orders of 200.00 in one day add 10 x 20000 cents, above shop.orders'
    day cap: what the cap cut is privmesh_stream_truncated_sum_total for shop/orders/
    amount_cents, and giving the partition up keeps it."""
    processor = shop()
    orders = orders_of(processor)
    cap = orders.product.sum_cap_of("amount_cents")
    assert cap is not None and cap < 10 * 20_000
    key, _ = order(0, T0)
    partition = partition_for(key, 4)
    for seq in range(1, 11):
        _, raw = order(0, T0 + seq, seq)
        event = {**json.loads(raw), "amount_cents": 20_000}
        outcome = orders.route(json.dumps(event).encode(), partition, 4, key, T0)
        assert isinstance(outcome, Accepted)

    def cut() -> dict[tuple[str, str], float]:
        found = scrape(processor, time.time())["privmesh_stream_truncated_sum"][1]
        return {(s.labels["product"], s.labels["measure"]): s.value for s in found}

    assert cut() == {("orders", "amount_cents"): 10 * 20_000 - cap}
    orders.revoke(partition)
    assert orders.truncated_sums == {"amount_cents": 0.0}  # the owned partitions' tally
    assert cut() == {("orders", "amount_cents"): 10 * 20_000 - cap}


def test_feature_flushes_are_a_histogram_with_their_bound(isolated_env: Path) -> None:
    """The feature pusher's flushes are a duration histogram (cumulative buckets, +Inf is
    every flush), the rows they wrote a counter, the rows waiting and the bound gauges."""
    processor = shop()
    for _ in range(2):  # nothing drained: no store write, but each flush is timed
        asyncio.run(processor.pusher.flush())
    found = scrape(processor)
    kind, samples = found["privmesh_stream_feature_flush_seconds"]
    assert kind == "histogram"
    buckets = [(s.labels["le"], s.value) for s in samples if s.name.endswith("_bucket")]
    assert buckets[-1] == ("+Inf", 2.0)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert dict(buckets)["5.0"] == 2.0
    [count] = [s.value for s in samples if s.name.endswith("_count")]
    assert count == 2.0
    [rows] = found["privmesh_stream_feature_flush_rows"][1]
    assert rows.value == 0.0
    [queued] = found["privmesh_stream_feature_queued_rows"][1]
    assert queued.value == 0.0
    [bound] = found["privmesh_stream_feature_flush_max_rows"][1]
    bound_default = StreamSettings().feature_flush_max_rows
    assert (bound.labels, bound.value) == ({"domain": "shop"}, float(bound_default))
