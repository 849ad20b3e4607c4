"""bench.streams' report of the worker's feature flushes: the bound travels with the
numbers it bounds, and the flushes over 1 s are counted from the duration histogram."""

from __future__ import annotations

from bench.streams import flush_summary


def test_the_flush_summary_carries_the_bound_and_the_slow_flushes() -> None:
    """The summary reports the worker's bound (not the bench's guess), the flushes that took
    over 1 s (all minus those within 1 s), the mean and the largest flush and backlog."""
    features = {
        "flushes": 4,
        "flush_ms_max": 1200,
        "flush_ms_total": 1500,
        "flush_seconds_le.1.0": 3,
        "flush_rows_max": 500,
        "flush_rows_total": 900,
        "flush_max_rows": 500,
        "queued_rows_max": 1400,
        "online_write_ms_max": 90,
    }
    summary = flush_summary(features, max_rows=2000)
    assert summary["max_rows"] == 500 and summary["over_1s"] == 1
    assert summary["ms_mean"] == 375.0 and summary["ms_max"] == 1200
    assert (summary["rows_max"], summary["queued_rows_max"]) == (500, 1400)
    assert summary["write_ms_max"] == 90
    assert flush_summary({}, max_rows=2000)["max_rows"] == 2000  # an older worker: no counter
    assert flush_summary({}, max_rows=2000)["ms_mean"] is None
