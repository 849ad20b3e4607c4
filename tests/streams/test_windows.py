"""Window aggregation: erasure forgets a subject's open-window state; the per-subject
per-day contribution bounds hold whatever the records."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.contract import Bounds, ContributionBounds
from streams.windows import DayTally, WindowAggregator, WindowStats


def test_forget_drops_open_tallies_and_pending_rows() -> None:
    agg = WindowAggregator(10, 0, 5, {"amount": Bounds(min=0, max=100)})
    agg.add("gone", 1001.0, {"amount": 50})
    agg.add("gone", 1012.0, {"amount": 50})
    agg.add("kept", 1003.0, {"amount": 7})
    assert agg.forget({"gone", "never-seen"}) == 2
    assert [r.subject for r in agg.drain_subject_rows()] == ["kept"]
    agg.add("newcomer", 1021.0, {"amount": 1})
    agg.add("newcomer", 1022.0, {"amount": 1})
    # the watermark (median of the last three event times: 1021) has passed two windows
    first, second = agg.close_ready(1025.0)
    assert (first.distinct_subjects, first.sums["amount"]) == (1, 7.0)
    assert second.distinct_subjects == 0 and first.complete and second.complete
    # Idle for idle_seconds: the rest closes by the wall clock, marked incomplete.
    (third,) = agg.close_ready(1025.0 + agg.idle_seconds)
    assert third.distinct_subjects == 1 and not third.complete


# ---------------------------------------------------------------- per-subject per-day bounds

DAY = 1_795_392_000  # a UTC midnight (divisible by 86400)
HOUR = 3_600


def bounded(
    records: int = 10,
    windows: int = 10,
    per_window: int = 20,
    clamp: Bounds | None = None,
    seed: dict[int, dict[str, DayTally]] | None = None,
) -> WindowAggregator:
    """A 10-second, no-grace aggregator with per-day bounds and ``x`` clamped to ``clamp``."""
    return WindowAggregator(
        10,
        0,
        per_window,
        {"x": clamp or Bounds(min=0, max=100)},
        contribution=ContributionBounds(
            max_records_per_period=records, max_windows_per_period=windows
        ),
        seed=seed,
    )


def close_all(agg: WindowAggregator, until: float) -> list[WindowStats]:
    """Every window closed by ``until`` (the watermark follows the wall clock)."""
    agg.caught_up(until)
    return agg.close_ready(until)


def test_fifty_records_in_thirty_windows_count_the_day_bounds_exactly() -> None:
    """A subject with 50 records spread over 30 windows of one day contributes exactly
    max_records records in at most max_windows windows; the rest are truncated, per window."""
    agg = bounded(records=7, windows=4)
    starts = [DAY + 600 + 10 * i for i in range(30)]
    for n in range(50):
        assert agg.add("heavy", starts[n % 30] + 1, {"x": 1.0}) == (n in {0, 1, 2, 3, 30, 31, 32})
    stats = close_all(agg, DAY + 2_000)
    assert sum(s.events for s in stats) == 7
    assert sum(s.sums["x"] for s in stats) == 7.0
    assert sum(1 for s in stats if s.distinct_subjects) == 4
    assert sum(s.truncated_events for s in stats) == 43 == agg.truncated_events
    by_start = {s.window_start: s for s in stats}
    # windows 0..3 took two records each but the 8th was refused; 4..29 took none
    assert [by_start[w].events for w in starts[:4]] == [2, 2, 2, 1]
    assert [by_start[w].truncated_events for w in starts[:4]] == [0, 0, 0, 1]
    assert all(by_start[w].truncated_events == (2 if i < 20 else 1) for i, w in
               enumerate(starts) if i >= 4)  # fmt: skip
    assert {(s.max_records_per_period, s.max_windows_per_period) for s in stats} == {(7, 4)}


def test_a_new_utc_day_resets_the_bounds() -> None:
    """The bounds are per UTC day of event time: the next day the subject counts afresh,
    and the closed day's tallies are dropped."""
    agg = bounded(records=3, windows=3)
    for i in range(5):
        agg.add("s", DAY + 86_380 + i, {"x": 1.0})  # all in the day's last windows
    for i in range(5):
        agg.add("s", DAY + 86_400 + 10 * i, {"x": 1.0})
    assert set(agg.tallied_days) == {DAY, DAY + 86_400}
    stats = close_all(agg, DAY + 86_500)
    today = [s for s in stats if s.window_start < DAY + 86_400]
    tomorrow = [s for s in stats if s.window_start >= DAY + 86_400]
    assert sum(s.events for s in today) == 3 and sum(s.truncated_events for s in today) == 2
    assert sum(s.events for s in tomorrow) == 3 and sum(s.truncated_events for s in tomorrow) == 2
    assert sum(s.new_subjects_period for s in today) == 1
    assert sum(s.new_subjects_period for s in tomorrow) == 1
    assert set(agg.tallied_days) == {DAY + 86_400}  # the first day is over: dropped


