"""Windows close on event time: a throttled processor never releases an undercounted window
as complete; idle partitions and late events are reported, per window."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from domains.contract import Bounds
from streams.pipeline import ProductPipeline, build_pipelines, partition_for
from streams.settings import StreamSettings
from streams.transform import Accepted
from streams.windows import WindowAggregator
from tests.streams.test_pipeline import CONTRACT, PEOPLE, T0, TOKENS, order

WINDOW, GRACE = 10, 2


def throttled_run(
    events: list[tuple[float, bytes, bytes]], slowdown: float, drain_every: float
) -> tuple[ProductPipeline, list[dict[str, Any]]]:
    """Process ``events`` (event time, key, raw) ``slowdown`` times slower than they were
    produced, draining every ``drain_every`` s of wall clock; returns every window record."""
    [orders] = build_pipelines(
        CONTRACT, TOKENS, StreamSettings(window_seconds=WINDOW, grace_seconds=GRACE)
    )
    for partition in (0, 1):
        orders.assign(partition, T0)
    records: list[dict[str, Any]] = []
    next_drain = T0 + drain_every
    now = float(T0)
    for i, (at, key, raw) in enumerate(events):
        now = T0 + (at - T0) * slowdown if i else now  # the processor falls behind
        while now >= next_drain:
            records += orders.window_records(orders.drain(next_drain)[1])
            next_drain += drain_every
        outcome = orders.route(raw, partition_for(key, 2), 2, key, at)
        assert isinstance(outcome, Accepted), outcome
    # The stream stops: after idle_seconds the rest closes by the wall clock.
    for _ in range(40):
        now += WINDOW
        records += orders.window_records(orders.drain(now)[1])
    return orders, records


def produced(seconds: int, rate: float, seed: int) -> list[tuple[float, bytes, bytes]]:
    rng = random.Random(seed)
    out = []
    for seq in range(int(seconds * rate)):
        at = T0 + seq / rate + rng.uniform(0, 1 / rate)  # in order, as a producer sends
        key, raw = order(rng.randrange(len(PEOPLE)), at, seq + 1)
        out.append((at, key, raw))
    return out


def per_window(records: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """The newest record of each (window, partition): amendments replace first reports."""
    return {(int(r["window_start"]), int(r["partition"])): r for r in records}


def test_throttled_processor_never_closes_an_undercounted_window_as_complete() -> None:
    """A processor 3x slower than its producers (a loaded machine: its lag grows to minutes)
    closes every window only once the partition's event time has passed it: every window
    reported complete holds exactly the events produced for it, and none is late."""
    events = produced(90, 20.0, seed=3)
    orders, records = throttled_run(events, slowdown=3.0, drain_every=1.0)
    exact: Counter[tuple[int, int]] = Counter()
    for at, key, _ in events:
        exact[(int(at) - int(at) % WINDOW, partition_for(key, 2))] += 1
    rows = per_window(records)
    complete = [k for k, r in rows.items() if r["complete"] == 1]
    assert len(complete) >= 14  # 9 windows x 2 partitions, all but the last ones
    for k in complete:  # counted, or truncated by the customers' per-day bounds
        assert rows[k]["events"] + rows[k]["truncated_events"] == exact[k], k
    assert orders.late_events == 0 and orders.capped_events == 0
    # Nothing was lost: every produced event is in some window row.
    assert sum(int(r["events"]) + int(r["truncated_events"]) for r in rows.values()) == len(events)
    # Windows closed by the wall clock (after the stream stopped) say they are not complete.
    last = max(w for w, _ in rows)
    assert rows[(last, 0)]["complete"] == 0 or rows[(last, 1)]["complete"] == 0


def test_wall_clock_closing_would_have_undercounted_the_same_run() -> None:
    """Control: in the same throttled run, windows whose end plus grace the WALL CLOCK had
    passed long before their events were processed exist (the old rule closed them)."""
    events = produced(90, 20.0, seed=3)
    slowdown = 3.0
    # processed at T0 + (at - T0) * slowdown: an event of window W is processed after
    # W + WINDOW + GRACE (the old rule's close time) for most windows
    behind = {
        int(at) - int(at) % WINDOW
        for at, _, _ in events
        if T0 + (at - T0) * slowdown > (int(at) - int(at) % WINDOW) + WINDOW + GRACE
    }
    assert len(behind) >= 7


def test_real_time_throttled_processor_counts_every_window_completely() -> None:
    """In real time (1 s windows): a producer thread at ~400 events/s and a consumer slowed
    to a third of that, drained by the wall clock; every complete window is exact."""
    [orders] = build_pipelines(CONTRACT, TOKENS, StreamSettings(window_seconds=1, grace_seconds=0))
    for partition in (0, 1):
        orders.assign(partition, time.time())
    queue: list[tuple[float, bytes, bytes]] = []
    lock = threading.Lock()
    stop = time.time() + 2.0

    def produce() -> None:
        seq = 0
        while time.time() < stop:
            seq += 1
            at = time.time()
            key, raw = order(seq % len(PEOPLE), at, seq)
            with lock:
                queue.append((at, key, raw))
            time.sleep(0.0025)

    producer = threading.Thread(target=produce)
    producer.start()
    records: list[dict[str, Any]] = []
    done: list[tuple[float, bytes, bytes]] = []
    while producer.is_alive() or len(done) < len(queue):
        with lock:
            pending = queue[len(done) : len(done) + 1]
        if not pending:
            time.sleep(0.001)
            continue
        at, key, raw = pending[0]
        assert isinstance(orders.route(raw, partition_for(key, 2), 2, key, at), Accepted)
        done.append(pending[0])
        time.sleep(0.0075)  # throttled: a third of the producer's rate
        records += orders.window_records(orders.drain(time.time())[1])
        if time.time() > stop + 20:
            break
    producer.join()
    exact: Counter[tuple[int, int]] = Counter()
    for at, key, _ in done:
        exact[(int(at), partition_for(key, 2))] += 1
    rows = per_window(records)
    complete = [k for k, r in rows.items() if r["complete"] == 1]
    assert complete, "no window closed by event time"
    for k in complete:  # counted, or truncated by the customers' per-day bounds
        assert rows[k]["events"] + rows[k]["truncated_events"] == exact[k], k
    assert orders.late_events == 0


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), max_size=60),
    drains=st.lists(st.floats(min_value=0, max_value=400, allow_nan=False), max_size=20),
)
def test_complete_windows_hold_every_in_order_event(
    times: list[float], drains: list[float]
) -> None:
    """Events in order, drains at any wall-clock times: a window closed as complete holds
    every event of its window; nothing is dropped except events reported late."""
    agg = WindowAggregator(10, 2, 10_000, {"x": Bounds(min=0, max=1)})
    agg.open_at(1_000.0)
    events = sorted(1_000.0 + t for t in times)
    closed = []
    drains = sorted(drains)
    i = 0
    for at in events:
        while i < len(drains) and 1_000.0 + drains[i] <= at:
            closed += agg.close_ready(1_000.0 + drains[i])
            i += 1
        agg.add("s", at, {"x": 1.0})
    closed += agg.close_ready(10_000.0)
    closed += agg.close_ready(10_000.0 + agg.idle_seconds)
    latest = {s.window_start: s for s in closed}
    for start, stats in latest.items():
        truth = sum(1 for at in events if start <= at < start + 10)
        if stats.complete:
            assert stats.events == truth
        else:
            assert stats.events + stats.late_events == truth
    assert agg.late_events == sum(s.late_events for s in latest.values())


def test_one_future_dated_event_does_not_close_queued_windows() -> None:
    """An event dated 250 s ahead (the contract admits up to 300 s) in a throttled stream
    does not move the watermark past windows whose events are still queued."""
    agg = WindowAggregator(WINDOW, GRACE, 10_000, {"x": Bounds(min=0, max=1)})
    agg.open_at(T0)
    times = [T0 + i / 20 for i in range(1_200)]  # 60 s at 20 events/s, in order
    times.insert(100, T0 + 5 + 250)  # one event dated far ahead, early in the stream
    closed = []
    for i, at in enumerate(times):
        now = T0 + i / 20 * 3  # processed three times slower than produced
        if i % 20 == 0:
            closed += agg.close_ready(now)
        agg.add("s", at, {"x": 1.0})
    closed += agg.close_ready(T0 + 1_200)
    closed += agg.close_ready(T0 + 1_200 + agg.idle_seconds)
    truth = Counter(int(at) - int(at) % WINDOW for at in times)
    latest = {s.window_start: s for s in closed}
    assert sum(1 for s in latest.values() if s.complete) >= 5
    for start, stats in latest.items():
        assert stats.events + stats.late_events == truth[start]
        if stats.complete:
            assert stats.late_events == 0
    assert agg.late_events == 0


def test_caught_up_idle_partition_closes_complete_windows() -> None:
    """A partition whose consumer read to the log end has nothing queued: its empty windows
    close complete by the wall clock; without that signal they close incomplete."""
    told, silent = (WindowAggregator(WINDOW, GRACE, 5, {}) for _ in range(2))
    for agg in (told, silent):
        agg.open_at(T0)
        agg.close_ready(T0 + 1)
    told.caught_up(T0 + 30)
    (first, second) = told.close_ready(T0 + 30)
    assert first.complete and second.complete and first.events == 0
    closed = silent.close_ready(T0 + 30)
    assert [s.complete for s in closed] == [False, False]


class FakeConsumer:
    """The consumer calls ``_note_caught_up`` makes: one partition at its log end, one
    behind, one never fetched."""

    def __init__(self, topic: str) -> None:
        from aiokafka import TopicPartition

        self.at_end, self.behind, self.unknown = (TopicPartition(topic, p) for p in range(3))

    def assignment(self) -> set[Any]:
        return {self.at_end, self.behind, self.unknown}

    def highwater(self, tp: Any) -> int | None:
        return None if tp == self.unknown else 10

    def last_poll_timestamp(self, tp: Any) -> int | None:
        return None if tp == self.unknown else (T0 + 30) * 1000

    async def position(self, tp: Any) -> int:
        return 10 if tp == self.at_end else 4


def test_ingest_loop_tells_only_partitions_at_their_log_end() -> None:
    """The loop marks caught up only a partition whose position is its fetched high
    watermark, at the fetch's time: the one behind still has queued events."""
    import asyncio
    from typing import cast

    from streams.batch_send import BatchSender
    from streams.ingest_loop import IngestLoop
    from streams.settings import KafkaSettings
    from tests.fakes import RecordingSender

    [orders] = build_pipelines(
        CONTRACT, TOKENS, StreamSettings(window_seconds=WINDOW, grace_seconds=GRACE)
    )
    for partition in range(3):
        orders.assign(partition, T0)
    loop = IngestLoop(
        "shop", [orders], KafkaSettings(), StreamSettings(), cast(BatchSender, RecordingSender())
    )
    asyncio.run(loop._note_caught_up(cast(Any, FakeConsumer(orders.topics.ingest)), {}))
    assert orders.aggregators[0].watermark == T0 + 30
    assert orders.aggregators[1].watermark is None and orders.aggregators[2].watermark is None
