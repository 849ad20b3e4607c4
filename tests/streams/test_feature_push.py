"""The feature pusher's offline task: product events to typed part files, and erasure."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from dashboards_api.event_aggregates import EventQuery, exact_plan, plan_from_store, scan_events
from domains.contract import FieldType
from domains.registry import get_contract
from feature_repo import preaggregate
from feature_repo.events import event_schema
from feature_repo.offline import part_files
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.batch_send import BatchSender
from streams.feature_push import PREAGGREGATE_SETTLE_SECONDS, FeaturePusher
from streams.generator import BUILDERS, make_people
from streams.keys import derive_domain_key
from streams.pipeline import ProductPipeline, build_pipelines, partition_for
from streams.pseudonymise import Tokeniser, normalise
from streams.settings import KafkaSettings, StreamSettings
from streams.transform import Accepted

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
