"""A record the stores cannot take costs only itself: offline parts and online pushes."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import polars as pl

from domains.contract import FieldType
from domains.registry import get_contract
from feature_repo.definitions import SUBJECT_KEY
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.batch_send import BatchSender
from streams.feature_push import OFFLINE_WRITE_FAILED, ONLINE_WRITE_FAILED, FeaturePusher
from streams.generator import BUILDERS, make_people
from streams.keys import derive_domain_key
from streams.pipeline import ProductPipeline, build_pipelines, partition_for
from streams.pseudonymise import Tokeniser, normalise
from streams.settings import StreamSettings
from streams.topics import REASON_HEADER
from streams.transform import Accepted, Rejected
from tests.fakes import RecordingSender

CONTRACT = get_contract("shop")
PRODUCT = CONTRACT.products[0]
UNIT = PRODUCT.subject_field
TOKENS = Tokeniser(derive_domain_key(b"i" * 32, "shop", 1), 1)
PEOPLE = make_people(12, 29)
T0 = 1_795_427_000


def setup(
    data_dir: Path, online: bool = False
) -> tuple[ProductPipeline, FeaturePusher, RecordingSender]:
    """A shop pipeline, its pusher over a sqlite store (its online tables created when
    ``online``) and a recording sender."""
    stream = StreamSettings()
    [orders] = build_pipelines(CONTRACT, TOKENS, stream)
    store = DomainFeatureStore(CONTRACT, data_dir, FeatureStoreSettings())
    if online:
        store.apply()
    sender = RecordingSender()
    pusher = FeaturePusher([orders], store, stream, cast(BatchSender, sender), lambda _: False)
    return orders, pusher, sender


def order(person: int, at: float, seq: int, **changes: object) -> tuple[bytes, bytes]:
    """A raw order of ``PEOPLE[person]`` at ``at`` with ``changes``: (key, value)."""
    event: dict[str, Any] = BUILDERS[("shop", "orders")](
        PEOPLE[person], random.Random(seq), seq, datetime.fromtimestamp(at, tz=UTC).isoformat()
    )
    event.update(changes)
    return normalise(PEOPLE[person].email, FieldType.EMAIL).encode(), json.dumps(event).encode()


def route(orders: ProductPipeline, keyed: tuple[bytes, bytes]) -> Accepted | Rejected | None:
    """Route a keyed raw order on its key's partition, arriving at T0 + 30."""
    key, raw = keyed
    return orders.route(raw, partition_for(key, 4), 4, key, T0 + 30)


def reasons(sender: RecordingSender, topic: str) -> list[str]:
    """The reason header of each record sent to ``topic``."""
    return [dict(o.headers)[REASON_HEADER].decode() for o in sender.to(topic)]


def test_events_the_issue_lost_are_refused_at_validation() -> None:
    """The events that broke the offline part write (a lone surrogate in an id, a UTC offset
    with seconds) are dead-lettered at ingestion with a reason and never buffered."""
    orders = pipeline_only()
    surrogate = order(0, T0, 1, order_id="o-\ud800")
    odd_offset = order(1, T0, 2, occurred_at="2026-11-23T14:43:20+05:30:15")
    for keyed in (surrogate, odd_offset):
        outcome = route(orders, keyed)
        assert isinstance(outcome, Rejected) and outcome.reason == "invalid_value"
    assert orders.buffered_events == 0


def pipeline_only() -> ProductPipeline:
    """A shop pipeline with default settings."""
    [orders] = build_pipelines(CONTRACT, TOKENS, StreamSettings())
    return orders


