"""Per-partition processing state of one data product: keying, routing, windows (no broker)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from domains.contract import DataProduct, FieldType
from domains.registry import get_contract
from streams.generator import BUILDERS, make_people
from streams.keys import derive_domain_key
from streams.pipeline import ProductPipeline, build_pipelines, partition_for
from streams.pseudonymise import Tokeniser, normalise
from streams.settings import StreamSettings
from streams.transform import WRONG_PARTITION, Accepted, Rejected
from streams.windows import DayTally

CONTRACT = get_contract("shop")
TOKENS = Tokeniser(derive_domain_key(b"m" * 32, "shop", 1), 1)
PEOPLE = make_people(60, 17)
T0 = 1_795_427_000  # a window boundary for 10 s windows
WINDOW = 10


def pipeline(max_events_per_subject: int = 20) -> ProductPipeline:
    """A fresh shop.orders pipeline with default stream settings."""
    settings = StreamSettings(window_seconds=WINDOW, max_events_per_subject=max_events_per_subject)
    [orders] = build_pipelines(CONTRACT, TOKENS, settings)
    return orders


def order(person_index: int, at: float, seq: int = 1) -> tuple[bytes, bytes]:
    """A valid raw order of ``PEOPLE[person_index]`` at ``at``: (partition key, value)."""
    person = PEOPLE[person_index]
    iso = datetime.fromtimestamp(at, tz=UTC).isoformat()
    event = BUILDERS[("shop", "orders")](person, random.Random(seq), seq, iso)
    key = normalise(person.email, FieldType.EMAIL).encode()
    return key, json.dumps(event).encode()


def route_args(keyed: tuple[bytes, bytes], partition: int) -> tuple[bytes, int, int, bytes, float]:
    """``route``'s arguments for a keyed order read from ``partition`` of 4 at ``T0``."""
    key, raw = keyed
    return raw, partition, 4, key, T0


class OneTopic:
    """The part of kafka-python's ClusterMetadata its partitioner reads: one topic."""

    def __init__(self, partitions: int) -> None:
        self._partitions = set(range(partitions))

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions


def kafka_python_partition(key: bytes, partitions: int) -> int:
    """The partition kafka-python's producer picks for ``key`` (its DefaultPartitioner)."""
    return int(DefaultPartitioner().partition("t", key, key, b"", b"", OneTopic(partitions)))


# Kafka's own murmur2 test vectors (clients/.../utils/UtilsTest.java), as signed 32-bit ints.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_partition_for_matches_kafkas_test_vectors() -> None:
    """partition_for is Java Kafka's murmur2 with the sign bit masked off."""
    for key, signed in JAVA_MURMUR2.items():
        assert partition_for(key, 2**31) == signed & 0x7FFFFFFF
        assert partition_for(key, 4) == (signed & 0x7FFFFFFF) % 4


@settings(max_examples=300, derandomize=True, deadline=None)
@given(key=st.binary(max_size=64), partitions=st.integers(1, 128))
def test_partition_for_matches_kafka_python_default_partitioner(
    key: bytes, partitions: int
) -> None:
    """For any key and partition count, the partition is the one kafka-python's producer picks."""
    assert partition_for(key, partitions) == kafka_python_partition(key, partitions)


def test_partition_for_sample_identifiers() -> None:
    """Normalised e-mails and cookies land where kafka-python's default partitioner puts them."""
    for person in PEOPLE:
        for raw in (normalise(person.email, FieldType.EMAIL), person.cookie):
            key = raw.encode()
            for partitions in (1, 2, 3, 4, 12):
                assert partition_for(key, partitions) == kafka_python_partition(key, partitions)


def test_route_refuses_a_valid_event_on_the_wrong_partition() -> None:
    """A valid event is accepted on its key's partition and dead-lettered on any other."""
    orders = pipeline()
    key, raw = order(0, T0 + 1)
    right = partition_for(key, 4)
    for partition in range(4):
        outcome = orders.route(raw, partition, 4, key, T0)
        if partition == right:
            assert isinstance(outcome, Accepted)
            assert outcome.key == outcome.subject.encode() and outcome.subject.startswith("k1.")
        else:
            assert isinstance(outcome, Rejected) and outcome.reason == WRONG_PARTITION
            assert PEOPLE[0].email not in outcome.detail
            assert normalise(PEOPLE[0].email, FieldType.EMAIL) not in outcome.detail
    assert orders.counters["accepted"] == 1
    assert orders.counters[f"rejected.{WRONG_PARTITION}"] == 3
    assert orders.counters["rejected"] == 3
    # Only the accepted event was counted, on its own partition.
    assert set(orders.aggregators) == {right}
    rows, _ = orders.drain(T0 + 1)
    assert [r.events for r in rows] == [1]