def test_a_record_in_a_window_already_used_needs_no_new_window() -> None:
    """Once a subject has used its windows it may still add records to those windows (up to
    the record bound), never to a new one."""
    agg = bounded(records=5, windows=2)
    assert agg.add("s", DAY + 1, {"x": 1})
    assert agg.add("s", DAY + 11, {"x": 1})
    assert not agg.add("s", DAY + 21, {"x": 1})  # a third window: truncated
    assert agg.add("s", DAY + 2, {"x": 1}) and agg.add("s", DAY + 12, {"x": 1})
    assert agg.add("s", DAY + 3, {"x": 1})
    assert not agg.add("s", DAY + 4, {"x": 1})  # the sixth record: truncated
    stats = close_all(agg, DAY + 30)
    assert [s.events for s in stats] == [3, 2, 0]
    assert [s.truncated_events for s in stats] == [1, 0, 1]


def test_each_measure_is_clamped_to_the_contract_clamp() -> None:
    """Every counted record's measure is clamped to ``clamp_of``: large values count as the
    clamp's maximum, negative ones as its minimum, and infinity as the bound it exceeds."""
    agg = bounded(clamp=Bounds(min=0, max=200))
    for subject, value in [("a", 50.0), ("b", 5_000.0), ("c", -7.0), ("d", math.inf),
                           ("e", -math.inf), ("f", 1e308)]:  # fmt: skip
        assert agg.add(subject, DAY + 1, {"x": value})
    [stats] = close_all(agg, DAY + 10)
    assert stats.sums["x"] == 50 + 200 + 0 + 200 + 0 + 200


def test_hostile_values_never_break_the_tallies() -> None:
    """NaN measures and non-finite event times are refused before any state changes; huge
    and infinite measures are clamped; the bounds hold afterwards."""
    agg = bounded(records=2, windows=2)
    with pytest.raises(ValueError, match="NaN"):
        agg.add("s", DAY + 1, {"x": math.nan})
    for when in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            agg.add("s", when, {"x": 1.0})
    assert agg.tallied_days == {} and agg.watermark is None
    assert agg.add("s", DAY + 1, {"x": 1e300}) and agg.add("s", DAY + 2, {"x": math.inf})
    assert not agg.add("s", DAY + 3, {"x": 1.0})
    [stats] = close_all(agg, DAY + 10)
    assert (stats.events, stats.sums["x"], stats.truncated_events) == (2, 200.0, 1)
    assert math.isfinite(stats.sums["x"])


def test_per_window_cap_still_applies_and_is_not_truncation() -> None:
    """The per-window cap binds first: records over it are capped, not truncated."""
    agg = bounded(records=10, windows=10, per_window=3)
    results = [agg.add("s", DAY + 1, {"x": 1}) for _ in range(5)]
    assert results == [True, True, True, False, False]
    [stats] = close_all(agg, DAY + 10)
    assert (stats.events, stats.truncated_events, agg.capped_events) == (3, 0, 2)


