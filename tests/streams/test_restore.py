"""Restoring the per-day tallies from the offline event files after a restart."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from domains.registry import get_product
from feature_repo.events import event_schema, event_table
from feature_repo.offline import append_part
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.restore import OfflineDayTallies, day_tallies
from streams.windows import DayTally, WindowAggregator

_, ORDERS = get_product("shop", "orders")
DAY = 1_795_392_000  # a UTC midnight
UNIT = ORDERS.subject_field


def event(subject: str, at: float) -> dict[str, object]:
    """A published shop.orders event (the dict the offline files hold)."""
    return {
        "order_id": "ord-1",
        UNIT: subject,
        "ip_address": "10.1.2.0/24",
        "birth_date": "30-39",
        "zip_code": "941",
        "payment_method": "card",
        "amount_cents": 1_000,
        "occurred_at": datetime.fromtimestamp(at, UTC).isoformat(),
    }


def cents(total: float) -> dict[str, float]:
    """A restored day total of amount_cents (shop.orders caps it a day)."""
    return {"amount_cents": total}


def write(folder: Path, events: list[dict[str, object]]) -> None:
    append_part(folder, event_table(event_schema(ORDERS), events))


def test_day_tallies_count_records_windows_and_hours_per_subject(tmp_path: Path) -> None:
    """Per subject and day: records and distinct windows (capped at the contract's bounds)
    and the hours with a record; other days and empty folders give nothing."""
    folder = tmp_path / "orders_events"
    assert day_tallies(folder, ORDERS, 10, [DAY]) == {}
    write(folder, [event("a", DAY + 1), event("a", DAY + 2), event("a", DAY + 3_611)])
    write(folder, [event("b", DAY + 7_205), event("c", DAY - 5), event("c", DAY + 86_400)])
    write(folder, [event("heavy", DAY + 20 * i) for i in range(40)])
    tallies = day_tallies(folder, ORDERS, 10, [DAY])
    assert set(tallies) == {DAY}
    # shop.orders caps amount_cents a day: the clamped day total (1000 an event) is restored
    assert tallies[DAY]["a"] == DayTally(records=3, windows=2, hours=0b11, sums=cents(3_000))
    assert tallies[DAY]["b"] == DayTally(records=1, windows=1, hours=0b100, sums=cents(1_000))
    assert "c" not in tallies[DAY]  # its events are on the days before and after
    # 40 records in 40 windows: capped at shop.orders' 10 and 10 (more is never needed)
    assert tallies[DAY]["heavy"] == DayTally(records=10, windows=10, hours=1, sums=cents(40_000))
    both = day_tallies(folder, ORDERS, 10, [DAY, DAY + 86_400])
    assert both[DAY + 86_400] == {"c": DayTally(records=1, windows=1, hours=1, sums=cents(1_000))}


def test_a_restored_aggregator_does_not_give_the_day_afresh(tmp_path: Path) -> None:
    """After a restart, a subject that used its day's records before is truncated; the
    restored counts are an upper bound (a subject's truncated events count as records). The
    events are written where the processor's offline flush writes them (the store's events
    folder), and read back from there."""
    contract, _ = get_product("shop", "orders")
    store = DomainFeatureStore(contract, tmp_path, FeatureStoreSettings())
    events = [event("a", DAY + 100 + i) for i in range(12)] + [event("b", DAY + 50)]
    store.append_events(ORDERS, event_table(event_schema(ORDERS), events))
    restore = OfflineDayTallies(store.events_folder, 10)
    seed = restore(ORDERS, [DAY])
    agg = WindowAggregator(
        10,
        0,
        20,
        {"amount_cents": ORDERS.clamp_of("amount_cents")},
        contribution=ORDERS.contribution,
        seed=seed,
    )
    assert not agg.add("a", DAY + 500, {"amount_cents": 5})
    assert agg.add("b", DAY + 500, {"amount_cents": 5})
    agg.caught_up(DAY + 520)
    [stats, _] = agg.close_ready(DAY + 520)
    assert (stats.events, stats.truncated_events, stats.new_subjects_period) == (1, 1, 0)
    assert stats.new_subjects_hour == 0  # b counted a record in hour 0 before the restart


def test_part_files_of_different_contract_versions_are_read_together(tmp_path: Path) -> None:
    """A part file with a column the others lack (a field added in a later contract version)
    does not stop the restore: only the token and the event time are read."""
    folder = tmp_path / "orders_events"
    write(folder, [event("a", DAY + 1)])
    table = event_table(event_schema(ORDERS), [event("a", DAY + 11)])
    append_part(folder, table.append_column("coupon", pa.array(["x"])))
    assert day_tallies(folder, ORDERS, 10, [DAY])[DAY]["a"] == DayTally(2, 2, 1, cents(2_000))


def test_restored_day_totals_are_clamped_capped_and_survive_a_missing_column(
    tmp_path: Path,
) -> None:
    """A capped measure's restored day total sums the clamped values (an amount above the
    clamp counts as the clamp), stops at the day cap, and a part file written before the
    measure existed adds nothing rather than failing the restore."""
    folder = tmp_path / "orders_events"
    clamp, cap = ORDERS.clamp_of("amount_cents").max, ORDERS.sum_cap_of("amount_cents")
    assert cap is not None
    write(folder, [{**event("big", DAY + 1), "amount_cents": 90_000}])
    write(folder, [{**event("heavy", DAY + 10 * i), "amount_cents": 20_000} for i in range(9)])
    old = event_table(event_schema(ORDERS), [event("big", DAY + 21)]).drop_columns(["amount_cents"])
    append_part(folder, old)
    tallies = day_tallies(folder, ORDERS, 10, [DAY])[DAY]
    assert tallies["big"].records == 2 and tallies["big"].sums == cents(clamp)
    assert tallies["heavy"].sums == cents(min(9 * 20_000, cap))
