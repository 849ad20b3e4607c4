"""Daily hierarchy: cover structure, write-once nodes, interval coverage and the privacy audit.

OpenDP's sampler cannot be seeded. The statistical tests are sized so that each has a
false-failure rate below 1e-7 (stated in each docstring); with fewer than ten of them the
module's false-failure rate stays below 1e-6. The privacy audit is exact (no sampling).
"""

from __future__ import annotations

import math
from collections import Counter
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
    VERSION,
    DailyHierarchy,
    _exact_mixed_half_width,
    cover_sizes,
    expected_half_width,
    level_epsilons,
    level_scales,
    level_widths,
    mean_level_counts,
    mixed_half_width,
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
    version: int = VERSION,
) -> DailyHierarchy:
    """A structure on a fresh in-memory store unless one is given."""
    return DailyHierarchy(
        window_seconds,
        day_start,
        epsilon,
        sensitivity,
        store if store is not None else MemoryNodeStore(),
        stream_id or f"orders:day:{day_start}",
        version,
    )


def window_value(start: int) -> int:
    """A deterministic exact window value (0..7)."""
    return (start // 10 * 7 + 3) % 8


def exact(start: int, end: int, step: int = 10) -> int:
    """The exact sum of the windows of ``[start, end)``."""
    return sum(window_value(at) for at in range(start, end, step))


def test_levels_nest_and_end_below_the_day() -> None:
    """Each level's width is a multiple of the previous one; widths that cannot nest drop;
    version 2 has no day level, version 1 ends with it."""
    assert level_widths(10) == [10, 60, 3600]
    assert level_widths(60) == [60, 3600]
    assert level_widths(300) == [300, 3600]
    assert level_widths(5400) == [5400]
    assert level_widths(10, 1) == [10, 60, 3600, 86400]
    assert level_widths(5400, 1) == [5400, 86400]
    assert resolutions_of(300) == ("window", "1h", "today", "24h")
    assert resolutions_of(10) == RESOLUTIONS
    with pytest.raises(ValueError, match="does not divide the day"):
        level_widths(7)
    for bad in (0, 3, True, "2", None, 2.0, -(2**70)):
        with pytest.raises(ValueError, match="version must be one of"):
            level_widths(10, bad)  # type: ignore[arg-type]


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
        if minute:
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
        levels = Counter(level for level, _ in nodes)
        terms = tuple(sorted((h.scales[level], n) for level, n in levels.items()))
        assert value.ci95_half_width == mixed_half_width(terms)


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
    assert h.value("24h", DAY + DAY_SECONDS, window_value).nodes == 24


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


def test_level_epsilons_add_up_and_each_map_is_checked() -> None:
    """The levels' epsilons add up to the day's exactly, each level's scale is Δ / ε_l (OpenDP
    may add a few ulps) and OpenDP's map of each level at Δ is at most its ε_l, so the maps
    add up to at most ε (basic composition); version 1 is one map at levels * Δ."""
    for window, epsilon, delta in ((10, HALF, 10), (60, Decimal("0.25"), 1), (3600, HALF, 10)):
        h = hierarchy(epsilon=epsilon, sensitivity=delta, window_seconds=window)
        assert sum(h.epsilons) == epsilon and all(part > 0 for part in h.epsilons)
        assert len(h.epsilons) == len(h.scales) == len(h.measurements) == len(h.levels)
        maps = [Decimal(str(m.map(delta))) for m in h.measurements]
        assert all(m <= part for m, part in zip(maps, h.epsilons, strict=True))
        assert sum(maps) <= epsilon
        for scale, part in zip(h.scales, h.epsilons, strict=True):
            assert scale == pytest.approx(delta / float(part), rel=1e-12)
            assert scale >= delta / float(part)
    old = hierarchy(version=1)
    assert old.scales == (old.scales[0],) * 4
    assert old.scales[0] == pytest.approx(4 * 10 / 0.5, rel=1e-12)
    assert float(old.measurements[0].map(4 * 10)) <= 0.5
    with pytest.raises(ValueError, match="too small to split"):
        level_epsilons(10, Decimal("1e-9"))


def test_allocation_is_the_cube_root_rule_and_minimises_the_variance() -> None:
    """n_l is the per-level node count of each resolution's cover, averaged over the day's
    window ends (counted from the covers themselves) and added over the resolutions; ε_l is
    proportional to n_l ** (1/3); and moving budget between any two levels raises the
    objective sum_l n_l * 2 (Δ / ε_l) ** 2."""
    window = 60
    h = hierarchy(window_seconds=window)
    ends = range(window, DAY_SECONDS + 1, window)
    counts = np.zeros(len(h.levels))
    assert resolutions_of(window) == RESOLUTIONS
    for t in ends:
        today = h.cover("today", DAY + t)
        covers = {
            "window": [(0, 0)],
            "1m": [(0, 0)],  # a 1-minute window is the minute
            "1h": [(1, 0)],
            "today": today,
            "24h": today + ([] if t == DAY_SECONDS else h.suffix_cover(DAY + t)),
        }
        for cover in covers.values():
            for level, _ in cover:
                counts[level] += 1
    n = counts / len(ends)
    assert mean_level_counts(window) == pytest.approx(tuple(n), rel=1e-12)
    parts = np.array([float(e) for e in level_epsilons(window, HALF)])
    assert parts / parts.sum() == pytest.approx(np.cbrt(n) / np.cbrt(n).sum(), abs=1e-8)

    def objective(eps: np.ndarray) -> float:
        return float(np.sum(n * 2 * (10 / eps) ** 2))

    best = objective(parts)
    for shift in (1e-3, -1e-3):
        moved = parts + np.array([shift, -shift])
        assert objective(moved) > best
    assert mean_level_counts(10) == pytest.approx((8.5, 89.5, 35.50556), rel=1e-5)


def test_expected_half_width_is_the_worst_time_of_the_day() -> None:
    """With no time given, the planner's half-width is the largest over every window end of
    the day (checked against each one), and one node's is its level's 95% quantile."""
    for resolution in resolutions_of(300):
        each = [
            expected_half_width(resolution, 300, HALF, 10, t_in_day=t)
            for t in range(300, DAY_SECONDS + 1, 300)
        ]
        assert expected_half_width(resolution, 300, HALF, 10) == max(each)
    scale = level_scales(10, HALF, 10)[2]
    q = math.exp(-1 / scale)
    h = expected_half_width("1h", 10, HALF, 10)
    # P(|X| > h) = 2 q^(h+1) / (1 + q) for discrete Laplace: <= 5% at h, > 5% at h - 1.
    assert 2 * q ** (h + 1) / (1 + q) <= 0.05 < 2 * q**h / (1 + q)
    assert expected_half_width("today", 10, HALF, 10) > expected_half_width(
        "today", 10, HALF, 10, t_in_day=3600
    )


def test_mixed_half_width_is_exact_and_its_rescaling_conservative() -> None:
    """Against direct convolution of the pmfs, the mixed half-width is the exact 95%
    quantile; above MIXED_EXACT_MAX_SCALE it is never narrower than the exact one and wider
    by under 0.2%."""
    terms = ((3.0, 2), (5.5, 3), (9.0, 1))
    support = np.arange(-2000, 2001)
    pmf = np.zeros(1)
    pmf[0] = 1.0
    for scale, count in terms:
        q = math.exp(-1 / scale)
        one = (1 - q) / (1 + q) * q ** np.abs(support)
        for _ in range(count):
            pmf = np.convolve(pmf, one)
    centre = len(pmf) // 2
    coverage = [pmf[centre - h : centre + h + 1].sum() for h in range(200)]
    exact_h = next(h for h, c in enumerate(coverage) if c >= 0.95)
    assert mixed_half_width(terms) == exact_h
    for big in (((1500.0, 5), (3000.0, 20), (2200.0, 9)), ((800.0, 1), (2000.0, 1))):
        exact_big = _exact_mixed_half_width(big)
        assert exact_big <= mixed_half_width(big) <= exact_big * 1.002


def test_a_day_begun_under_version_1_finishes_under_it() -> None:
    """A stream id whose day began under version 1 (same parameters) is opened at version 1
    by the new code: its levels, scales and already drawn nodes stay, so its values are the
    ones version 1 released; other parameters are still refused, a version-2 day cannot be
    reopened as version 1, and the next day gets version 2."""
    store = MemoryNodeStore()
    old = hierarchy(store=store, stream_id="s", version=1)
    released = old.value("today", DAY + 7300, window_value)
    upgraded = hierarchy(store=store, stream_id="s")
    assert upgraded.version == 1 and upgraded.levels == [10, 60, 3600, 86400]
    assert upgraded.scales == old.scales
    assert upgraded.value("today", DAY + 7300, window_value) == released
    with pytest.raises(ValueError, match="other parameters"):
        hierarchy(store=store, stream_id="s", epsilon=Decimal(1))
    tomorrow = hierarchy(DAY + DAY_SECONDS, store=store, stream_id="t")
    assert tomorrow.version == 2 and tomorrow.levels == [10, 60, 3600]
    with pytest.raises(ValueError, match="structure version"):
        hierarchy(DAY + DAY_SECONDS, store=store, stream_id="t", version=1)
    # The first 24h value of the new day mixes both days' scales.
    value = tomorrow.value("24h", DAY + DAY_SECONDS + 3600, window_value, upgraded)
    assert value.ci95_half_width == mixed_half_width(
        tuple(sorted({upgraded.scales[0]: 23, tomorrow.scales[2]: 1}.items()))
    )


@pytest.mark.parametrize(
    ("resolution", "window_seconds", "yesterday_version"),
    [
        ("window", 10, VERSION),
        ("1m", 10, VERSION),
        ("1h", 60, VERSION),
        ("today", 60, VERSION),
        ("24h", 300, VERSION),
        ("24h", 300, 1),
    ],
)
def test_the_95_interval_covers_at_every_resolution(
    resolution: str, window_seconds: int, yesterday_version: int
) -> None:
    """Over 3000 independent structures the stated 95% interval covers the exact value at
    least 95% of the time and the interval one narrower does not cover much more often.

    The miss count is Binomial(3000, p) with p <= 0.05; the bound 0.05 + 5.4 standard errors
    (0.0715) is exceeded with probability below 1e-7 (normal approximation with a continuity
    margin); likewise for the lower bound on misses of the narrower interval (p > 0.05 there
    by the exactness of the half-width, tested at 0.05 - 5.4 standard errors). At Δ = 50 and
    ε = 1 the node scale is 150 or 200, where one unit changes the coverage by under 0.1%.
    Longer windows keep the exact sums cheap where a value spans many windows (each draw is
    a fresh structure, so it reads them all): '1h' and 'today' on 1-minute windows ('today'
    at 02:03 sums 2 hours and 3 minutes), '24h' on 5-minute windows (35 nodes from both
    days; also with yesterday at version 1: the first day after an upgrade, scales mixed).
    Six tests: the module's false-failure rate stays below 1e-6.
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
            previous = hierarchy(
                DAY - DAY_SECONDS, Decimal(1), 50, store, f"y{draw}", step, yesterday_version
            )
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
    nodes, for every output, is at most ε (discrete Laplace: it is the sum over the levels of
    the level's |x - x'|_1 / scale_l, and each level moves by at most Δ).

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
    scale = np.concatenate(
        [np.full(DAY_SECONDS // width, s) for width, s in zip(h.levels, h.scales, strict=True)]
    )
    level = np.concatenate([np.full(DAY_SECONDS // width, i) for i, width in enumerate(h.levels)])
    moved = np.abs(x - x_prime)
    for i in range(len(h.levels)):  # each level partitions the day
        assert int(moved[level == i].sum()) == sum(contribution.values()) <= sensitivity
    # sup over outputs y of log p(y | x) - log p(y | x') is sum |x - x'| / scale (at y = x).
    assert float(np.sum(moved / scale)) <= float(epsilon) + 1e-12
    assert sum(float(m.map(sensitivity)) for m in h.measurements) <= float(epsilon) + 1e-12
    # The vector actually drawn (every node of the day, as released by the day's end).
    released = h.node_values(nodes, with_subject)
    y = np.array([released[n] for n in nodes], dtype=np.int64)
    llr = float(np.sum((np.abs(y - x) - np.abs(y - x_prime)) / scale))
    assert abs(llr) <= float(epsilon) + 1e-12