@settings(max_examples=60, deadline=None)
@given(
    records=st.integers(1, 40),
    extra_windows=st.integers(0, 30),
    events=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 86_399), st.floats(allow_nan=False)),
        min_size=1,
        max_size=300,
    ),
)
def test_new_subject_counts_and_records_respect_the_day_bounds(
    records: int, extra_windows: int, events: list[tuple[int, int, float]]
) -> None:
    """Whatever a day's records: per subject, the day's counted records are at most
    max_records, its windows at most max_windows, the sum of new_subjects_period at most 1
    (exactly 1 when it counted anything), of new_subjects_hour at most min(24, max_windows);
    counted plus truncated plus capped records is every record."""
    windows = max(1, records - extra_windows)
    agg = bounded(records=records, windows=windows, per_window=3)
    counted: Counter[str] = Counter()
    used: dict[str, set[int]] = {}
    first_window_of_day: dict[str, int] = {}
    for subject, offset, value in sorted(events, key=lambda e: e[1]):
        name = f"s{subject}"
        if agg.add(name, DAY + offset, {"x": value}):
            counted[name] += 1
            used.setdefault(name, set()).add(agg.window_of(DAY + offset))
            first_window_of_day.setdefault(name, agg.window_of(DAY + offset))
    stats = close_all(agg, DAY + 86_400)
    assert all(n <= records for n in counted.values())
    assert all(len(w) <= windows for w in used.values())
    assert sum(s.events for s in stats) == sum(counted.values())
    assert sum(s.events + s.truncated_events for s in stats) + agg.capped_events == len(events)
    # one aggregator, so each subject's window membership is visible per window
    assert sum(s.new_subjects_period for s in stats) == len(counted)
    assert sum(s.new_subjects_hour for s in stats) <= len(counted) * min(24, windows)
    hours = {(n, (w - DAY) // HOUR) for n, ws in used.items() for w in ws}
    assert sum(s.new_subjects_hour for s in stats) == len(hours)
    by_start = {s.window_start: s for s in stats}
    for start in set(first_window_of_day.values()):
        assert by_start[start].new_subjects_period >= 1
    assert all(abs(s.sums["x"]) <= 100 * s.events for s in stats)


def test_a_restored_tally_carries_the_day_over_a_restart() -> None:
    """A seeded tally (what the subject counted before a restart) counts towards the bounds,
    and a subject already seen today is not new today again."""
    seed = {DAY: {"s": DayTally(records=4, windows=2, hours=1)}}
    agg = bounded(records=5, windows=3, seed=seed)
    assert agg.add("s", DAY + 1, {"x": 1})  # fifth record, third window
    assert not agg.add("s", DAY + 11, {"x": 1})  # record bound reached
    assert agg.add("t", DAY + 1, {"x": 1})
    [first, second] = close_all(agg, DAY + 20)
    assert (first.events, first.new_subjects_period, first.new_subjects_hour) == (2, 1, 1)
    assert second.truncated_events == 1
    assert seed[DAY]["s"].records == 4  # the shared seed is not modified


def test_late_events_do_not_touch_the_tallies() -> None:
    """An event of a closed window is late: counted as late, not against the day's bounds."""
    agg = bounded(records=2, windows=2)
    agg.add("s", DAY + 1, {"x": 1})
    close_all(agg, DAY + 20)
    assert not agg.add("s", DAY + 5, {"x": 1})  # late
    assert agg.late_events == 1
    assert agg.add("s", DAY + 21, {"x": 1})  # second record, second window: still counted


def test_day_tallies_stay_bounded_over_many_subjects() -> None:
    """100,000 subjects in one day: tallies are dropped once the day's windows have closed."""
    agg = bounded()
    for i in range(100_000):
        agg.add(f"s{i}", DAY + 86_300 + (i % 90), {"x": 1.0})
    assert agg.tallied_days == {DAY: 100_000}
    close_all(agg, DAY + 86_410)
    assert agg.tallied_days == {}


@pytest.mark.parametrize("windows", [60, 48, 30, 11, 1])
def test_one_subject_is_new_once_a_day_and_at_most_once_an_hour(windows: int) -> None:
    """One subject with records in two windows of every hour of the day: summed over the
    day's windows it is new in the day exactly once, and new in an hour once per hour it
    has a counted window, never more than min(24, max_windows)."""
    agg = bounded(records=200, windows=windows)
    for hour in range(24):
        for minute in (5, 35):  # two windows an hour: only the first is new in the hour
            agg.add("s", DAY + hour * HOUR + minute * 60, {"x": 1.0})
            agg.add("s", DAY + hour * HOUR + minute * 60 + 1, {"x": 1.0})
    stats = close_all(agg, DAY + 86_400)
    used = min(windows, 48)
    assert sum(1 for s in stats if s.distinct_subjects) == used
    assert sum(s.new_subjects_period for s in stats) == 1
    assert sum(s.new_subjects_hour for s in stats) == math.ceil(used / 2)
    assert sum(s.new_subjects_hour for s in stats) <= min(24, windows)
    assert sum(s.events for s in stats) == 2 * used


def capped(
    cap: float, records: int = 10, seed: dict[int, dict[str, DayTally]] | None = None
) -> WindowAggregator:
    """A 10-second aggregator whose ``x`` (clamped to 0..100) is capped at ``cap`` a day."""
    return WindowAggregator(
        10,
        0,
        20,
        {"x": Bounds(min=0, max=100)},
        contribution=ContributionBounds(
            max_records_per_period=records,
            max_windows_per_period=records,
            clamp={"x": Bounds(min=0, max=100)},
            max_sum_per_period={"x": cap},
        ),
        seed=seed,
    )


def test_a_sum_cap_counts_the_remainder_across_windows_and_records_the_cut() -> None:
    """A subject's day total of a capped measure stops at the cap across windows: the record
    that passes it adds the remainder, later ones add 0 but still count as records; the
    amount cut is reported per window and in total."""
    agg = capped(250)
    for i, value in enumerate([100, 90, 80, 70, 1e9]):  # clamped to 100 each: 100, 90, 80, ...
        assert agg.add("s", DAY + 10 * i + 1, {"x": value})
    assert agg.add("t", DAY + 1, {"x": 100})  # another subject has its own cap
    stats = {s.window_start: s for s in close_all(agg, DAY + 100)}
    assert [stats[DAY + 10 * i].sums["x"] for i in range(5)] == [200, 90, 60, 0, 0]
    assert [stats[DAY + 10 * i].truncated_sums.get("x", 0) for i in range(5)] == [0, 0, 20, 70, 100]
    assert sum(s.events for s in stats.values()) == 6  # capped amounts, not dropped records
    assert agg.truncated_sums == {"x": 190}


def test_a_seeded_day_total_counts_towards_the_cap_and_the_seed_stays_unchanged() -> None:
    """After a restart the restored day total counts towards the cap (the seed is shared,
    so it is copied, not changed)."""
    seed = {DAY: {"s": DayTally(records=1, windows=1, hours=1, sums={"x": 240.0})}}
    agg = capped(250, seed=seed)
    assert agg.add("s", DAY + 1, {"x": 100})
    [stats] = close_all(agg, DAY + 10)
    assert (stats.sums["x"], stats.truncated_sums) == (10, {"x": 90})
    assert seed[DAY]["s"].sums == {"x": 240.0}


def test_a_new_day_gives_the_cap_back() -> None:
    """The cap is per UTC day: the next day's first record counts in full."""
    agg = capped(50)
    agg.add("s", DAY + 1, {"x": 100})
    agg.add("s", DAY + 86_400 + 1, {"x": 100})
    stats = close_all(agg, DAY + 86_420)
    assert [s.sums["x"] for s in stats if s.events] == [50, 50]


@settings(max_examples=60, deadline=None)
@given(
    cap=st.floats(1, 1_000),
    events=st.lists(
        st.tuples(
            st.integers(0, 4),
            st.integers(0, 86_399),
            st.floats(allow_nan=False) | st.sampled_from([math.inf, -math.inf, 1e308]),
        ),
        min_size=1,
        max_size=200,
    ),
)
def test_no_subject_day_passes_the_sum_cap(
    cap: float, events: list[tuple[int, int, float]]
) -> None:
    """Whatever the values (huge, infinite, negative): per subject and day the counted total
    is at most the cap, and counted plus cut is what the clamp let through."""
    agg = capped(cap, records=40)
    clamped: Counter[str] = Counter()
    for subject, offset, value in sorted(events, key=lambda e: e[1]):
        if agg.add(f"s{subject}", DAY + offset, {"x": value}):
            clamped[f"s{subject}"] += min(max(value, 0), 100)  # type: ignore[assignment]
    per_subject: Counter[str] = Counter()
    for row in agg.drain_subject_rows():
        per_subject[row.subject] += row.sums.get("x", 0.0)  # type: ignore[assignment]
    assert all(0 <= v <= cap + 1e-6 for v in per_subject.values())
    stats = close_all(agg, DAY + 86_400)
    total = sum(s.sums["x"] for s in stats)
    assert math.isclose(total, sum(per_subject.values()), abs_tol=1e-6)
    assert math.isclose(total + agg.truncated_sums["x"], sum(clamped.values()), abs_tol=1e-6)
    cut = sum(sum(s.truncated_sums.values()) for s in stats)
    assert math.isclose(cut, agg.truncated_sums["x"], abs_tol=1e-6)
