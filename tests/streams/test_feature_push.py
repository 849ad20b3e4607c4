"""The feature pusher: online flushes bounded in rows (a backlog goes out oldest first, in
chunks, nothing lost or written twice, an erasure between chunks wins), the offline task's
product events to typed part files, and erasure."""

from __future__ import annotations

import asyncio
import json
import math
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboards_api.event_aggregates import EventQuery, exact_plan, plan_from_store, scan_events
from domains.contract import FieldType
from domains.registry import get_contract
from feature_repo import preaggregate
from feature_repo.events import event_schema
from feature_repo.names import SUBJECT_KEY
from feature_repo.offline import part_files
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.batch_send import BatchSender
from streams.feature_push import (
    ONLINE_WRITE_FAILED,
    PREAGGREGATE_SETTLE_SECONDS,
    FeaturePusher,
    fair_shares,
)
from streams.generator import BUILDERS, make_people
from streams.keys import derive_domain_key
from streams.pipeline import ProductPipeline, build_pipelines, partition_for
from streams.pseudonymise import Tokeniser, normalise
from streams.settings import KafkaSettings, StreamSettings
from streams.topics import REASON_HEADER
from streams.transform import Accepted
from streams.windows import SubjectRow
from tests.fakes import RecordingSender

CONTRACT = get_contract("shop")
PRODUCT = CONTRACT.products[0]
UNIT = PRODUCT.subject_field
TOKENS = Tokeniser(derive_domain_key(b"p" * 32, "shop", 1), 1)
PEOPLE = make_people(12, 23)
T0 = 1_795_427_000


def setup(
    data_dir: Path, offline_flush_seconds: float = 30.0
) -> tuple[ProductPipeline, FeaturePusher]:
    """A shop pipeline and its pusher over a sqlite store in ``data_dir`` (no broker used)."""
    stream = StreamSettings(offline_flush_seconds=offline_flush_seconds)
    [orders] = build_pipelines(CONTRACT, TOKENS, stream)
    store = DomainFeatureStore(CONTRACT, data_dir, FeatureStoreSettings())
    sender = BatchSender(KafkaSettings(), stream, "test-feature-push")
    return orders, FeaturePusher([orders], store, stream, sender, lambda _: False)


def route(orders: ProductPipeline, person: int, at: float, seq: int) -> Accepted:
    """Route one valid raw order of ``PEOPLE[person]`` on its key's partition."""
    event = BUILDERS[("shop", "orders")](
        PEOPLE[person], random.Random(seq), seq, datetime.fromtimestamp(at, tz=UTC).isoformat()
    )
    key = normalise(PEOPLE[person].email, FieldType.EMAIL).encode()
    outcome = orders.route(json.dumps(event).encode(), partition_for(key, 4), 4, key, at)
    assert isinstance(outcome, Accepted)
    return outcome


def stored(pusher: FeaturePusher) -> pl.DataFrame:
    """Every stored product event of shop.orders, oldest part file first."""
    folder = pusher.store.events_folder("orders")
    return pl.scan_parquet(folder / "*.parquet").collect()


def test_offline_write_stores_every_published_event_typed(tmp_path: Path) -> None:
    """After an offline write, the events folder holds each accepted event's published fields,
    typed by the contract (UTC event time to the microsecond), and no raw identifier."""
    orders, pusher = setup(tmp_path)
    accepted = [route(orders, i % 5, T0 + i * 0.123457, i) for i in range(40)]
    orders.route(b"{}", 0, 4, None, T0)  # dead-lettered: not an event of the product

    asyncio.run(pusher.write_offline())

    frame = stored(pusher)
    assert frame.columns == [f.name for f in event_schema(PRODUCT)]
    assert frame.schema["occurred_at"] == pl.Datetime("us", "UTC")
    assert frame.schema["amount_cents"] == pl.Int64 and frame.schema[UNIT] == pl.String
    assert frame[UNIT].to_list() == [a.subject for a in accepted]
    assert frame["amount_cents"].to_list() == [a.event["amount_cents"] for a in accepted]
    micros = [round(a.event_time * 1e6) for a in accepted]
    assert frame["occurred_at"].dt.epoch("us").to_list() == micros
    assert frame.drop("occurred_at").to_dicts() == [
        {k: v for k, v in a.event.items() if k != "occurred_at"} for a in accepted
    ]
    text = frame.write_csv().lower()
    assert not any(p.email.lower() in text or p.name.lower() in text for p in PEOPLE)
    assert pusher.counters["offline_events"] == 40
    asyncio.run(pusher.write_offline())  # nothing buffered: no empty part file
    assert len(part_files(pusher.store.events_folder("orders"))) == 1


