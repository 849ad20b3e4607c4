"""Pre-aggregates of product events: same answers as the events, erasure, retention."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboards_api.event_aggregates import (
    EventQuery,
    exact_plan,
    plan_from_store,
    preaggregate_plan,
    scan_events,
)
from domains.registry import get_contract
from feature_repo import preaggregate as pa_
from feature_repo.offline import append_part
from feature_repo.preaggregate import Layout, scan_window, subject_ids

S, T, G, M = "subject_token", "at", "page", "amount"
CATEGORIES = ("home", "search", "product", "cart")
DAY = datetime(2026, 11, 1, tzinfo=UTC)
LAYOUT = Layout(S, T, ((G, CATEGORIES), ("device", ("mobile", "desktop"))), ((M, (0, 10), True),))
SCHEMA = pa.schema(
    [
        (S, pa.string()),
        (T, pa.timestamp("us", "UTC")),
        (G, pa.string()),
        ("device", pa.string()),
        (M, pa.float64()),
    ]
)
HOSTILE = [float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 2.5, 3.5, -0.0, None]

Row = tuple[str | None, float | None, str | None, str | None, float | None]


def table(rows: list[Row]) -> pa.Table:
    """Events of ``rows`` (subject, seconds after DAY, page, device, amount)."""
    return pa.table(
        {
            S: [r[0] for r in rows],
            T: [None if r[1] is None else DAY + timedelta(seconds=r[1]) for r in rows],
            G: [r[2] for r in rows],
            "device": [r[3] for r in rows],
            M: [r[4] for r in rows],
        },
        schema=SCHEMA,
    )


def store(tmp: Path, parts: list[list[Row]], twins: bool = True, layout: Layout = LAYOUT) -> Path:
    """Event parts in ``tmp/x_events``, each with its pre-aggregate part."""
    folder = tmp / "x_events"
    for rows in parts:
        events = table(rows)
        part = append_part(folder, events)
        if part is not None and twins:
            pa_.write_part(pa_.preaggregate_folder(folder), part, events, layout)
    return folder


def query(aggregate: str, k: int, grouped: bool) -> EventQuery:
    measured = aggregate in {"bounded_sum", "mean"}
    return EventQuery(
        aggregate=aggregate,  # type: ignore[arg-type]
        subject=S,
        time=T,
        max_records_per_subject=k,
        epsilon=Decimal(1),
        group_by=G if grouped else None,
        categories=CATEGORIES if grouped else (),
        measure=M if measured else None,
        bounds=(0, 10) if measured else None,
    )


QUERIES = [
    (a, k, grouped)
    for a in ("count_records", "histogram", "count_distinct_subjects", "bounded_sum", "mean")
    for k in (1, 2, 7)
    for grouped in (True, False)
    if not (a == "histogram" and not grouped)
]


def both(folder: Path, q: EventQuery, start: datetime, end: datetime) -> tuple[Any, Any]:
    """The event path's and the pre-aggregate path's exact answers."""
    events = exact_plan(scan_events(folder), q, start, end).collect().rows()
    windows = scan_window(folder, int(start.timestamp()), int(end.timestamp()))
    assert windows is not None
    planned = preaggregate_plan(windows, q)
    assert planned is not None
    return events, planned.collect().rows()


rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "é\x00", ""]) | st.none(),
        st.one_of(st.none(), st.floats(-100, 3 * 3600, allow_nan=False)),
        st.sampled_from([*CATEGORIES, "zzz", "", None]),
        st.sampled_from(["mobile", "desktop", "tv", None]),
        st.one_of(st.sampled_from(HOSTILE), st.floats(-20, 30)),
    ),
    max_size=60,
)


@settings(max_examples=25, deadline=None)
@given(parts=st.lists(rows_strategy, min_size=1, max_size=3))
def test_preaggregates_give_the_event_path_answer_exactly(parts: list[list[Row]]) -> None:
    """On any events (hostile measures, null subjects, times, keys; several parts), every
    count, histogram, distinct count, sum and mean from the pre-aggregates equals the
    event path's, for minute, hour and multi-hour windows."""
    import tempfile

    if not any(parts):
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = store(Path(tmp), parts)
        windows = [
            (DAY + timedelta(minutes=1), DAY + timedelta(hours=3)),
            (DAY, DAY + timedelta(minutes=1)),
        ]
        for start, end in windows:
            for aggregate, k, grouped in QUERIES:
                events, pre = both(folder, query(aggregate, k, grouped), start, end)
                assert events == pre, (aggregate, k, grouped, start, end)


def random_rows(rng: random.Random, n: int, subjects: int) -> list[Row]:
    return [
        (
            f"k1.{rng.randrange(subjects):026x}",
            rng.uniform(-600, 86_400 + 600),
            rng.choice([*CATEGORIES, CATEGORIES[0], "other"]),
            rng.choice(["mobile", "desktop"]),
            rng.choice([*HOSTILE, rng.uniform(-5, 15), rng.uniform(0, 10)]),
        )
        for _ in range(n)
    ]


def test_a_merged_day_gives_the_same_answers_and_late_parts_still_count(tmp_path: Path) -> None:
    """Merging a day's parts changes no answer over that day; a part written after the
    merge (late events) is read next to the day file."""
    rng = random.Random(5)
    folder = store(tmp_path, [random_rows(rng, 3000, 300) for _ in range(4)])
    sub = pa_.layout_folder(pa_.preaggregate_folder(folder), LAYOUT)
    day_start = int(DAY.timestamp())
    assert pa_.merge_day(sub, LAYOUT, day_start) is not None
    store(tmp_path, [random_rows(rng, 500, 300)])  # late: after the merge
    start, end = DAY, DAY + timedelta(days=1)
    windows = scan_window(folder, day_start, day_start + 86_400)
    assert windows is not None
    assert len(pl.concat([w.rows for w in windows]).collect()) < 15_000  # day file rows
    for aggregate, k, grouped in QUERIES:
        events, pre = both(folder, query(aggregate, k, grouped), start, end)
        assert events == pre, (aggregate, k, grouped)


