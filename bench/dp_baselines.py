"""Baselines the DP benches compare the product with, and nothing the API serves.

* :func:`naive_context_release`: an event-level query through OpenDP's ``Context`` (its
  polars plugin), the path ``bench.dp`` times against ``event_aggregates.release``;
* :func:`error_comparison` and :func:`simulate`: the binary tree's running-total error
  against naive per-refresh noise and per-window increments, in theory and measured
  (``bench.dp``'s continual figures, ``docs/continual-release.md``).

Moved out of ``dashboards_api`` (issue #24): the API never calls them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import accumulate
from typing import Any

import numpy as np
import opendp.prelude as dp
import polars as pl

from dashboards_api.continual import (
    BinaryTreeCounter,
    MemoryNodeStore,
    check_epsilon,
    check_int,
    levels,
    tree_scale,
)
from dashboards_api.event_aggregates import (
    VALUE,
    EventQuery,
    EventRelease,
    GroupValue,
    bounded_measure,
)
from dashboards_api.mechanisms import vector_laplace

dp.enable_features("contrib")

# Public bound on the rows of one group that the naive Context path declares (OpenDP
# needs one for integer sums and quantiles; it only rules out overflow here).
NAIVE_MAX_LENGTH = 1_000_000_000


def naive_context_release(
    events: pl.LazyFrame, q: EventQuery, start: datetime, end: datetime
) -> EventRelease:
    """The same query through OpenDP's ``Context`` (polars plugin): for benchmarks only.

    Each call builds a Context and lets OpenDP search the noise scale; the window and
    category filters and the sort by event time run in polars before (OpenDP does not take
    datetime literals), the truncation to each subject's first k records in OpenDP (its
    own rule: ``release`` shares a subject's k records over its groups, so the exact
    answers differ where subjects exceed k). Its noise can differ from ``release``'s: it
    bounds groups per subject for quantiles, and has no mean shift.
    No confidence intervals (``summarize`` would search the scale again).
    """
    s, t, g, m, k = q.subject, q.time, q.group_by, q.measure, q.max_records_per_subject
    rows = events.filter((pl.col(t) >= start) & (pl.col(t) < end))
    if g is not None:
        rows = rows.filter(pl.col(g).is_in(q.categories))
    if m is not None:
        rows = rows.filter(pl.col(m).is_not_null()).with_columns(bounded_measure(events, q))
    # Sorted by event time here, then OpenDP keeps each subject's first rows: its
    # ``keep=SortBy(...)`` keeps the rows at the positions of the sort permutation's first
    # k entries (``int_range().sort_by()`` without the inverse), not the first k by time.
    rows = rows.select([c for c in (s, t, g, m) if c is not None]).sort(t, maintain_order=True)
    margins = [dp.polars.Margin(by=[g] if g is not None else [], max_length=NAIVE_MAX_LENGTH)]
    context = dp.Context.compositor(
        data=rows,
        privacy_unit=dp.unit_of(contributions=1, identifier=s),
        privacy_loss=dp.loss_of(epsilon=float(q.epsilon)),
        split_evenly_over=1,
        margins=margins,
    )
    query = context.query().truncate_per_group(k, keep="first")
    if q.aggregate == "count_distinct_subjects":
        query = query.truncate_per_group(1, by=[g] if g is not None else None, keep="first")
    if m is None:
        expr = dp.len(signed=True)
    else:
        measure: Any = pl.col(m)  # the ``dp`` namespace is registered by OpenDP at import
        if q.aggregate == "bounded_sum":
            expr = measure.dp.sum(q.bounds)
        elif q.aggregate == "mean":
            expr = measure.dp.mean(q.bounds)
        else:
            expr = measure.dp.quantile(q.alpha, list(q.candidates))
    expr = expr.alias(VALUE)
    if g is None:
        out = query.select(expr).release().collect()
        keys: list[str | None] = [None]
    else:
        keys_frame = pl.LazyFrame({g: list(q.categories)}, schema={g: pl.String})
        out = query.group_by(g).agg(expr).with_keys(keys_frame).release().collect()
        out = pl.DataFrame({g: list(q.categories)}).join(out, on=g, how="left")
        keys = list(q.categories)
    values = out[VALUE].to_list()
    return EventRelease(
        aggregate=q.aggregate,
        group_by=g,
        groups=tuple(GroupValue(key, v, None) for key, v in zip(keys, values, strict=True)),
        epsilon_spent=q.epsilon,
        max_records_per_subject=k,
        ci95_unit="rank" if q.aggregate == "quantile" else "value",
    )


def discrete_laplace_variance(scale: float) -> float:
    """Variance of OpenDP's discrete Laplace at ``scale``: ``2q / (1-q)**2``, q = e**(-1/scale)."""
    q = math.exp(-1.0 / scale)
    return 2.0 * q / (1.0 - q) ** 2


def naive_scale(horizon: int, epsilon: Decimal, sensitivity: int) -> float:
    """Noise scale when every refresh gets ``epsilon / T`` afresh: ``T * sensitivity / epsilon``."""
    return horizon * sensitivity / float(epsilon)