def test_full_buffers_are_converted_between_writes(tmp_path: Path) -> None:
    """A product's buffer is converted to Arrow once it is full, and the next write puts the
    converted and the recent events in one part file, in arrival order."""
    orders, pusher = setup(tmp_path)
    first = [route(orders, i % 3, T0 + i, i) for i in range(5)]
    asyncio.run(pusher.compact_events(minimum=6))
    assert orders.buffered_events == 5  # not full yet
    asyncio.run(pusher.compact_events(minimum=5))
    assert orders.buffered_events == 0
    second = [route(orders, 4, T0 + 10 + i, 10 + i) for i in range(3)]

    asyncio.run(pusher.write_offline())

    [part] = part_files(pusher.store.events_folder("orders"))
    assert pq.read_table(part).column("order_id").to_pylist() == [
        a.event["order_id"] for a in first + second
    ]


def test_evict_removes_the_subject_from_buffers_and_files(tmp_path: Path) -> None:
    """Erasure removes a subject's events from the written part files, the converted tables
    and the pipeline's buffer; other subjects' events stay."""
    orders, pusher = setup(tmp_path)
    written = [route(orders, i % 4, T0 + i, i) for i in range(8)]
    asyncio.run(pusher.write_offline())
    converted = [route(orders, i % 4, T0 + 20 + i, 20 + i) for i in range(8)]
    asyncio.run(pusher.compact_events(minimum=1))
    buffered = [route(orders, i % 4, T0 + 40 + i, 40 + i) for i in range(8)]
    gone = written[1].subject

    asyncio.run(pusher.evict({gone}))
    asyncio.run(pusher.write_offline())

    frame = stored(pusher)
    assert gone not in frame[UNIT].to_list()
    kept = [a.subject for a in written + converted + buffered if a.subject != gone]
    assert sorted(frame[UNIT].to_list()) == sorted(kept) and len(kept) == 18
    assert pusher.counters["erasures_applied"] == 1


def test_offline_task_writes_events_on_its_period(tmp_path: Path) -> None:
    """The offline task writes the buffered events as a part file every
    ``offline_flush_seconds`` and keeps running."""
    orders, pusher = setup(tmp_path, offline_flush_seconds=0.2)

    async def scenario() -> None:
        task = asyncio.create_task(pusher.run_offline())
        route(orders, 0, T0, 1)
        await asyncio.sleep(0.5)
        route(orders, 1, T0 + 1, 2)
        await asyncio.sleep(0.4)
        task.cancel()

    asyncio.run(scenario())
    assert len(part_files(pusher.store.events_folder("orders"))) == 2
    assert stored(pusher).height == 2 and pusher.counters["offline_failures"] == 0


