"""Daily hierarchy: cover structure, write-once nodes, interval coverage and the privacy audit.

OpenDP's sampler cannot be seeded. The statistical tests are sized so that each has a
false-failure rate below 1e-7 (stated in each docstring); with fewer than ten of them the
module's false-failure rate stays below 1e-6. The privacy audit is exact (no sampling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboards_api.continual import PARAMETERS_LEVEL, MemoryNodeStore
from dashboards_api.errors import MissingWindow, ResolutionUnavailable
from dashboards_api.hierarchy import (
    DAY_SECONDS,
    RESOLUTIONS,
    DailyHierarchy,
    cover_sizes,
    expected_half_width,
    level_widths,
    mixed_half_width,
    node_scale,
    resolutions_of,
)

DAY = 20_000 * DAY_SECONDS
"""A UTC day start (2024-10-04)."""

HALF = Decimal("0.5")


def hierarchy(
    day_start: int = DAY,
    epsilon: Decimal = HALF,
    sensitivity: int = 10,
    store: MemoryNodeStore | None = None,
    stream_id: str | None = None,
    window_seconds: int = 10,
) -> DailyHierarchy:
    """A structure on a fresh in-memory store unless one is given."""
    return DailyHierarchy(
        window_seconds,
        day_start,
        epsilon,
        sensitivity,
        store if store is not None else MemoryNodeStore(),
        stream_id or f"orders:day:{day_start}",
    )


def window_value(start: int) -> int:
    """A deterministic exact window value (0..7)."""
    return (start // 10 * 7 + 3) % 8


def exact(start: int, end: int, step: int = 10) -> int:
    """The exact sum of the windows of ``[start, end)``."""
    return sum(window_value(at) for at in range(start, end, step))


def test_levels_nest_and_end_with_the_day() -> None:
    """Each level's width is a multiple of the previous one; widths that cannot nest drop."""
    assert level_widths(10) == [10, 60, 3600, 86400]
    assert level_widths(60) == [60, 3600, 86400]
    assert level_widths(300) == [300, 3600, 86400]
    assert level_widths(5400) == [5400, 86400]
    assert resolutions_of(300) == ("window", "1h", "today", "24h")
    assert resolutions_of(10) == RESOLUTIONS
    with pytest.raises(ValueError, match="does not divide the day"):
        level_widths(7)