@dataclass(frozen=True)
class ErrorComparison:
    """Theoretical error of running totals over a horizon, all with total budget ``epsilon``.

    ``*_rms_mean`` is the root of the mean squared error averaged over ``t = 1..T``;
    ``*_rms_worst`` at the worst ``t``. ``naive``: every refresh gets ``epsilon / T`` (scale
    ``T * Δ / ε``). ``increments``: each window's count noised once at scale ``Δ / ε`` and the
    noisy counts summed (error grows like ``sqrt(t)``).
    """

    horizon: int
    epsilon: Decimal
    sensitivity: int
    levels: int
    tree_scale: float
    naive_scale: float
    tree_rms_mean: float
    tree_rms_worst: float
    naive_rms: float
    increments_rms_mean: float
    increments_rms_worst: float
    ratio_mean: float
    ratio_worst: float


def _total_bits(horizon: int) -> int:
    """Sum of the number of 1 bits of ``t`` over ``t = 1..horizon``, in O(log T)."""
    total = 0
    for bit in range(horizon.bit_length()):
        period = 1 << (bit + 1)
        full, rest = divmod(horizon + 1, period)
        total += full * (1 << bit) + max(0, rest - (1 << bit))
    return total


def error_comparison(horizon: int, epsilon: Decimal, sensitivity: int = 1) -> ErrorComparison:
    """Exact discrete Laplace error of the tree vs the naive per-refresh split (and increments).

    The tree's total at ``t`` sums ``popcount(t)`` independent node noises, so its mean
    squared error is ``popcount(t) * Var(tree_scale)``.
    """
    horizon = check_int("horizon", horizon, 1)
    epsilon = check_epsilon(epsilon)
    sensitivity = check_int("sensitivity", sensitivity, 1)
    node_var = discrete_laplace_variance(tree_scale(horizon, epsilon, sensitivity))
    mean_nodes = _total_bits(horizon) / horizon
    worst_nodes = max(horizon.bit_count(), levels(horizon) - 1)
    naive_rms = math.sqrt(discrete_laplace_variance(naive_scale(horizon, epsilon, sensitivity)))
    window_var = discrete_laplace_variance(sensitivity / float(epsilon))
    tree_rms_mean = math.sqrt(mean_nodes * node_var)
    tree_rms_worst = math.sqrt(worst_nodes * node_var)
    return ErrorComparison(
        horizon=horizon,
        epsilon=epsilon,
        sensitivity=sensitivity,
        levels=levels(horizon),
        tree_scale=tree_scale(horizon, epsilon, sensitivity),
        naive_scale=naive_scale(horizon, epsilon, sensitivity),
        tree_rms_mean=tree_rms_mean,
        tree_rms_worst=tree_rms_worst,
        naive_rms=naive_rms,
        increments_rms_mean=math.sqrt((horizon + 1) / 2 * window_var),
        increments_rms_worst=math.sqrt(horizon * window_var),
        ratio_mean=naive_rms / tree_rms_mean,
        ratio_worst=naive_rms / tree_rms_worst,
    )


@dataclass(frozen=True)
class SimulationResult:
    """Measured RMS errors over ``t = 1..T`` pooled over ``runs`` runs, with the theory."""

    horizon: int
    epsilon: Decimal
    sensitivity: int
    runs: int
    tree_rms: float
    naive_rms: float
    increments_rms: float
    ratio: float
    theory: ErrorComparison
    seconds: float


def _rms(noisy: Sequence[int], exact: Sequence[int]) -> float:
    """Root mean squared difference of two equal-length integer sequences."""
    diff = np.asarray(noisy, dtype=np.float64) - np.asarray(exact, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def simulate(
    horizon: int, epsilon: Decimal, sensitivity: int = 1, runs: int = 3
) -> SimulationResult:
    """Run the tree, the naive per-refresh split and the increments baseline on a synthetic
    stream of ``horizon`` windows (values in ``0..sensitivity``), all with OpenDP noise.

    Each run uses a fresh :class:`MemoryNodeStore`; each mechanism draws all its noise in one
    vectorised OpenDP call per run.
    """
    started = time.perf_counter()
    theory = error_comparison(horizon, epsilon, sensitivity)
    runs = check_int("runs", runs, 1)
    values = [(7 * i) % (sensitivity + 1) for i in range(horizon)]
    exact = list(accumulate(values))
    naive, _ = vector_laplace(horizon * sensitivity, epsilon)
    per_window, _ = vector_laplace(sensitivity, epsilon)
    tree_sq = naive_sq = increments_sq = 0.0
    for run in range(runs):
        counter = BinaryTreeCounter(
            horizon, epsilon, sensitivity, MemoryNodeStore(), f"simulation-{run}"
        )
        tree = [total.value for total in counter.release_prefixes(values)]
        tree_sq += _rms(tree, exact) ** 2
        naive_sq += _rms(naive(exact), exact) ** 2
        increments_sq += _rms(list(accumulate(per_window(values))), exact) ** 2
    tree_rms = math.sqrt(tree_sq / runs)
    naive_rms = math.sqrt(naive_sq / runs)
    return SimulationResult(
        horizon=horizon,
        epsilon=epsilon,
        sensitivity=sensitivity,
        runs=runs,
        tree_rms=tree_rms,
        naive_rms=naive_rms,
        increments_rms=math.sqrt(increments_sq / runs),
        ratio=naive_rms / tree_rms,
        theory=theory,
        seconds=time.perf_counter() - started,
    )