def test_each_events_part_gets_its_pre_aggregate_and_a_day_file_once_over(
    tmp_path: Path,
) -> None:
    """An offline write puts a pre-aggregate part (same name) next to the events part,
    whose rows answer like the events; once the day is over and settled (not before)
    the day's parts are merged into a day file; an erasure removes the subject from both."""
    orders, pusher = setup(tmp_path)
    accepted = [route(orders, i % 5, T0 + i * 7.5, i) for i in range(30)]
    asyncio.run(pusher.write_offline())
    events_folder = pusher.store.events_folder("orders")
    [part] = part_files(events_folder)
    layout = preaggregate.Layout.of(PRODUCT)
    sub = preaggregate.layout_folder(preaggregate.preaggregate_folder(events_folder), layout)
    [twin] = preaggregate.parts(sub)
    assert twin.name == part.name
    expected = preaggregate.preaggregate(pq.read_table(part), layout)
    assert pl.read_parquet(twin).equals(expected)
    day = T0 - T0 % preaggregate.DAY_SECONDS
    assert preaggregate.day_file(sub, day).exists()  # that day is long over: merged
    preaggregate.day_file(sub, day).unlink()
    pusher._open_days["orders"] = {day}
    pusher._merge_days("orders", day + preaggregate.DAY_SECONDS)  # not settled yet
    assert not preaggregate.day_file(sub, day).exists()
    pusher._merge_days("orders", day + preaggregate.DAY_SECONDS + PREAGGREGATE_SETTLE_SECONDS)
    assert preaggregate.day_file(sub, day).exists()
    q = EventQuery.for_product(
        PRODUCT,
        "histogram",
        max_records_per_subject=3,
        epsilon=Decimal(1),
        group_by="payment_method",
    )
    start, end = (datetime.fromtimestamp(t, tz=UTC) for t in (day, day + preaggregate.DAY_SECONDS))
    windows = preaggregate.scan_window(events_folder, day, day + preaggregate.DAY_SECONDS)
    assert windows is not None and windows[0].day is not None
    from_events = exact_plan(scan_events(events_folder), q, start, end).collect()
    assert plan_from_store(events_folder, q, start, end).collect().equals(from_events)

    gone = accepted[0].subject
    asyncio.run(pusher.evict({gone}))
    [gone_id] = preaggregate.subject_ids(pl.Series([gone])).to_list()
    for path in sub.glob("*.parquet"):
        assert gone_id not in pl.read_parquet(path)[preaggregate.SUBJECT_ID].to_list()


def test_a_failed_pre_aggregate_leaves_the_events_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pre-aggregate part that cannot be written is counted; the events part stays, and
    the DP API reads its events (no pre-aggregate for its windows)."""
    orders, pusher = setup(tmp_path)
    route(orders, 0, T0, 1)

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(preaggregate, "write_part", broken)
    asyncio.run(pusher.write_offline())
    events_folder = pusher.store.events_folder("orders")
    assert len(part_files(events_folder)) == 1
    assert pusher.counters["preaggregate_failures"] == 1
    day = T0 - T0 % preaggregate.DAY_SECONDS
    assert preaggregate.scan_window(events_folder, day, day + preaggregate.DAY_SECONDS) is None


# ----------------------------------------------------------------- bounded online flushes


class Writes:
    """Records every online write of the pusher's store (view name, subject or window keys)
    and passes it on; ``refuse`` makes writes with any of those subjects fail (all: every
    write fails, the store is away)."""

    def __init__(self, pusher: FeaturePusher) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.refuse: set[str] = set()
        self.away = False
        self._real = pusher.store.write_online
        pusher.store.write_online = self  # type: ignore[method-assign]

    def __call__(self, view: Any, records: list[dict[str, object]]) -> None:
        if self.away or any(r.get(SUBJECT_KEY) in self.refuse for r in records):
            raise ValueError("write refused")
        self.calls.append((view.name, [r.get(SUBJECT_KEY) for r in records]))
        self._real(view, records)

    def subjects(self) -> list[list[Any]]:
        """The subjects of each successful subject-view write, in order."""
        return [keys for view, keys in self.calls if view.endswith("_subject_window")]


def bounded(
    data_dir: Path, max_rows: int
) -> tuple[ProductPipeline, FeaturePusher, RecordingSender, Writes]:
    """A shop pipeline and its pusher (at most ``max_rows`` rows a flush) over a sqlite store
    whose online tables exist, a recording sender and a recorder of the store's writes."""
    stream = StreamSettings(feature_flush_max_rows=max_rows)
    [orders] = build_pipelines(CONTRACT, TOKENS, stream)
    store = DomainFeatureStore(CONTRACT, data_dir, FeatureStoreSettings())
    store.apply()
    sender = RecordingSender()
    pusher = FeaturePusher([orders], store, stream, cast(BatchSender, sender), lambda _: False)
    return orders, pusher, sender, Writes(pusher)