def test_route_rejects_invalid_events_whatever_the_partition() -> None:
    """An invalid event gets its transform reason, not wrong_partition, on any partition."""
    orders = pipeline()
    for partition in range(4):
        outcome = orders.route(b'{"order_id": 1', partition, 4, b"k", T0)
        assert isinstance(outcome, Rejected) and outcome.reason == "malformed_json"
    assert orders.counters["accepted"] == 0 and not orders.aggregators


def window_totals(orders: ProductPipeline, now: float) -> dict[int, tuple[int, int, float]]:
    """Closed windows by start: (distinct subjects, events, amount sum), summed over partitions."""
    _, closed = orders.drain(now)
    totals: dict[int, tuple[int, int, float]] = {}
    for record in orders.window_records(closed):
        start = int(str(record["window_start"]))
        subjects, events, amount = totals.get(start, (0, 0, 0.0))
        totals[start] = (
            subjects + int(str(record["distinct_subjects"])),
            events + int(str(record["events"])),
            amount + float(str(record["amount_cents_sum"])),
        )
    return totals


def test_per_partition_windows_add_up_to_one_aggregator() -> None:
    """Two partitions' window records, summed, equal one aggregator's over all events
    (distinct subjects, the per-window cap and the per-day bounds included)."""
    rng = random.Random(5)
    events: list[tuple[bytes, bytes]] = []
    for seq in range(1, 1500):
        # A few heavy subjects exceed the per-window cap (3) and the day's 10 records.
        person = rng.randrange(3) if rng.random() < 0.4 else rng.randrange(len(PEOPLE))
        events.append(order(person, T0 + rng.uniform(0, 5 * WINDOW), seq))
    split, single = pipeline(3), pipeline(3)
    for partition in (0, 1):
        split.assign(partition, T0)
    single.assign(0, T0)
    used = Counter[int]()
    for key, raw in events:
        partition = partition_for(key, 2)
        used[partition] += 1
        assert isinstance(split.route(raw, partition, 2, key, T0), Accepted)
        assert isinstance(single.route(raw, 0, 1, key, T0), Accepted)
    assert used[0] > 100 and used[1] > 100  # both partitions really hold events
    assert split.capped_events == single.capped_events > 0
    assert split.truncated_events == single.truncated_events > 0
    rows_split = {(r.subject, r.window_start, r.events) for r in split.drain(T0)[0]}
    rows_single = {(r.subject, r.window_start, r.events) for r in single.drain(T0)[0]}
    assert rows_split == rows_single
    now = T0 + 10 * WINDOW
    per_partition, overall = window_totals(split, now), window_totals(single, now)
    assert per_partition == overall
    counted = len(events) - single.capped_events - single.truncated_events
    assert sum(e for _, e, _ in overall.values()) == counted
    assert len(overall) >= 5


def test_revoke_returns_pending_rows_and_counts_cut_windows() -> None:
    """Revoking a partition hands back its undrained subject rows and counts its open windows
    as cut by the rebalance; the partition's state is gone afterwards."""
    orders = pipeline()
    mine = [i for i in range(len(PEOPLE)) if partition_for(order(i, T0)[0], 4) == 2][:3]
    assert len(mine) == 3
    orders.assign(2, T0)
    for n, person in enumerate(mine):
        orders.route(*route_args(order(person, T0 + 1, n), 2))  # window T0
    orders.route(*route_args(order(mine[0], T0 + WINDOW + 1, 9), 2))  # window T0 + 10
    rows = orders.revoke(2)
    assert sorted((r.window_start, r.events) for r in rows) == [
        (T0, 1),
        (T0, 1),
        (T0, 1),
        (T0 + WINDOW, 1),
    ]
    assert orders.counters["windows_cut_by_rebalance"] == 2
    assert 2 not in orders.aggregators
    assert orders.revoke(2) == [] and orders.revoke(3) == []
    assert orders.counters["windows_cut_by_rebalance"] == 2


def test_revoke_after_drain_returns_no_rows_but_counts_open_windows() -> None:
    """Rows drained before the revoke are not handed back twice; the open window still counts."""
    orders = pipeline()
    key, raw = order(1, T0 + 3)
    partition = partition_for(key, 4)
    orders.route(raw, partition, 4, key, T0)
    drained, closed = orders.drain(T0 + 4)
    assert len(drained) == 1 and closed == []
    assert orders.revoke(partition) == []
    assert orders.counters["windows_cut_by_rebalance"] == 1


def test_accepted_events_are_buffered_exactly_as_published() -> None:
    """Each accepted event's published dict is buffered once for the offline store, rejected
    ones never; taking the buffer empties it, oldest first."""
    orders = pipeline()
    published = []
    for person in range(4):
        key, raw = order(person, T0 + person, person)
        outcome = orders.route(raw, partition_for(key, 4), 4, key, T0)
        assert isinstance(outcome, Accepted)
        published.append(outcome.event)
        orders.route(raw, (partition_for(key, 4) + 1) % 4, 4, key, T0)  # wrong partition
    orders.route(b"not json", 0, 4, None, T0)
    assert orders.buffered_events == 4
    taken = orders.take_events()
    assert taken == published and all(a is b for a, b in zip(taken, published, strict=True))
    assert orders.take_events() == [] and orders.buffered_events == 0
    assert all(CONTRACT.products[0].subject_field in e for e in taken)
    assert not any("customer_email" in e or "customer_name" in e for e in taken)


