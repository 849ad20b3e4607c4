"""Scale-out of one domain's processor (issue #22 item 3): two worker processes in one
consumer group share the ingest partitions, and every per-subject bound cuts exactly what
one worker owning every partition cuts (each subject's events live in one partition).

Real components: an embedded Tansu broker and ``privmesh worker`` processes, through
``bench.streams_scale.phase`` (the benchmark's own code, with a small event count and the
workers settled on their partitions before the events are sent, so that no rebalance
repeats a batch while they are read)."""

from __future__ import annotations

import pytest

from bench.streams_scale import PARTITIONS, phase

EVENTS = 6_000


@pytest.mark.integration
def test_two_workers_split_the_partitions_and_count_exactly_what_one_does() -> None:
    """Same seeded input (1% malformed) to one worker, then to two: every input comes out
    once, both workers answered, and accepted, rejected, truncated records and truncated
    daily sums summed over the two equal the single worker's."""
    one = phase(1, EVENTS, settle_first=True)
    two = phase(2, EVENTS, settle_first=True)
    assert PARTITIONS >= 2
    assert one["outputs"] == two["outputs"] == EVENTS
    assert two["pages_answered"] == 2
    assert one["counters"]["accepted"] + one["counters"]["rejected"] == EVENTS
    assert one["counters"]["truncated_events"] > 0  # the bounds bite on this input
    assert two["counters"] == one["counters"]
