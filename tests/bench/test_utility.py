"""bench.utility's 'today so far' study: the offline reading of the day's nodes matches the
real structure, the least-squares reading is Honaker's estimate, and the coverage of the
stated 95% interval is measured over independent replications."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from scipy.stats import binom

from bench.utility import (
    COLUMN,
    DAY,
    DAY_START,
    TODAY_STREAMS,
    Replay,
    bottom_up,
    bottom_up_variances,
    clopper_pearson,
    level_sums,
    ls_optimal_epsilons,
    mean_level_counts,
    minute_aligned_epsilons,
    prefix_cover,
    product_of,
    read_times,
    today_coverage,
    today_error_study,
)
from dashboards_api.continual import MemoryNodeStore
from dashboards_api.hierarchy import DailyHierarchy, level_epsilons, level_widths
from dashboards_api.query_classes import load_query_classes
from dashboards_api.sensitivity import EVENTS, NEW_PERIOD, SUM

WINDOW = 10
# The coverage test's one-sided level: the chance it fails although the interval covers at
# least 95% (the half-width is the exact 95% quantile of the noise, so it does).
FALSE_FAILURE_RATE = 1e-3


def _structure(stream_id: str) -> DailyHierarchy:
    return DailyHierarchy(WINDOW, DAY_START, Decimal("0.5"), 10, MemoryNodeStore(), stream_id)


def test_prefix_cover_is_the_structures_today_value() -> None:
    """Summing the greedy cover of per-level node arrays gives exactly what
    DailyHierarchy.value('today') releases, value and node count, at every kind of end."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 6, DAY // WINDOW)
    structure = _structure("prefix")

    def read(start: int) -> int:
        return int(values[(start - DAY_START) // WINDOW])

    nodes = [(lv, i) for lv, width in enumerate(structure.levels) for i in range(DAY // width)]
    drawn = structure.node_values(nodes, read)
    levels = [
        np.asarray([drawn[(lv, i)] for i in range(DAY // width)], dtype=np.float64)
        for lv, width in enumerate(structure.levels)
    ]
    ends = np.asarray([10, 50, 60, 70, 3_590, 3_600, 3_610, 7_270, 45_000, DAY - 10, DAY])
    got = prefix_cover(levels, structure.levels, ends)
    for end, total, counts in zip(ends.tolist(), got[0], got[1:].T, strict=True):
        released = structure.value("today", DAY_START + end, read)
        assert released.value == total
        assert released.nodes == counts.sum()
    exact = prefix_cover(level_sums(values, structure.levels), structure.levels, ends)[0]
    assert exact.tolist() == [int(values[: e // WINDOW].sum()) for e in ends.tolist()]


def test_bottom_up_is_the_least_squares_estimate() -> None:
    """On a small hierarchy (widths 1, 3, 12 over 24 leaves) each root's bottom-up estimate
    and its variance equal the generalised least-squares estimate of the root's sum from
    every node under it (the BLUE, Honaker 2015), for unequal level variances."""
    rng = np.random.default_rng(5)
    widths, leaves = [1, 3, 12], 24
    variances = [4.0, 1.5, 2.5]
    noisy = [rng.normal(0, 10, leaves // w) for w in widths]
    estimates = bottom_up(noisy, variances, widths)
    combined = bottom_up_variances(variances, widths)
    rows, values, weights = [], [], []
    for level, width in enumerate(widths):
        for index in range(leaves // width):
            row = np.zeros(leaves)
            row[index * width : (index + 1) * width] = 1
            rows.append(row)
            values.append(noisy[level][index])
            weights.append(1 / variances[level])
    x, y, w = np.asarray(rows), np.asarray(values), np.diag(weights)
    information = x.T @ w @ x
    leaves_hat = np.linalg.solve(information, x.T @ w @ y)
    covariance = np.linalg.inv(information)
    for root in range(leaves // widths[-1]):
        pick = np.zeros(leaves)
        pick[root * 12 : (root + 1) * 12] = 1
        assert estimates[-1][root] == pytest.approx(pick @ leaves_hat)
        assert combined[-1] == pytest.approx(pick @ covariance @ pick)
    assert combined[-1] < variances[-1]


def test_least_squares_split_adds_up_and_does_no_worse_than_the_shipped_one() -> None:
    """The split derived for the least-squares reading adds up to epsilon exactly and its
    workload variance (the grid's objective) is not above the shipped cube-root split's."""
    epsilon = Decimal("0.5")
    split = ls_optimal_epsilons(WINDOW, epsilon)
    assert sum(split) == epsilon and all(part > 0 for part in split)
    widths, counts = level_widths(WINDOW), np.asarray(mean_level_counts(WINDOW))

    def objective(parts: tuple[Decimal, ...]) -> float:
        combined = bottom_up_variances([2 / float(p) ** 2 for p in parts], widths)
        return float(counts @ np.asarray(combined))

    assert objective(split) <= objective(level_epsilons(WINDOW, epsilon)) * 1.0001


def test_clopper_pearson_is_exact() -> None:
    """The interval's ends are where the binomial tails reach 2.5%, and it is [0, x] / [x, 1]
    at the edges."""
    lo, hi = clopper_pearson(190, 200)
    assert binom.sf(189, 200, lo) == pytest.approx(0.025, abs=2e-3)
    assert binom.cdf(190, 200, hi) == pytest.approx(0.025, abs=2e-3)
    assert clopper_pearson(0, 50)[0] == 0.0 and clopper_pearson(50, 50)[1] == 1.0


def _synthetic_day() -> Replay:
    """A day of window values (orders, revenue, new customers) for the coverage test."""
    rng = np.random.default_rng(11)
    slots = DAY // WINDOW
    orders = rng.poisson(8, slots)
    revenue = orders * 3_000
    new = rng.poisson(4, slots)
    windows = {
        DAY_START + i * WINDOW: {
            COLUMN[EVENTS]: float(orders[i]),
            COLUMN[SUM]: float(revenue[i]),
            COLUMN[NEW_PERIOD]: float(new[i]),
        }
        for i in range(slots)
    }
    return Replay(
        day_start=DAY_START,
        windows=windows,
        rows={},
        raw_events=orders,
        raw_revenue=revenue.astype(np.float64),
        counters={},
        incomplete_windows=0,
        events_sent=int(orders.sum()),
        hours=24,
        wall_s=0.0,
        people_s=0.0,
        raw_new_subjects=new,
    )


def test_today_interval_covers_95_percent_over_independent_replications() -> None:
    """Over 400 independent replications of the day (one read each, at a random time) the
    order count's stated 95% interval covers the bounded value at least as often as a
    binomial at 95% would with probability 1 - FALSE_FAILURE_RATE (false-failure rate at
    most 1e-3: the half-width is the exact 95% quantile). OpenDP's noise takes no seed, so
    the count varies between runs; the threshold holds for every run."""
    reps = 400
    classes = {qc.id: qc for qc in load_query_classes().values() if qc.domain == "shop"}
    result = today_coverage(
        _synthetic_day(), classes, product_of(), WINDOW, reps, seed=1, tiles=("order_count",)
    )
    figures = result["tiles"]["order_count"]
    covered = round(figures["coverage_95"] * reps)
    threshold = int(binom.ppf(FALSE_FAILURE_RATE, reps, 0.95))
    assert binom.cdf(threshold - 1, reps, 0.95) <= FALSE_FAILURE_RATE
    assert covered >= threshold, figures
    assert figures["coverage_95_interval"] == clopper_pearson(covered, reps)
    # no truncation in the synthetic day: the raw truth is the bounded truth
    assert figures["coverage_of_raw_truth"] == figures["coverage_95"]


def test_read_times_cover_each_trailing_window_count_equally() -> None:
    """'today' is read once a minute, cycling through the minute's window ends, so the
    study's reads hold every count of trailing window nodes (0..5) equally often."""
    ends = np.asarray(read_times("today", WINDOW))
    assert len(ends) == DAY // 60 and set(TODAY_STREAMS) == {
        "order_count",
        "revenue_cents",
        "distinct_customers",
    }
    trailing = (ends % 60) // WINDOW
    assert np.bincount(trailing).tolist() == [240] * 6


def test_minute_aligned_split_is_the_cube_root_rule_of_its_workload() -> None:
    """With 'today' and '24h' ending at whole minutes no value but the window tile reads a
    window node (n = 1), and the split follows n_l ** (1/3) with the shipped workload's minute
    and hour counts (to 0.1%: the minute-aligned 24h at midnight differs) and adds
    up to epsilon exactly."""
    epsilon = Decimal("0.5")
    split = minute_aligned_epsilons(WINDOW, epsilon)
    assert sum(split) == epsilon
    shipped = mean_level_counts(WINDOW)
    weights = np.asarray([1.0, shipped[1], shipped[2]]) ** (1 / 3)
    assert [float(p) for p in split] == pytest.approx(
        (float(epsilon) * weights / weights.sum()).tolist(), rel=1e-3
    )


def test_today_error_study_runs_on_a_day_without_truncation() -> None:
    """The whole study on a synthetic day (two replications): with no truncation the error
    against the raw truth is the error against the bounded truth, least squares has the
    smaller exact variance, and the minute-aligned reading's exact variance is lower still."""
    classes = {qc.id: qc for qc in load_query_classes().values() if qc.domain == "shop"}
    study = today_error_study(_synthetic_day(), classes, product_of(), WINDOW, 2)
    for tile in TODAY_STREAMS:
        figures = study["tiles"][tile]
        greedy = figures["greedy"]
        assert greedy["median_relative_error_vs_raw"] == greedy["median_relative_error_vs_bounded"]
        assert figures["truncation_only_median_relative_error"] == 0.0
        assert figures["least_squares_vs_greedy"]["variance_ratio_theory"] < 1
        minute = figures["minute_aligned"]["day_mean_noise_variance_theory"]
        assert minute < greedy["day_mean_noise_variance_theory"]
