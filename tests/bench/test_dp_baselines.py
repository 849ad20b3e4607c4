"""The benches' baselines: the tree's error theory and simulation, OpenDP's Context path."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from bench.dp_baselines import (
    discrete_laplace_variance,
    error_comparison,
    naive_context_release,
    naive_scale,
    simulate,
)
from dashboards_api.continual import levels
from dashboards_api.event_aggregates import exact_plan, release, scan_events, sensitivity
from feature_repo.offline import append_part
from tests.dashboards_api.test_event_aggregates import (
    CATEGORIES,
    END,
    START,
    G,
    Row,
    events,
    query,
)

ONE = Decimal("1")


def test_error_comparison_matches_direct_computation() -> None:
    """The theory averages popcount(t) * Var(node) over t = 1..T (checked by brute force),
    the naive error is one discrete Laplace at scale T * Δ / ε, and the worst t has the most
    1 bits."""
    for horizon in (1, 2, 3, 100, 1440, 4096, 5000):
        theory = error_comparison(horizon, Decimal("0.5"), 2)
        bits = [t.bit_count() for t in range(1, horizon + 1)]
        node_var = discrete_laplace_variance(levels(horizon) * 2 / 0.5)
        assert theory.tree_rms_mean == pytest.approx(math.sqrt(np.mean(bits) * node_var))
        assert theory.tree_rms_worst == pytest.approx(math.sqrt(max(bits) * node_var))
        naive = math.sqrt(discrete_laplace_variance(naive_scale(horizon, Decimal("0.5"), 2)))
        assert theory.naive_rms == pytest.approx(naive)
        assert theory.naive_scale == horizon * 4
        increments = [t * discrete_laplace_variance(4.0) for t in range(1, horizon + 1)]
        assert theory.increments_rms_mean == pytest.approx(math.sqrt(np.mean(increments)))
    assert error_comparison(86_400, ONE).ratio_mean >= 50


def test_simulated_error_ratio_matches_theory_at_moderate_t() -> None:
    """At T = 4,096 (two runs) the measured naive/tree RMS ratio and the tree RMS are within
    a factor 2.5 of theory, the naive RMS within 10%, and the ratio is above 50."""
    result = simulate(4096, ONE, 1, runs=2)
    theory = result.theory
    assert theory.ratio_mean / 2.5 <= result.ratio <= theory.ratio_mean * 2.5
    assert theory.tree_rms_mean / 2.5 <= result.tree_rms <= theory.tree_rms_mean * 2.5
    assert result.naive_rms == pytest.approx(theory.naive_rms, rel=0.1)
    assert result.ratio >= 50
    assert result.runs == 2


def test_naive_context_path_gives_similar_answers(tmp_path: Path) -> None:
    """On 8,000 events of 2,000 subjects in a parquet part file, OpenDP's Context path and
    this module release counts, distinct subjects, sums and means close to the same
    bounded exact answers (tolerances > 8 noise scales: false failures < 1e-6). No
    subject has more than k = 16 records here, where both truncations keep everything
    (OpenDP keeps a subject's first k, this module shares k over the groups)."""
    rng = random.Random(11)
    rows: list[Row] = [
        (f"s{rng.randrange(2000)}", rng.randrange(3700), rng.choice(CATEGORIES), rng.randrange(11))
        for _ in range(8000)
    ]
    append_part(tmp_path / "events", events(rows).collect().to_arrow())
    scanned = scan_events(tmp_path / "events")
    for aggregate in ("histogram", "count_distinct_subjects", "bounded_sum", "mean"):
        q = query(aggregate, k=16, epsilon="4")
        truth = exact_plan(scanned, q, START, END).collect()
        ours = release(q, truth).values
        naive = naive_context_release(scanned, q, START, END).values
        for row in truth.iter_rows(named=True):
            key = row[G]
            if aggregate == "mean":
                expected = row["sum"] / row["count"]
                tolerance = 0.5
            else:
                expected = row["value"]
                tolerance = 8 * 2 * sensitivity(q) / 4  # OpenDP may bound groups, not L1
            for value in (ours[key], naive[key]):
                assert value is not None and abs(value - expected) <= tolerance, (
                    aggregate,
                    key,
                    value,
                    expected,
                )