def backlog(count: int, events: int = 1) -> list[SubjectRow]:
    """``count`` subject rows of distinct subjects (``s000``...), oldest first."""
    return [SubjectRow(f"s{i:03}", T0 - T0 % 10, events, {}, i % 4) for i in range(count)]


def online_events(pusher: FeaturePusher, subjects: list[str]) -> list[Any]:
    """Each subject's ``events`` feature in the online store (None: no row)."""
    return [row["events"] for row in pusher.store.subject_features("orders", subjects)]


def test_a_backlog_goes_out_in_bounded_chunks_oldest_first(tmp_path: Path) -> None:
    """A backlog of N rows larger than the bound is written in ceil(N / bound) writes of at
    most the bound each, oldest first, every row exactly once; a newer row of a subject
    still waiting replaces it in its place (not written twice, not pushed back)."""
    orders, pusher, sender, writes = bounded(tmp_path, max_rows=10)
    rows = backlog(25)
    pusher.stash(orders, rows)
    asyncio.run(pusher.flush())
    assert pusher.counters["queued_rows"] == 15
    pusher.stash(orders, [SubjectRow("s012", rows[12].window_start, 7, {}, 0)])  # waiting
    pusher.stash(orders, [SubjectRow("s030", rows[0].window_start, 1, {}, 0)])  # newest
    while pusher.counters["queued_rows"]:
        asyncio.run(pusher.flush())
    asyncio.run(pusher.flush())  # nothing left: no write

    order = [r.subject for r in rows] + ["s030"]
    chunks = writes.subjects()
    assert len(chunks) == math.ceil(len(order) / 10) == 3
    assert [s for chunk in chunks for s in chunk] == order
    assert online_events(pusher, ["s011", "s012", "s030"]) == [1, 7, 1]
    assert orders.counters["subject_rows_pushed"] == 26
    assert len(sender.to(orders.topics.profiles)) == 26
    assert pusher.counters["flush_max_rows"] == 10 and pusher.counters["flush_rows_max"] == 10
    assert pusher.counters["flush_rows_total"] == 26
    assert pusher.counters["online_writes"] == 3
    assert 0 <= pusher.counters["online_write_ms_max"] <= pusher.counters["flush_ms_max"]
    assert pusher.counters["queued_rows_max"] == 25  # the most waiting, before a write
    assert pusher.counters["flushes"] == 4
    assert pusher.counters["flush_seconds_le.5.0"] == 4


def test_an_erasure_between_chunks_wins(tmp_path: Path) -> None:
    """An erasure between two chunks deletes the subject's written row, and no later chunk
    writes its waiting row again; the other rows all go out."""
    orders, pusher, _, writes = bounded(tmp_path, max_rows=10)
    pusher.stash(orders, backlog(25))
    asyncio.run(pusher.flush())
    assert online_events(pusher, ["s003"]) == [1]

    asyncio.run(pusher.evict({"s003", "s017"}))
    while pusher.counters["queued_rows"]:
        asyncio.run(pusher.flush())

    written = [s for chunk in writes.subjects() for s in chunk]
    assert "s017" not in written and len(written) == 24
    assert online_events(pusher, ["s003", "s017", "s016", "s024"]) == [None, None, 1, 1]