def test_each_level_partitions_the_day() -> None:
    """Every window lies in exactly one node of each level (the privacy argument's premise)."""
    h = hierarchy()
    for level, width in enumerate(h.levels):
        spans = [h.span((level, i)) for i in range(DAY_SECONDS // width)]
        assert spans[0][0] == DAY and spans[-1][1] == DAY + DAY_SECONDS
        assert all(a[1] == b[0] for a, b in pairwise(spans))


@pytest.mark.parametrize("window_seconds", [10, 60, 300])
def test_today_cover_is_exact_and_largest_first(window_seconds: int) -> None:
    """At every window end, today's nodes are disjoint, cover [day start, t_end) exactly,
    come largest first and number hours + minutes + windows of the remainder."""
    h = hierarchy(window_seconds=window_seconds)
    minute = 60 in h.levels
    for t in range(window_seconds, DAY_SECONDS + 1, window_seconds):
        nodes = h.cover("today", DAY + t)
        spans = [h.span(node) for node in nodes]
        assert spans[0][0] == DAY and spans[-1][1] == DAY + t
        assert all(a[1] == b[0] for a, b in pairwise(spans))
        assert [level for level, _ in nodes] == sorted((lv for lv, _ in nodes), reverse=True)
        if t == DAY_SECONDS:
            assert nodes == [(len(h.levels) - 1, 0)]
        elif minute:
            hours, rest = divmod(t, 3600)
            minutes, seconds = divmod(rest, 60)
            assert len(nodes) == hours + minutes + seconds // window_seconds
        assert cover_sizes("today", window_seconds, t) == (len(nodes), 0)


def test_24h_cover_spans_exactly_the_last_day() -> None:
    """The 24h value sums today's cover and yesterday's suffix cover: [t_end - 1 day, t_end)."""
    store = MemoryNodeStore()
    yesterday = hierarchy(DAY - DAY_SECONDS, store=store)
    today = hierarchy(store=store)
    for t in (10, 70, 3600, 12 * 3600 + 30, DAY_SECONDS - 10, DAY_SECONDS):
        part = yesterday.suffix_cover(DAY - DAY_SECONDS + t)
        spans = sorted(
            [yesterday.span(node) for node in part]
            + [today.span(node) for node in today.cover("24h", DAY + t)]
        )
        assert spans[0][0] == DAY + t - DAY_SECONDS and spans[-1][1] == DAY + t
        assert all(a[1] == b[0] for a, b in pairwise(spans))
        assert cover_sizes("24h", 10, t) == (len(today.cover("24h", DAY + t)), len(part))
        value = today.value("24h", DAY + t, window_value, yesterday)
        assert (value.start, value.end, value.nodes) == (DAY + t - DAY_SECONDS, DAY + t, len(spans))


def test_values_are_sums_of_stored_nodes() -> None:
    """Each value equals the sum of the stored noisy nodes of its cover, each node's noise is
    its stored value minus the exact sum of its span, and the span is the resolution's."""
    store = MemoryNodeStore()
    yesterday = hierarchy(DAY - DAY_SECONDS, store=store)
    h = hierarchy(store=store)
    t_end = DAY + 5 * 3600 + 130
    expected_spans = {
        "window": (t_end - 10, t_end),
        "1m": (t_end - 70, t_end - 10),
        "1h": (DAY + 4 * 3600, DAY + 5 * 3600),
        "today": (DAY, t_end),
        "24h": (t_end - DAY_SECONDS, t_end),
    }
    for resolution in RESOLUTIONS:
        value = h.value(resolution, t_end, window_value, yesterday)
        assert (value.start, value.end) == expected_spans[resolution]
        nodes = h.cover(resolution, t_end)
        total = 0
        for node in nodes:
            stored = store.get(h.stream_id, *node)
            assert stored is not None
            total += stored
        if resolution == "24h":
            for node in yesterday.suffix_cover(t_end - DAY_SECONDS):
                stored = store.get(yesterday.stream_id, *node)
                assert stored is not None
                total += stored
                nodes = [*nodes, node]
        assert value.value == total and value.nodes == len(nodes)
        assert value.ci95_half_width == mixed_half_width(((h.scale, value.nodes),))


def test_nodes_are_drawn_only_when_complete() -> None:
    """Nothing of a span that is not over is drawn: after a 'today' read at 00:01:10 only the
    first minute and the seventh window exist, no hour or day node."""
    h = hierarchy()
    h.value("today", DAY + 70, window_value)
    drawn = {
        (level, index)
        for level in range(len(h.levels))
        for index in range(DAY_SECONDS // h.levels[level])
        if h.store.get(h.stream_id, level, index) is not None
    }
    assert drawn == {(1, 0), (0, 6)}


def test_first_minute_and_hour_of_the_day_come_from_yesterday() -> None:
    """Before the day's first complete hour, '1h' is yesterday's last hour (with yesterday's
    structure), and without it the resolution is refused with a clear error."""
    store = MemoryNodeStore()
    yesterday = hierarchy(DAY - DAY_SECONDS, store=store)
    h = hierarchy(store=store)
    value = h.value("1h", DAY + 1800, window_value, yesterday)
    assert (value.start, value.end) == (DAY - 3600, DAY)
    assert store.get(yesterday.stream_id, 2, 23) == value.value
    with pytest.raises(ResolutionUnavailable, match="yesterday") as caught:
        h.value("24h", DAY + 1800, window_value)
    assert caught.value.code == "resolution_unavailable"
    with pytest.raises(ResolutionUnavailable):
        h.value("1m", DAY + 10, window_value)
    assert h.value("24h", DAY + DAY_SECONDS, window_value).nodes == 1


def test_a_value_read_again_reuses_its_nodes() -> None:
    """A second read, or a second replica on the same store, returns the same value without
    reading any window."""
    store = MemoryNodeStore()
    first = hierarchy(store=store).value("today", DAY + 7300, window_value)
    reads: list[int] = []

    def counting(start: int) -> int:
        reads.append(start)
        return window_value(start)

    replica = hierarchy(store=store)
    assert replica.value("today", DAY + 7300, counting) == first
    assert reads == []


def test_a_revised_window_does_not_change_a_released_value() -> None:
    """A window revised after its node was drawn leaves every released value unchanged."""
    h = hierarchy()
    t_end = DAY + 60
    released = {r: h.value(r, t_end, window_value) for r in ("window", "1m", "today")}
    revised = {DAY + 50: 10_000}

    def later(start: int) -> int:
        return revised.get(start, window_value(start))

    for resolution, value in released.items():
        assert h.value(resolution, t_end, later) == value


def test_other_parameters_on_the_same_stream_are_refused() -> None:
    """A stream_id already holding a structure with other parameters is refused."""
    store = MemoryNodeStore()
    hierarchy(store=store, stream_id="s")
    assert store.get("s", PARAMETERS_LEVEL, 0) is not None
    hierarchy(store=store, stream_id="s")
    for other in (
        {"epsilon": Decimal("1")},
        {"sensitivity": 11},
        {"day_start": DAY + DAY_SECONDS},
        {"window_seconds": 60},
    ):
        with pytest.raises(ValueError, match="other parameters"):
            hierarchy(store=store, stream_id="s", **other)


def test_a_missing_window_is_refused_and_nothing_is_drawn() -> None:
    """A node over a missing window raises MissingWindow naming the window, and no node of
    the read is stored."""
    h = hierarchy()

    def gap(start: int) -> int | None:
        return None if start == DAY + 30 else window_value(start)

    with pytest.raises(MissingWindow) as caught:
        h.value("1m", DAY + 60, gap)
    assert caught.value.code == "missing_window"
    assert caught.value.extra == {"window_start": DAY + 30}
    assert h.store.get(h.stream_id, 1, 0) is None
    assert h.value("window", DAY + 30, gap).nodes == 1


def test_parameters_are_validated() -> None:
    """Bad parameters are refused with a message saying what is wrong."""
    with pytest.raises(ValueError, match="start of a UTC day"):
        hierarchy(day_start=DAY + 1)
    with pytest.raises(TypeError, match="Decimal"):
        hierarchy(epsilon=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sensitivity"):
        hierarchy(sensitivity=0)
    h = hierarchy()
    with pytest.raises(ValueError, match="not the end of a 10-second window"):
        h.value("today", DAY + 15, window_value)
    with pytest.raises(ValueError, match="not the end"):
        h.value("today", DAY, window_value)
    with pytest.raises(ValueError, match="unknown resolution"):
        h.value("2h", DAY + 10, window_value)
    with pytest.raises(ResolutionUnavailable, match="does not apply"):
        hierarchy(window_seconds=300).value("1m", DAY + 3600, window_value)


def test_scale_is_levels_times_sensitivity_over_epsilon() -> None:
    """The node scale is levels * Δ / ε (OpenDP may add a few ulps), and the planner's
    half-width of one node is its 95% quantile."""
    scale = node_scale(10, HALF, 10)
    assert scale == pytest.approx(4 * 10 / 0.5, rel=1e-12) and scale >= 80.0
    q = math.exp(-1 / scale)
    h = expected_half_width("1h", 10, HALF, 10)
    # P(|X| > h) = 2 q^(h+1) / (1 + q) for discrete Laplace: <= 5% at h, > 5% at h - 1.
    assert 2 * q ** (h + 1) / (1 + q) <= 0.05 < 2 * q**h / (1 + q)
    assert expected_half_width("today", 10, HALF, 10) > expected_half_width(
        "today", 10, HALF, 10, t_in_day=3600
    )


@pytest.mark.parametrize(
    ("resolution", "window_seconds"),
    [("window", 10), ("1m", 10), ("1h", 60), ("today", 60), ("24h", 300)],
)
def test_the_95_interval_covers_at_every_resolution(resolution: str, window_seconds: int) -> None:
    """Over 3000 independent structures the stated 95% interval covers the exact value at
    least 95% of the time and the interval one narrower does not cover much more often.

    The miss count is Binomial(3000, p) with p <= 0.05; the bound 0.05 + 5.4 standard errors
    (0.0715) is exceeded with probability below 1e-7 (normal approximation with a continuity
    margin); likewise for the lower bound on misses of the narrower interval (p > 0.05 there
    by the exactness of the half-width, tested at 0.05 - 5.4 standard errors). At Δ = 50 and
    ε = 1 the node scale is 150 or 200, where one unit changes the coverage by under 0.1%.
    Longer windows keep the exact sums cheap where a value spans many windows (each draw is
    a fresh structure, so it reads them all): '1h' and 'today' on 1-minute windows ('today'
    at 02:03 sums 2 hours and 3 minutes), '24h' on 5-minute windows (35 nodes of 3 levels
    from both days).
    """
    draws = 3000
    step = window_seconds
    t_end = DAY + 2 * 3600 + {10: 220, 60: 180, 300: 300}[step]
    truth = {
        "window": exact(t_end - step, t_end, step),
        "1m": exact(t_end - 100, t_end - 40, step),
        "1h": exact(DAY + 3600, DAY + 7200, step),
        "today": exact(DAY, t_end, step),
        "24h": exact(t_end - DAY_SECONDS, t_end, step),
    }[resolution]
    store = MemoryNodeStore()
    errors = np.empty(draws, dtype=np.int64)
    half_width = 0
    for draw in range(draws):
        previous = None
        if resolution == "24h":
            previous = hierarchy(DAY - DAY_SECONDS, Decimal(1), 50, store, f"y{draw}", step)
        h = hierarchy(DAY, Decimal(1), 50, store, f"d{draw}", step)
        value = h.value(resolution, t_end, window_value, previous)
        errors[draw] = value.value - truth
        half_width = value.ci95_half_width
    se = math.sqrt(0.05 * 0.95 / draws)
    misses = float(np.mean(np.abs(errors) > half_width))
    narrower_misses = float(np.mean(np.abs(errors) > half_width - 1))
    assert misses <= 0.05 + 5.4 * se, f"{resolution}: {misses:.4f} outside ±{half_width}"
    assert narrower_misses >= 0.05 - 5.4 * se - 0.001


@settings(max_examples=15, deadline=None)
@given(
    spread=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=40),
    first=st.integers(min_value=0, max_value=8639),
    stride=st.integers(min_value=1, max_value=900),
)
def test_privacy_audit_whole_day_neighbours(spread: list[int], first: int, stride: int) -> None:
    """One subject's whole day (at most Δ = 10 records, spread over many windows of the day)
    added to a day: the exact log-likelihood ratio of the released vector of ALL the day's
    nodes, for every output, is at most ε (discrete Laplace: it is sum |x - x'| / scale).

    Also checked on the node vector this structure actually drew: its log-likelihood ratio is
    within the bound. Exact, no sampling: no false failures.
    """
    sensitivity, epsilon = 10, HALF
    contribution: dict[int, int] = {}
    budget = sensitivity
    for i, records in enumerate(spread):
        take = min(records, budget)
        budget -= take
        start = DAY + ((first + i * stride) % 8640) * 10
        contribution[start] = contribution.get(start, 0) + take

    def without(start: int) -> int:
        return window_value(start)

    def with_subject(start: int) -> int:
        return window_value(start) + contribution.get(start, 0)

    h = hierarchy(epsilon=epsilon, sensitivity=sensitivity)
    nodes = [
        (level, index)
        for level, width in enumerate(h.levels)
        for index in range(DAY_SECONDS // width)
    ]

    def node_sums(windows: Callable[[int], int]) -> np.ndarray:
        per_window = np.array([windows(at) for at in range(DAY, DAY + DAY_SECONDS, 10)])
        return np.concatenate(
            [per_window.reshape(-1, width // 10).sum(axis=1) for width in h.levels]
        ).astype(np.int64)

    x, x_prime = node_sums(without), node_sums(with_subject)
    l1 = int(np.abs(x - x_prime).sum())
    assert l1 <= len(h.levels) * sensitivity
    assert l1 == len(h.levels) * sum(contribution.values())
    # sup over outputs y of log p(y | x) - log p(y | x') is ||x - x'||_1 / scale (at y = x).
    assert l1 / h.scale <= float(epsilon) + 1e-12
    assert float(h.measurement.map(len(h.levels) * sensitivity)) <= float(epsilon)
    # The vector actually drawn (every node of the day, as released by the day's end).
    released = h.node_values(nodes, with_subject)
    y = np.array([released[n] for n in nodes], dtype=np.int64)
    llr = float((np.abs(y - x).sum() - np.abs(y - x_prime).sum()) / h.scale)
    assert abs(llr) <= float(epsilon) + 1e-12