@pytest.mark.parametrize("layout", [LAYOUT, replace(LAYOUT, keys=LAYOUT.keys[:1])])
def test_a_day_file_alone_gives_the_event_path_answer(tmp_path: Path, layout: Layout) -> None:
    """A whole day answered from its day file's stored subject totals (no per-subject
    group-by) equals the event path, with light and heavy subjects and hostile values."""
    rng = random.Random(8)
    parts = [random_rows(rng, 2000, 150) for _ in range(3)]
    parts[0] += [(None, 100.0, "home", "mobile", 3.0), ("k1.n", 200.0, None, None, None)]
    folder = store(tmp_path, parts, layout=layout)
    sub = pa_.layout_folder(pa_.preaggregate_folder(folder), layout)
    assert pa_.merge_day(sub, layout, int(DAY.timestamp())) is not None
    [window] = scan_window(folder, int(DAY.timestamp()), int(DAY.timestamp()) + 86_400) or []
    assert window.parts is None and window.day is not None
    for aggregate, k, grouped in QUERIES:
        events, pre = both(folder, query(aggregate, k, grouped), DAY, DAY + timedelta(days=1))
        assert events == pre, (aggregate, k, grouped)


def test_events_without_a_pre_aggregate_are_read_from_the_events(tmp_path: Path) -> None:
    """A window that an events part without a pre-aggregate may hold, or that is not
    whole minutes, is answered from the events; one the part does not touch is not."""
    rng = random.Random(3)
    folder = store(tmp_path, [random_rows(rng, 200, 20)])
    late: list[Row] = [("k1.x", 30.0 * 3600, "home", "mobile", 1.0)]  # day 2, 06:00
    store(tmp_path, [late], twins=False)
    start = int(DAY.timestamp())
    assert scan_window(folder, start, start + 3600) is not None
    assert scan_window(folder, start + 30 * 3600, start + 31 * 3600) is None
    assert scan_window(folder, start + 1, start + 3600) is None
    q = query("histogram", 2, True)
    planned = plan_from_store(folder, q, DAY + timedelta(hours=30), DAY + timedelta(hours=31))
    assert planned.collect().rows() == [("home", 1), ("search", 0), ("product", 0), ("cart", 0)]


def test_subject_ids_are_a_stable_64_bit_hash_of_the_token() -> None:
    """The id is BLAKE2b-64 of the token (stable across versions and processes); a
    missing token is id 0."""
    ids = subject_ids(pl.Series(["k1.abc", None, "k1.abc"])).to_list()
    expected = int.from_bytes(hashlib.blake2b(b"k1.abc", digest_size=8).digest(), "big")
    assert ids == [expected, 0, expected]


def test_erasure_and_retention_remove_pre_aggregate_rows(tmp_path: Path) -> None:
    """Erasing a subject removes its rows from parts and day files; retention removes
    the minutes before the cutoff (the cutoff's minute whole) and earlier day files."""
    rows: list[Row] = [
        ("k1.gone", 10.0, "home", "mobile", 1.0),
        ("k1.kept", 10.0, "home", "mobile", 1.0),
        ("k1.kept", 3 * 3600.0, "cart", "mobile", 2.0),
    ]
    folder = store(tmp_path, [rows])
    top = pa_.preaggregate_folder(folder)
    sub = pa_.layout_folder(top, LAYOUT)
    pa_.merge_day(sub, LAYOUT, int(DAY.timestamp()))
    gone = int(subject_ids(pl.Series(["k1.gone"]))[0])
    assert pa_.erase(top, {"k1.gone"}) == 2  # its part row and its day-file row
    for path in sorted(sub.glob("*.parquet")):
        assert gone not in pl.read_parquet(path)[pa_.SUBJECT_ID].to_list()
    # 03:00:30: the day file (2 rows: home, cart), 00:00 and 03:00 (the cutoff's minute)
    assert pa_.purge_before(top, DAY.timestamp() + 3 * 3600 + 30) == 4
    assert not list(sub.glob("*.parquet"))  # the emptied part is deleted


def test_layout_of_a_contract_product() -> None:
    """Keys are the clear fields with public values; measures the bounded numeric ones,
    clamped to the contract's per-record clamp (0..20000 cents, not the field's 0..100000)."""
    layout = Layout.of(get_contract("shop").product("orders"))  # type: ignore[arg-type]
    assert layout.keys == (("payment_method", ("card", "paypal", "invoice", "gift_card")),)
    assert layout.measures == (("amount_cents", (0, 20_000), False),)
    assert Layout.from_json(layout.to_json()) == layout


@pytest.mark.parametrize("cutoff_minute", [0, 1])
def test_purge_keeps_later_minutes(tmp_path: Path, cutoff_minute: int) -> None:
    """Rows of minutes at or after the cutoff stay."""
    folder = store(tmp_path, [[("k1.a", 90.0, "home", "mobile", 1.0)]])
    top = pa_.preaggregate_folder(folder)
    assert pa_.purge_before(top, DAY.timestamp() + 60 * cutoff_minute) == 0
