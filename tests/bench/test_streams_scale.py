"""bench.streams_scale's exactness check: the workers' counters are summed per product, a
nested tally (the daily sums cut per measure) per key, and a worker that did not answer
adds nothing."""

from __future__ import annotations

from bench.streams_scale import summed


def test_counters_are_summed_over_the_workers_pages() -> None:
    """Two workers' pages add up to what one worker owning every partition would show."""
    first = {
        "products": {
            "orders": {
                "accepted": 10,
                "rejected": 1,
                "truncated_events": 2,
                "truncated_sums": {"amount_cents": 150.5},
            }
        }
    }
    second = {
        "products": {
            "orders": {
                "accepted": 5,
                "rejected": 0,
                "truncated_events": 1,
                "truncated_sums": {"amount_cents": 49.5},
            },
            "other": {"accepted": 99},
        }
    }
    total = summed([first, second, {}])
    assert total == {
        "accepted": 15,
        "rejected": 1,
        "truncated_events": 3,
        "truncated_sums": {"amount_cents": 200.0},
    }


def test_no_page_sums_to_nothing() -> None:
    """No worker answered: nothing to compare (the phase then reports no counters)."""
    assert summed([{}, {}]) == {}