def test_an_event_that_breaks_the_offline_write_costs_only_itself(tmp_path: Path) -> None:
    """One buffered event the offline schema cannot take (as a transform bug would let
    through) is dead-lettered with a reason; every accepted event is in the part files."""
    orders, pusher, sender = setup(tmp_path)
    accepted = []
    for i in range(30):
        outcome = route(orders, order(i % 6, T0 + i, i))
        assert isinstance(outcome, Accepted)
        accepted.append(outcome)
        if i == 12:  # a bad dict in the middle of the batch
            bad = dict(outcome.event, occurred_at="2026-11-23T14:43:20+05:30:15")
            orders._events.append(bad)

    asyncio.run(pusher.write_offline())

    folder = pusher.store.events_folder("orders")
    frame = pl.scan_parquet(folder / "*.parquet").collect()
    assert frame[UNIT].to_list() == [a.subject for a in accepted]
    assert frame["order_id"].to_list() == [a.event["order_id"] for a in accepted]
    assert reasons(sender, orders.topics.dlq) == [OFFLINE_WRITE_FAILED]
    assert pusher.counters["offline_events"] == 30


def test_a_bad_event_in_a_converted_chunk_costs_only_itself(tmp_path: Path) -> None:
    """The same holds when the buffer is converted to Arrow between writes (a full chunk)."""
    orders, pusher, sender = setup(tmp_path)
    good = [route(orders, order(i % 6, T0 + i, i)) for i in range(10)]
    orders._events.insert(3, {**orders._events[3], "amount_cents": "lots"})
    asyncio.run(pusher.compact_events(minimum=1))
    asyncio.run(pusher.write_offline())
    frame = pl.scan_parquet(pusher.store.events_folder("orders") / "*.parquet").collect()
    assert frame[UNIT].to_list() == [cast(Accepted, g).subject for g in good]
    assert reasons(sender, orders.topics.dlq) == [OFFLINE_WRITE_FAILED]


def test_a_failing_part_write_keeps_the_events_for_the_next_one(tmp_path: Path) -> None:
    """A part file that cannot be written (the disk, not a record) loses nothing: the
    events are written with the next part, and nothing is dead-lettered."""
    orders, pusher, sender = setup(tmp_path)
    accepted = [cast(Accepted, route(orders, order(i % 6, T0 + i, i))) for i in range(8)]
    real = pusher.store.append_events

    def broken(*_: object) -> None:
        raise OSError("disk full")

    pusher.store.append_events = broken  # type: ignore[method-assign,assignment]
    asyncio.run(pusher.write_offline())
    assert pusher.counters["offline_failures"] == 1 and not sender.outputs
    pusher.store.append_events = real  # type: ignore[method-assign]
    later = [cast(Accepted, route(orders, order(i % 6, T0 + 20 + i, 20 + i))) for i in range(3)]
    asyncio.run(pusher.write_offline())
    frame = pl.scan_parquet(pusher.store.events_folder("orders") / "*.parquet").collect()
    assert frame[UNIT].to_list() == [a.subject for a in accepted + later]


def test_an_online_row_the_store_refuses_costs_only_itself(tmp_path: Path) -> None:
    """When the online write of a batch fails because of one row, that row is dead-lettered
    (online_write_failed) and the other rows are written."""
    orders, pusher, sender = setup(tmp_path, online=True)
    for i in range(6):
        route(orders, order(i, T0 + 1, i))
    real = pusher.store.write_online
    poisoned = cast(Accepted, route(orders, order(0, T0 + 2, 99))).subject

    def picky(view: Any, records: list[dict[str, object]]) -> None:
        if any(r.get(SUBJECT_KEY) == poisoned for r in records):
            raise ValueError("row refused")
        real(view, records)

    pusher.store.write_online = picky  # type: ignore[method-assign]
    asyncio.run(pusher.flush())
    assert reasons(sender, orders.topics.dlq) == [ONLINE_WRITE_FAILED]
    dead = json.loads(sender.to(orders.topics.dlq)[0].value)
    assert dead[SUBJECT_KEY] == poisoned  # pseudonymised: a token, no raw identifier
    assert orders.counters["subject_rows_pushed"] == 6
    assert pusher.counters["flush_failures"] == 0