def test_forget_drops_the_subjects_buffered_events() -> None:
    """Erasure removes the erased subjects' buffered events and keeps everyone else's."""
    orders = pipeline()
    outcomes = []
    for person in (0, 1, 0, 2):
        key, raw = order(person, T0 + 1, person)
        outcomes.append(orders.route(raw, partition_for(key, 4), 4, key, T0))
    assert all(isinstance(o, Accepted) for o in outcomes)
    gone = outcomes[0].subject  # type: ignore[union-attr]
    orders.forget({gone})
    kept = orders.take_events()
    unit = CONTRACT.products[0].subject_field
    assert len(kept) == 2 and gone not in {e[unit] for e in kept}


def test_window_rows_carry_the_day_bounds_and_what_they_truncated() -> None:
    """A window row says how many subjects are new in the day and the hour, how many records
    the per-day bounds truncated, and which bounds applied (the contract's); a heavy
    customer's orders count 10 at most and each amount is clamped to 20000 cents."""
    orders = pipeline()
    bounds = CONTRACT.products[0].contribution
    assert (bounds.max_records_per_period, bounds.max_windows_per_period) == (10, 10)
    key, _ = order(0, T0)
    partition = partition_for(key, 4)
    for seq in range(1, 16):  # 15 orders of one customer in one window
        _, raw = order(0, T0 + 1, seq)
        assert isinstance(orders.route(raw, partition, 4, key, T0), Accepted)
    orders.caught_up(partition, T0 + 3 * WINDOW)  # nothing queued: the windows close
    _, closed = orders.drain(T0 + 3 * WINDOW)
    [row] = [r for r in orders.window_records(closed) if r["window_start"] == T0]
    assert row["events"] == 10 and row["distinct_subjects"] == 1
    assert row["truncated_events"] == 5
    assert row["new_subjects_period"] == 1 and row["new_subjects_hour"] == 1
    assert row["max_records_per_period"] == 10 and row["max_windows_per_period"] == 10
    assert row["contribution_bound"] == 20
    assert 0 <= float(str(row["amount_cents_sum"])) <= 10 * 20_000
    assert orders.truncated_events == 5


def test_a_restarted_pipeline_starts_from_the_restored_day() -> None:
    """A pipeline whose restore source says a customer already counted 10 records today
    truncates the customer's next order; a failing restore is counted, not fatal."""
    key, raw = order(0, T0 + 1)
    partition = partition_for(key, 4)
    probe = pipeline()
    outcome = probe.route(raw, partition, 4, key, T0)
    assert isinstance(outcome, Accepted)
    day = T0 - T0 % 86_400
    asked: list[set[int]] = []

    def restore(product: DataProduct, days: Iterable[int]) -> dict[int, dict[str, DayTally]]:
        asked.append(set(days))
        return {day: {outcome.subject: DayTally(records=10, windows=1, hours=1)}}

    [restarted] = build_pipelines(
        CONTRACT, TOKENS, StreamSettings(window_seconds=WINDOW), restore=restore
    )
    restarted.assign(partition, T0)
    assert asked == [{day}] and restarted.counters["day_tallies_restored"] == 1
    restarted.route(raw, partition, 4, key, T0)
    assert restarted.truncated_events == 1

    def broken(product: DataProduct, days: Iterable[int]) -> dict[int, dict[str, DayTally]]:
        raise OSError("disk gone")

    [fresh] = build_pipelines(
        CONTRACT, TOKENS, StreamSettings(window_seconds=WINDOW), restore=broken
    )
    fresh.assign(partition, T0)
    assert fresh.counters["day_tallies_restore_failed"] == 1
    fresh.route(raw, partition, 4, key, T0)
    assert fresh.truncated_events == 0


def test_day_tallies_are_preloaded_off_the_event_loop_and_read_once() -> None:
    """On assignment the day's tallies are read once, in a thread (the event loop keeps the
    consumer group's heartbeats), and every partition assigned at that time shares them."""
    threads: list[int] = []

    def restore(product: DataProduct, days: Iterable[int]) -> dict[int, dict[str, DayTally]]:
        threads.append(threading.get_ident())
        return {}

    [orders] = build_pipelines(
        CONTRACT, TOKENS, StreamSettings(window_seconds=WINDOW), restore=restore
    )
    asyncio.run(orders.preload_day_tallies(T0))
    for partition in range(4):
        orders.assign(partition, T0)
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    orders.revoke(3)
    orders.assign(3, T0 + 60)  # a later rebalance reads what was written since
    assert len(threads) == 2
