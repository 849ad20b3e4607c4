"""Window aggregation: erasure forgets a subject's open-window state."""

from __future__ import annotations

from domains.contract import Bounds
from streams.windows import WindowAggregator


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