def test_a_refused_chunk_is_retried_record_by_record(tmp_path: Path) -> None:
    """A chunk the store refuses because of one row is retried record by record: that row is
    dead-lettered (online_write_failed), the chunk's other rows are written, and the rest of
    the backlog waits for the next flush."""
    orders, pusher, sender, writes = bounded(tmp_path, max_rows=10)
    pusher.stash(orders, backlog(25))
    writes.refuse = {"s004"}
    asyncio.run(pusher.flush())

    assert [len(chunk) for chunk in writes.subjects()] == [1] * 9
    dead = sender.to(orders.topics.dlq)
    assert [dict(o.headers)[REASON_HEADER].decode() for o in dead] == [ONLINE_WRITE_FAILED]
    assert json.loads(dead[0].value)[SUBJECT_KEY] == "s004"
    assert pusher.counters["queued_rows"] == 15 and pusher.counters["flush_failures"] == 0
    asyncio.run(pusher.flush())
    assert writes.subjects()[-1] == [f"s{i:03}" for i in range(10, 20)]


def test_a_store_that_is_away_keeps_the_chunk_for_the_next_flush(tmp_path: Path) -> None:
    """When the store refuses every row of a chunk, the flush fails (counted) and the chunk
    stays at the front of the queue: the next flush writes it, oldest first, nothing lost;
    the offline history has the rows meanwhile (it does not wait for the online store)."""
    orders, pusher, _, writes = bounded(tmp_path, max_rows=10)
    pusher.stash(orders, backlog(12))
    writes.away = True
    asyncio.run(pusher.flush())
    assert pusher.counters["flush_failures"] == 1 and orders.counters["flush_failures"] == 1
    assert pusher.counters["queued_rows"] == 12 and writes.calls == []
    asyncio.run(pusher.write_offline())
    view = pusher.store.product_features(PRODUCT).subject_view.name
    offline = pl.scan_parquet(pusher.store.offline_folder(view) / "*.parquet").collect()
    assert offline[SUBJECT_KEY].to_list() == [f"s{i:03}" for i in range(12)]

    writes.away = False
    asyncio.run(pusher.flush())
    asyncio.run(pusher.flush())
    assert writes.subjects() == [[f"s{i:03}" for i in range(10)], ["s010", "s011"]]
    assert orders.counters["subject_rows_pushed"] == 12


def test_closed_windows_go_before_a_subject_backlog(tmp_path: Path) -> None:
    """A flush writes the closed windows (the DP API's rows) before subject rows, within the
    same bound: a subject backlog does not hold them back."""
    orders, pusher, _, writes = bounded(tmp_path, max_rows=10)
    pusher.stash(orders, backlog(25))
    for seq, at in enumerate((T0, T0 + 20, T0 + 21)):  # the watermark (a median) passes
        route(orders, 0, at, seq)  # the first window's end: it closes
    asyncio.run(pusher.flush())

    views = [view for view, _ in writes.calls]
    assert views[0].endswith("_window_stats") and views[1].endswith("_subject_window")
    assert sum(len(keys) for _, keys in writes.calls) == 10
    assert orders.counters["windows_closed"] == 1
    assert pusher.counters["queued_rows"] == 25 + 2 - 9


def test_fair_shares_examples() -> None:
    """A product needing less than its even share leaves the rest to the others."""
    assert fair_shares({"a": 5, "b": 100}, 20) == {"a": 5, "b": 15}
    assert fair_shares({"a": 100, "b": 100, "c": 0}, 21) == {"a": 11, "b": 10, "c": 0}
    assert fair_shares({"a": 3}, 0) == {"a": 0}
    assert fair_shares({}, 10) == {}


@given(
    wanted=st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 50)),
    budget=st.integers(0, 120),
)
def test_fair_shares_use_the_budget_evenly(wanted: dict[str, int], budget: int) -> None:
    """Shares never exceed what a product wants, add up to the budget (or all that is
    wanted), and a product short of what it wants gets at least any other's share - 1."""
    shares = fair_shares(wanted, budget)
    assert all(0 <= shares[k] <= wanted[k] for k in wanted)
    assert sum(shares.values()) == min(budget, sum(wanted.values()))
    for k, want in wanted.items():
        if shares[k] < want:
            assert all(shares[k] >= share - 1 for share in shares.values())
