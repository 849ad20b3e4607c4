"""Event-level, user-level DP aggregates over a domain's pseudonymised product events.

The stream processor writes every product event to ``<offline>/<product>_events/`` (one
parquet part file per offline flush; see ``feature_repo.store.event_schema``). This module
answers what the per-window online rows cannot: counts, distinct subjects, bounded sums,
means, histograms and quantiles over any time window ``[start, end)``, grouped by a public
key or not. Pure: no FastAPI, no ledger; the release service commits the spend first.

Two steps, so the exact part is a polars plan and the private part is OpenDP alone:

* ``exact_plan`` filters the window, keeps only the public categories of the group key
  (and, for a measure, the records that have one), clamps measures to ``bounds`` and
  bounds every subject's contribution (below); ``preaggregate_plan`` computes the same
  answer from the processor's pre-aggregates (``feature_repo.preaggregate``: per subject id,
  minute and public key, the record count and clamped sums), and ``plan_from_store``
  picks it whenever they can answer (not quantiles, which need the values);
* ``release`` adds OpenDP noise with measurements built once per query (explicit scales
  from epsilon and the L1 sensitivity, each checked with OpenDP's own privacy map).

The contribution bound (``k`` = ``max_records_per_subject``): over the window, a subject
with N <= k records keeps them all; one with N > k keeps k, shared out over its
categories in proportion to its records there (cell with n records: ``floor(k n / N)``,
the slots left to the largest remainders ``k n mod N``, ties to the earlier category).
A cell keeping c of its n records contributes c to counts and ``floor(s c / n)`` to sums
(``s`` its clamped sum: its mean clamped value, c times, rounded down). The rule is a
function of each subject's own records only, and of its per-(subject, category) totals
only: so pre-aggregates over any split of the window into minutes and files give the
same answer exactly. (It replaced "the subject's first k records by event time", which
per-minute aggregates cannot reproduce when a subject's minute spans the k-th record;
it is as sound, see below, and keeps a heavy subject's mix of categories rather than its
earliest records.) A quantile, read from the events only (it needs the values), keeps
that first-k rule: each subject's first k records by event time, ties in storage order;
also at most k records per subject.

A measure with a per-period cap ``M`` (the contract's ``max_sum_per_period``, floored to an
integer; ``max_sum_per_subject``) bounds a subject's kept sum over the window as well: a
subject whose kept cells add up to ``T > M`` keeps ``floor(s' M / T)`` of each cell's kept sum
``s'`` (at most ``M`` in all; again a function of its per-category totals only).

Sensitivities (adding or removing one subject; ``C`` = number of categories,
``r`` = ``max(|lo|, |hi|)``); a subject keeps c_g records in category g, sum c_g <= k:

* ``count_records`` / ``histogram``: ``k`` (the vector moves by sum c_g);
* ``count_distinct_subjects``: ``min(k, C)`` grouped (it counts in the categories with
  c_g > 0), 1 ungrouped;
* ``bounded_sum``: ``k * r`` (cell g moves by ``floor(s c_g / n)``, within
  ``[c_g lo, c_g hi]`` since ``s`` is within ``[n lo, n hi]``); ``min(k * r, M)`` with a cap
  (which the contract allows only for ``lo >= 0``);
* ``mean``: ``k * max(hi - mid, mid - lo)`` for the sum of ``x - mid`` (``mid`` the integer
  midpoint of the bounds, which halves the noise for bounds such as ``[0, hi]``:
  ``floor(s c / n) - mid c = floor((s - mid n) c / n)`` is within
  ``[c (lo - mid), c (hi - mid)]``) and ``k`` for the count, each with half of epsilon; with a
  cap a kept sum lies in ``[0, min(c hi, M)]``, so the sum of ``x - mid`` moves by at most
  ``max(k mid, min(k (hi - mid), M))``, and ``mid`` is 0 when that is smaller;
* ``quantile``: OpenDP's quantile score changes by at most ``k * max(alpha, 1 - alpha)`` per
  candidate. Grouped, the groups hold disjoint records: by group privacy a group where d
  of the subject's records change costs at most ``d * map(1)``, so all groups together
  cost at most ``k * map(1)``, checked ``<= epsilon`` with OpenDP's map of one record.

Pre-aggregates group subjects by a 64-bit hash of their token. Two subjects of a window
whose ids collide (probability below ``n**2 / 2**65`` for n subjects: 3e-8 at a million)
are bounded as one: together they keep at most k records, never more than apart, so no
release exceeds the bounds above for the whole pair; but adding one of them then moves
the pair's kept records from the other's to a mix (up to 2k for a histogram), so such a
release is ``2 * epsilon``-DP for those two subjects and ``epsilon``-DP for everyone else.

The event files' time column is the contract's ``event_time`` field, a UTC timestamp
(``feature_repo.events.EVENT_TIME_TYPE``); windows are timezone-aware datetimes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

import opendp.prelude as dp
import polars as pl

from dashboards_api.errors import NoDataYet
from dashboards_api.mechanisms import (
    NonFiniteAccuracy,
    calibrate,
    finite_accuracy,
    vector_laplace,
)
from domains.contract import DataProduct
from feature_repo.offline import part_files
from feature_repo.preaggregate import (
    FIRST,
    RECORDS,
    SUBJECT_ID,
    Window,
    bounded,
    count_column,
    integer_clamp,
    scan_window,
    sum_column,
    total_column,
)

dp.enable_features("contrib")

Aggregate = Literal[
    "count_records", "count_distinct_subjects", "bounded_sum", "mean", "histogram", "quantile"
]
AGGREGATES: frozenset[str] = frozenset(get_args(Aggregate))
MEASURED = frozenset({"bounded_sum", "mean", "quantile"})
CAPPED = frozenset({"bounded_sum", "mean"})  # the aggregates a per-subject sum cap bounds
CONFIDENCE = 0.95
# Output columns of ``exact_plan`` (the group key keeps its own name).
VALUE, SUM, COUNT, VALUES = "value", "sum", "count", "values"


class InvalidEventQuery(ValueError):
    """An event query whose parameters contradict each other (raised when it is built)."""

    code = "invalid_event_query"


@dataclass(frozen=True)
class EventQuery:
    """One event-level aggregate, with its user-level contribution bound and its budget.

    ``max_records_per_subject`` (k) is the privacy-relevant bound: in one window, a
    subject keeps at most k records in total over the groups (shared over its groups in
    proportion, module docstring), so one person moves a released number by a bounded
    amount. ``epsilon`` is the
    privacy loss of one release (pure DP, per subject and window). ``categories`` are the
    group key's public values (the contract's ``allowed_values``): all of them are
    released, nothing else. ``bounds`` are integer measure bounds; values are clamped to
    them (and rounded, for float measures). ``alpha`` and ``candidates`` are the quantile
    asked for and the public values it is chosen from.
    """

    aggregate: Aggregate
    subject: str
    time: str
    max_records_per_subject: int
    epsilon: Decimal
    group_by: str | None = None
    categories: tuple[str, ...] = ()
    measure: str | None = None
    bounds: tuple[int, int] | None = None
    alpha: float | None = None
    candidates: tuple[int, ...] = ()
    max_sum_per_subject: int | None = None

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise InvalidEventQuery("; ".join(problems))

    @classmethod
    def for_product(
        cls,
        product: DataProduct,
        aggregate: Aggregate,
        *,
        max_records_per_subject: int,
        epsilon: Decimal,
        group_by: str | None = None,
        measure: str | None = None,
        alpha: float | None = None,
        candidates: Sequence[int] = (),
    ) -> EventQuery:
        """The query over ``product``'s event files: subject, time, categories and bounds
        come from its contract."""
        categories: tuple[str, ...] = ()
        if group_by is not None:
            key = product.field(group_by)
            if key is None or key.allowed_values is None:
                raise InvalidEventQuery(
                    f"group_by {group_by!r} is not a field of {product.name!r} with "
                    "allowed_values; only public categories can be group keys"
                )
            categories = tuple(key.allowed_values)
        bounds, cap = None, None
        if measure is not None:
            spec = product.field(measure)
            if spec is None or spec.bounds is None or not spec.numeric:
                raise InvalidEventQuery(
                    f"measure {measure!r} is not a bounded numeric field of {product.name!r}"
                )
            # Integer bounds enclosing the contract's per-record clamp (its contribution
            # clamp, else the field's bounds; equal for integral bounds), as the stream
            # processor's windows clamp; float measures are rounded after clamping.
            bounds = integer_clamp(product, measure)
            declared = product.sum_cap_of(measure)
            if declared is not None and aggregate in CAPPED:
                cap = math.floor(declared)  # the event path's sums are integers
        return cls(
            aggregate=aggregate,
            subject=product.subject_field,
            time=product.event_time,
            max_records_per_subject=max_records_per_subject,
            epsilon=epsilon,
            group_by=group_by,
            categories=categories,
            measure=measure,
            bounds=bounds,
            alpha=alpha,
            candidates=tuple(candidates),
            max_sum_per_subject=cap,
        )

    @property
    def grouped(self) -> bool:
        """True when the release has one value per category."""
        return self.group_by is not None


def _problems(q: EventQuery) -> list[str]:
    """What is wrong with ``q``, each with how to fix it (empty when valid)."""
    problems: list[str] = []
    if q.aggregate not in AGGREGATES:
        problems.append(f"aggregate {q.aggregate!r} is not one of {sorted(AGGREGATES)}")
    if not isinstance(q.max_records_per_subject, int) or q.max_records_per_subject < 1:
        problems.append("max_records_per_subject must be an integer >= 1")
    if not isinstance(q.epsilon, Decimal) or not q.epsilon.is_finite() or q.epsilon <= 0:
        problems.append("epsilon must be a finite Decimal > 0 (e.g. Decimal('0.5'))")
    if (q.group_by is None) != (not q.categories):
        problems.append("group_by and categories go together: name the key and its values")
    if len(set(q.categories)) != len(q.categories):
        problems.append("categories must be distinct")
    if q.aggregate == "histogram" and q.group_by is None:
        problems.append("a histogram needs group_by (it is count_records per category)")
    return problems + _measure_problems(q)


def _measure_problems(q: EventQuery) -> list[str]:
    """What is wrong with ``q``'s measure, bounds and quantile parameters."""
    problems: list[str] = []
    measured = q.aggregate in MEASURED
    if measured and (q.measure is None or q.bounds is None):
        problems.append(f"{q.aggregate} needs a measure and its integer bounds (lo, hi)")
    if not measured and (q.measure is not None or q.bounds is not None):
        problems.append(f"{q.aggregate} takes no measure or bounds")
    if q.bounds is not None and (
        len(q.bounds) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in q.bounds)
        or q.bounds[0] > q.bounds[1]
    ):
        problems.append("bounds must be two integers lo <= hi")
    if q.aggregate == "quantile":
        if q.alpha is None or not 0 < q.alpha < 1:
            problems.append("a quantile needs alpha in (0, 1), e.g. 0.5 for the median")
        if not q.candidates or list(q.candidates) != sorted(set(q.candidates)):
            problems.append("a quantile needs candidates: distinct integers, increasing")
    elif q.alpha is not None or q.candidates:
        problems.append("alpha and candidates are for quantiles only")
    cap = q.max_sum_per_subject
    if cap is not None:
        if q.aggregate not in CAPPED:
            problems.append(f"max_sum_per_subject caps sums; {q.aggregate} takes none")
        elif not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            problems.append("max_sum_per_subject must be an integer >= 0 (or None: no cap)")
        elif q.bounds is not None and q.bounds[0] < 0:
            problems.append("max_sum_per_subject needs bounds with lo >= 0 (a non-negative sum)")
    return problems


# ---------------------------------------------------------------------------- reading
def scan_events(folder: Path, schema: pl.Schema | None = None) -> pl.LazyFrame:
    """A lazy scan of a product's event part files (``DomainFeatureStore.events_folder``).

    A parquet scan, not an in-memory frame: OpenDP's polars plugin serialises in-memory
    frames across its FFI on every call. Part files written before a contract added a
    field lack its column: it reads as null (``schema``, when given, fixes the columns).
    """
    if not part_files(folder):
        raise NoDataYet(f"no product events stored in {folder.name} yet", retry_after_seconds=60)
    return pl.scan_parquet(
        folder / "part-*.parquet", schema=schema, missing_columns="insert", extra_columns="ignore"
    )


# ---------------------------------------------------------------------------- exact part
SUBJECT, N, S, KEPT, KEPT_SUM = "_subject", "_n", "_s", "_kept", "_kept_sum"
TOTAL = "_total"


def exact_plan(events: pl.LazyFrame, q: EventQuery, start: datetime, end: datetime) -> pl.LazyFrame:
    """The contribution-bounded exact aggregate of ``q`` over events in ``[start, end)``.

    Steps: window filter; records outside the public categories (or without a measure)
    dropped; measures clamped to ``bounds``; per subject and category its records and
    clamped sum; each subject's records bounded to k (``_allocate``); the aggregate per
    category. Columns: the group key (grouped queries, every category in
    ``q.categories`` order) and ``value`` (counts, sums), ``sum`` and ``count`` (mean) or
    ``values`` (quantile: the bounded measures, a list per group). Collect it with the
    default engine; ``release`` adds the noise. ``preaggregate_plan`` computes the same
    from the processor's pre-aggregates.
    """
    _check_window(start, end)
    t, g, m = q.time, q.group_by, q.measure
    columns = [q.subject, t, *([g] if g is not None else []), *([m] if m is not None else [])]
    rows = events.select(columns).filter((pl.col(t) >= start) & (pl.col(t) < end))
    if g is not None:
        rows = rows.filter(pl.col(g).is_in(q.categories))
    if m is not None:
        rows = rows.with_columns(bounded_measure(events, q)).filter(pl.col(m).is_not_null())
    if q.aggregate == "quantile":
        return _quantile_records(rows.rename({q.subject: SUBJECT}), q)
    rows = rows.rename({q.subject: SUBJECT})
    cells = rows.group_by(SUBJECT, *([g] if g is not None else [])).agg(
        pl.len().cast(pl.Int64).alias(N),
        *([pl.col(m).sum().cast(pl.Int64).alias(S)] if m is not None else []),
    )
    return _finish(_allocate(cells, q), q)


def preaggregate_plan(windows: Sequence[Window], q: EventQuery) -> pl.LazyFrame | None:
    """``exact_plan``'s answer from the processor's pre-aggregate rows of the window
    (``feature_repo.preaggregate.scan_window``), or None when they cannot give it: a
    quantile (it needs the values), a key or measure the pre-aggregates do not hold
    with the query's categories and bounds."""
    if q.aggregate == "quantile" or not windows:
        return None
    g, m = q.group_by, q.measure
    for window in windows:
        layout = window.layout
        if g is not None and not set(q.categories) <= set(layout.allowed(g) or ()):
            return None
        if m is not None and layout.bounds(m) != q.bounds:
            return None
    if len(windows) == 1 and windows[0].parts is None:
        fast = _whole_day_plan(windows[0], q)
        if fast is not None:
            return fast
    n = pl.col(count_column(m) if m is not None else RECORDS)
    frames = [
        w.rows.select(
            pl.col(SUBJECT_ID).alias(SUBJECT),
            *([pl.col(g)] if g is not None else []),
            n.alias(N),
            *([pl.col(sum_column(m)).alias(S)] if m is not None else []),
        )
        for w in windows
    ]
    rows = pl.concat(frames) if len(frames) > 1 else frames[0]
    if g is not None:
        rows = rows.filter(pl.col(g).is_in(q.categories))
    rows = rows.filter(pl.col(N) > 0)
    keys = [SUBJECT, *([g] if g is not None else [])]
    cells = rows.group_by(keys).agg(pl.col(N).sum(), *([pl.col(S).sum()] if m else []))
    return _finish(_allocate(cells, q), q)


def _whole_day_plan(window: Window, q: EventQuery) -> pl.LazyFrame | None:
    """A whole UTC day from its day file alone, with the subjects' day totals stored on
    every row: a subject with at most k records needs no group-by, so only the few
    others are grouped (``_shares``). None unless the file's rows are the query's cells
    (ungrouped; or grouped by the layout's only key over all its public values)."""
    layout, day = window.layout, window.day
    assert day is not None
    g, m, k = q.group_by, q.measure, q.max_records_per_subject
    keys = [name for name, _ in layout.keys]
    if g is not None and (keys != [g] or set(q.categories) != set(layout.allowed(g) or ())):
        return None
    n_column = count_column(m) if m is not None else RECORDS
    if g is None:  # the subject's first row carries its day totals: one cell
        cells = day.filter(pl.col(FIRST)).select(
            pl.col(SUBJECT_ID).alias(SUBJECT),
            pl.col(total_column(n_column, None)).alias(N),
            *([pl.col(total_column(sum_column(m), None)).alias(S)] if m is not None else []),
        )
        return _finish(_allocate(cells.filter(pl.col(N) > 0), q), q)
    # Read here, once: the two branches below would scan the file apiece (a ``cache()``
    # node would read every column of it).
    cells = (
        day.select(
            pl.col(SUBJECT_ID).alias(SUBJECT),
            pl.col(g),
            pl.col(n_column).alias(N),
            *([pl.col(sum_column(m)).alias(S)] if m is not None else []),
            pl.col(total_column(n_column, g)).alias(TOTAL),
        )
        .filter(pl.col(g).is_not_null(), pl.col(N) > 0)
        .collect()
        .lazy()
    )
    light = cells.filter(pl.col(TOTAL) <= k).with_columns(pl.col(N).alias(KEPT))
    heavy = _shares(cells.filter(pl.col(TOTAL) > k), q, g)
    kept = pl.concat([light, heavy], how="vertical_relaxed").drop(TOTAL)
    return _finish(_with_kept_sums(kept, q), q)


def plan_from_store(
    events_folder: Path, q: EventQuery, start: datetime, end: datetime
) -> pl.LazyFrame:
    """The exact answer of ``q`` over ``[start, end)`` from a product's offline store:
    the pre-aggregates when they can give it (``preaggregate_plan``), else the events."""
    _check_window(start, end)
    windows = scan_window(events_folder, int(start.timestamp()), int(end.timestamp()))
    if windows is not None:
        planned = preaggregate_plan(windows, q)
        if planned is not None:
            return planned
    return exact_plan(scan_events(events_folder), q, start, end)


def _check_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidEventQuery("start and end must be timezone-aware datetimes (UTC)")
    if end <= start:
        raise InvalidEventQuery(f"the window [{start}, {end}) is empty")


def _allocate(cells: pl.LazyFrame, q: EventQuery) -> pl.LazyFrame:
    """Each subject's records bounded to k: per (subject, category) cell of ``n``
    records (clamped sum ``s``), ``_kept`` records and ``_kept_sum``.

    A subject with at most k records keeps them all. One with N > k keeps k, shared
    out over its categories in proportion to its records there (largest remainder:
    each cell ``floor(k n / N)``, the slots left to the largest ``k n mod N``, ties to
    the earlier category); a cell keeping c of its n records keeps ``floor(s c / n)``
    of its sum: its mean clamped value c times, rounded down. Per subject that is at
    most k records, a sum within ``[c lo, c hi]`` per cell, so the sensitivities of the
    module docstring hold; and it needs only per-(subject, category) totals, so the
    pre-aggregates give exactly the same answer.
    """
    k, g = q.max_records_per_subject, q.group_by
    if g is None:  # one cell per subject
        cells = cells.with_columns(pl.min_horizontal(pl.col(N), pl.lit(k, pl.Int64)).alias(KEPT))
    else:
        # Most subjects have at most k records and keep them; only the others need the
        # shares, computed on their few rows (a rank over every subject costs more than
        # the rest of the plan).
        totals = cells.group_by(SUBJECT).agg(pl.col(N).sum().alias(TOTAL))
        heavy_ids = totals.filter(pl.col(TOTAL) > k)
        light = cells.join(heavy_ids, on=SUBJECT, how="anti", nulls_equal=True)
        heavy = cells.join(heavy_ids, on=SUBJECT, how="inner", nulls_equal=True)
        cells = pl.concat(
            [light.with_columns(pl.col(N).alias(KEPT)), _shares(heavy, q, g).drop(TOTAL)],
            how="vertical_relaxed",
        )
    return _with_kept_sums(cells, q)


def _with_kept_sums(cells: pl.LazyFrame, q: EventQuery) -> pl.LazyFrame:
    """A cell keeping c of its n records keeps ``floor(s c / n)`` of its clamped sum; with a
    cap ``M``, a subject whose kept sums add up to ``T > M`` keeps ``floor(s' M / T)`` of
    each (``s'`` the cell's kept sum)."""
    if q.measure is None:
        return cells
    s, n, c = pl.col(S), pl.col(N), pl.col(KEPT)
    scaled = (s // n) * c + ((s % n) * c) // n  # floor(s * c / n) without overflow
    kept = cells.with_columns(pl.when(c == n).then(s).otherwise(scaled).alias(KEPT_SUM))
    cap = q.max_sum_per_subject
    if cap is None:
        return kept
    total = pl.col(KEPT_SUM).sum().over(SUBJECT)
    share = (pl.col(KEPT_SUM).cast(pl.Int128) * cap // total.cast(pl.Int128)).cast(pl.Int64)
    return kept.with_columns(
        pl.when(total > cap).then(share).otherwise(pl.col(KEPT_SUM)).alias(KEPT_SUM)
    )


def _shares(heavy: pl.LazyFrame, q: EventQuery, g: str) -> pl.LazyFrame:
    """The kept records of the cells of subjects with more than k records (``TOTAL``):
    ``floor(k n / N)`` each, the slots left to the largest remainders ``k n mod N``
    (ties to the earlier category).

    The cells of a subject are distinct categories, so ``_order`` has no ties within a
    subject: sorted by subject, largest ``_order`` first, a cell's rank is its distance
    from its subject's first row (a sort and a scan: ``rank().over()`` evaluates every
    subject's group apart, several times slower)."""
    k, categories = q.max_records_per_subject, len(q.categories)
    index = pl.col(g).replace_strict(
        list(q.categories), list(range(categories)), return_dtype=pl.Int64
    )
    share = pl.col(N) * k
    order = (share % pl.col(TOTAL)) * (categories + 1) + (categories - index)
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    first = (row == 0) | pl.col(SUBJECT).ne_missing(pl.col(SUBJECT).shift(1))
    ranked = (
        heavy.with_columns((share // pl.col(TOTAL)).alias(KEPT), order.alias("_order"))
        .sort(SUBJECT, "_order", descending=[False, True])
        .with_columns(
            (k - pl.col(KEPT).sum().over(SUBJECT)).alias("_left"),
            (row - pl.when(first).then(row).forward_fill() + 1).alias("_rank"),
        )
    )
    extra = (pl.col("_rank") <= pl.col("_left")).cast(pl.Int64)
    return ranked.with_columns((pl.col(KEPT) + extra).alias(KEPT)).drop("_order", "_left", "_rank")


# Up to this many categories a grouped answer sums each category in its own filtered
# pass (a string comparison per row and category); above it one hash group-by on the key
# costs less. On 2e5 kept cells: about 0.2 ms a category against 3 ms for the group-by.
FILTERED_SUMS_UP_TO = 8


def _finish(kept: pl.LazyFrame, q: EventQuery) -> pl.LazyFrame:
    """The aggregate per category (or overall) from the subjects' kept cells."""
    g = q.group_by
    if g is None:
        return kept.select(_aggregates(q)).with_columns(pl.all().fill_null(0))
    if len(q.categories) > FILTERED_SUMS_UP_TO:
        return _every_category(kept.group_by(g).agg(_aggregates(q)), q)
    # One row of one struct per category, then one row per category, in their order.
    columns = [f"_c{i}" for i in range(len(q.categories))]
    wide = kept.select(
        pl.struct(_aggregates(q, pl.col(g) == category)).alias(column)
        for column, category in zip(columns, q.categories, strict=True)
    )
    return wide.unpivot(variable_name="_category", value_name="_aggregates").select(
        pl.col("_category")
        .replace_strict(columns, list(q.categories), return_dtype=pl.String)
        .alias(g),
        pl.col("_aggregates").struct.unnest(),
    )


def _aggregates(q: EventQuery, where: pl.Expr | None = None) -> list[pl.Expr]:
    """``q``'s aggregate of the kept cells (those ``where`` selects): ``value``, or a
    mean's ``sum`` and ``count``; Int64, 0 over no cells."""

    def column(name: str) -> pl.Expr:
        return pl.col(name) if where is None else pl.col(name).filter(where)

    if q.aggregate == "mean":
        return [
            column(KEPT_SUM).sum().cast(pl.Int64).alias(SUM),
            column(KEPT).sum().cast(pl.Int64).alias(COUNT),
        ]
    if q.aggregate == "count_distinct_subjects":
        value = (column(KEPT) > 0).sum()
    elif q.aggregate in {"count_records", "histogram"}:
        value = column(KEPT).sum()
    else:  # bounded_sum
        value = column(KEPT_SUM).sum()
    return [value.cast(pl.Int64).alias(VALUE)]


def _quantile_records(rows: pl.LazyFrame, q: EventQuery) -> pl.LazyFrame:
    """The bounded measures a quantile ranks: each subject's first k records by event
    time (ties in storage order), across all groups. Quantiles read only the events,
    so they keep this rule, as sound as the shares (module docstring)."""
    g, m, k = q.group_by, q.measure, q.max_records_per_subject
    assert m is not None
    firsts = rows.sort(q.time, maintain_order=True).group_by(SUBJECT)
    if g is None:
        records = firsts.agg(pl.col(m).head(k)).explode(m)
        return records.select(pl.col(m).implode().alias(VALUES))
    records = firsts.agg(pl.col(g).head(k), pl.col(m).head(k)).explode(g, m)
    return _every_category(records.group_by(g).agg(pl.col(m).alias(VALUES)), q)


def bounded_measure(events: pl.LazyFrame, q: EventQuery) -> pl.Expr:
    """The measure clamped to the bounds, as Int64 (floats rounded half to even after
    clamping, NaN as no value): ``feature_repo.preaggregate.bounded``."""
    assert q.measure is not None and q.bounds is not None
    lo, hi = q.bounds
    dtype = events.collect_schema()[q.measure]
    try:
        return bounded(q.measure, dtype, lo, hi)
    except ValueError as exc:
        raise InvalidEventQuery(f"measure {q.measure!r} is {dtype}, not a number") from exc


def _every_category(per_group: pl.LazyFrame, q: EventQuery) -> pl.LazyFrame:
    """One row per public category, in ``q.categories`` order; absent ones as 0 (or [])."""
    assert q.group_by is not None
    keys = pl.LazyFrame({q.group_by: list(q.categories)}, schema={q.group_by: pl.String})
    joined = keys.join(
        per_group.with_columns(pl.col(q.group_by).cast(pl.String)),
        on=q.group_by,
        how="left",
        maintain_order="left",
    )
    if q.aggregate == "quantile":
        return joined.with_columns(pl.col(VALUES).fill_null(pl.lit([], pl.List(pl.Int64))))
    return joined.fill_null(0)


# ---------------------------------------------------------------------------- private part
@dataclass(frozen=True)
class GroupValue:
    """One released number: ``value`` is None when suppressed.

    ``ci95_half_width``: the value is within this distance of the bounded exact answer
    with 95% probability (for a quantile, see ``EventRelease.ci95_unit``).
    """

    key: str | None
    value: int | float | None
    ci95_half_width: float | None
    suppressed: bool = False


@dataclass(frozen=True)
class EventRelease:
    """The noisy answer to one ``EventQuery``: one value per category (or one overall).

    ``ci95_unit`` is ``"value"`` for counts, sums and means. For a quantile it is
    ``"rank"``: the exponential mechanism's guarantee is on ranks, not values: with 95%
    probability the chosen candidate's quantile score (about how many records it is away
    from the alpha-quantile's rank) exceeds the best candidate's by at most the half-width.
    A value interval would need the data distribution around the candidates, which only
    more budget could release.
    """

    aggregate: str
    group_by: str | None
    groups: tuple[GroupValue, ...]
    epsilon_spent: Decimal
    max_records_per_subject: int
    ci95_unit: Literal["value", "rank"] = "value"
    suppress_below: int | None = None

    @property
    def values(self) -> dict[str | None, int | float | None]:
        """The released values by category (key None when ungrouped)."""
        return {g.key: g.value for g in self.groups}


class _VectorLaplace:
    """Discrete Laplace noise on an integer vector of L1 sensitivity ``sensitivity``.

    The scale is ``sensitivity / epsilon`` (raised by ulps until OpenDP's privacy map
    confirms at most ``epsilon``), built once; a release is one call.
    """

    def __init__(self, epsilon: Decimal, sensitivity: int) -> None:
        self.sensitivity = sensitivity
        self.epsilon = epsilon
        self._measurement, self.scale = vector_laplace(sensitivity, epsilon)
        self.mapped = Decimal(self._measurement.map(sensitivity))
        what = f"discrete Laplace at epsilon {epsilon}, sensitivity {sensitivity}"
        self.ci95 = finite_accuracy(self.accuracy(CONFIDENCE), what)
        # the mean's two noises, each within this with 97.5%: both with >= 95%
        self.ci975 = finite_accuracy(self.accuracy(1 - (1 - CONFIDENCE) / 2), what)

    def accuracy(self, confidence: float) -> float:
        """Half-width that the noise stays within with probability ``confidence``."""
        return float(dp.discrete_laplacian_scale_to_accuracy(self.scale, 1 - confidence))

    def __call__(self, exact: Sequence[int]) -> list[int]:
        return [int(v) for v in self._measurement([int(v) for v in exact])]


class _Quantile:
    """OpenDP's private quantile (quantile score + noisy max) over the bounded records."""

    def __init__(self, q: EventQuery) -> None:
        assert q.alpha is not None
        alpha, k = q.alpha, q.max_records_per_subject
        space = dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance()
        candidates = [int(c) for c in q.candidates]

        def build(scale: float) -> Any:
            return dp.m.make_private_quantile(
                *space, dp.max_divergence(), candidates=candidates, alpha=alpha, scale=scale
            )

        # The loss is inversely proportional to the scale: the unit-scale loss of k
        # records, divided by epsilon, is the scale that spends epsilon. Grouped, the k
        # records may be spread over groups: k times the loss of one record must fit too.
        def cost(measurement: Any) -> Decimal:
            return max(Decimal(measurement.map(k)), k * Decimal(measurement.map(1)))

        start = float(cost(build(1.0))) / float(q.epsilon)
        self._measurement, self.scale = calibrate(build, start, cost, q.epsilon)
        self.mapped = cost(self._measurement)
        m = len(candidates)
        self.rank_error = 0.0 if m < 2 else self.scale * math.log((m - 1) / (1 - CONFIDENCE))
        if not self.scale > 0:
            raise NonFiniteAccuracy(f"quantile at epsilon {q.epsilon}: scale {self.scale}")
        finite_accuracy(self.rank_error, f"quantile at epsilon {q.epsilon}")
        self.candidates = candidates

    def __call__(self, values: pl.Series) -> int:
        # a writable array: OpenDP passes numpy memory to its FFI without a list copy
        return int(self._measurement(values.cast(pl.Int64).to_numpy(writable=True)))


@dataclass(frozen=True)
class _Mechanisms:
    """The measurements of one query, built once (``mechanisms_for``)."""

    primary: _VectorLaplace | _Quantile
    count: _VectorLaplace | None = None  # the mean's denominator
    mid: int = 0  # the mean's shift
    spent: Decimal = field(default=Decimal(0))


def sensitivity(q: EventQuery) -> int:
    """The integer L1 sensitivity of ``q``'s exact answer vector (module docstring)."""
    k = q.max_records_per_subject
    if q.aggregate in {"count_records", "histogram"}:
        return k
    if q.aggregate == "count_distinct_subjects":
        return min(k, len(q.categories)) if q.grouped else 1
    assert q.bounds is not None
    lo, hi = q.bounds
    cap = q.max_sum_per_subject
    if q.aggregate == "bounded_sum":
        return k * max(abs(lo), abs(hi)) if cap is None else min(k * max(abs(lo), abs(hi)), cap)
    if q.aggregate == "mean":
        return _mean_sensitivity(q, mean_shift(q))
    raise InvalidEventQuery(f"{q.aggregate} has no L1 sensitivity (it is not additive noise)")


def mean_shift(q: EventQuery) -> int:
    """The ``mid`` a mean's sum is shifted by: the integer midpoint of the bounds, or 0
    when a cap makes that the smaller sensitivity (module docstring)."""
    assert q.bounds is not None
    mid = (q.bounds[0] + q.bounds[1]) // 2
    if q.max_sum_per_subject is None:
        return mid
    return min((mid, 0), key=lambda m: _mean_sensitivity(q, m))


def _mean_sensitivity(q: EventQuery, mid: int) -> int:
    """L1 sensitivity of a mean's sums of ``x - mid`` (module docstring)."""
    assert q.bounds is not None
    k, (lo, hi), cap = q.max_records_per_subject, q.bounds, q.max_sum_per_subject
    if cap is None:
        return k * max(hi - mid, mid - lo)
    return max(k * mid, min(k * max(hi - mid, 0), cap))


def _mean_radius(q: EventQuery, mid: int) -> int:
    """A bound on ``|true mean - mid|``: a capped subject's mean may fall below ``lo``."""
    assert q.bounds is not None
    lo, hi = q.bounds
    floor = lo if q.max_sum_per_subject is None else min(lo, 0)
    return max(hi - mid, mid - floor)


@cache
def mechanisms_for(q: EventQuery) -> _Mechanisms:
    """The OpenDP measurements of ``q``, built and checked once per query."""
    if q.aggregate == "quantile":
        quantile = _Quantile(q)
        return _Mechanisms(primary=quantile, spent=quantile.mapped)
    if q.aggregate == "mean":
        assert q.bounds is not None
        half = q.epsilon / 2
        sums = _VectorLaplace(half, max(sensitivity(q), 1))
        counts = _VectorLaplace(half, q.max_records_per_subject)
        return _Mechanisms(sums, counts, mean_shift(q), sums.mapped + counts.mapped)
    noise = _VectorLaplace(q.epsilon, max(sensitivity(q), 1))
    return _Mechanisms(primary=noise, spent=noise.mapped)


def release(
    q: EventQuery, exact: pl.DataFrame | pl.LazyFrame, suppress_below: int | None = None
) -> EventRelease:
    """Noise on ``exact`` (``exact_plan``'s output): one release of ``q``, costing at most
    ``q.epsilon`` (OpenDP's map). Commit the spend to the ledger before returning it.

    ``suppress_below``: groups whose noisy count (the noisy value of a count, a mean's
    noisy count) is below it are returned with value None; post-processing, no extra
    privacy cost. Refused for sums and quantiles, which release no count.
    """
    frame = exact.collect() if isinstance(exact, pl.LazyFrame) else exact
    keys = _keys(q, frame)
    if suppress_below is not None and q.aggregate in {"bounded_sum", "quantile"}:
        raise InvalidEventQuery(
            f"suppress_below needs a released count; {q.aggregate} has none "
            "(release the count as its own query and suppress on that)"
        )
    mechanisms = mechanisms_for(q)
    primary = mechanisms.primary
    unit: Literal["value", "rank"] = "value"
    groups: list[GroupValue]
    if isinstance(primary, _Quantile):
        unit = "rank"
        groups = [
            GroupValue(key, primary(values), primary.rank_error)
            for key, values in zip(keys, frame[VALUES], strict=True)
        ]
    elif q.aggregate == "mean":
        groups = _means(q, mechanisms, keys, frame, suppress_below)
    else:
        noisy = primary(frame[VALUE].to_list())
        ci = primary.ci95
        groups = [
            _suppressed(key, value, ci, value, suppress_below)
            for key, value in zip(keys, noisy, strict=True)
        ]
    return EventRelease(
        aggregate=q.aggregate,
        group_by=q.group_by,
        groups=tuple(groups),
        epsilon_spent=mechanisms.spent,
        max_records_per_subject=q.max_records_per_subject,
        ci95_unit=unit,
        suppress_below=suppress_below,
    )


def _keys(q: EventQuery, frame: pl.DataFrame) -> list[str | None]:
    """The frame's categories, which must be exactly the query's public ones, in order."""
    if q.group_by is None:
        if frame.height != 1:
            raise InvalidEventQuery(f"an ungrouped exact answer has one row, not {frame.height}")
        return [None]
    found = frame[q.group_by].to_list() if q.group_by in frame.columns else None
    if found != list(q.categories):
        raise InvalidEventQuery(
            "the exact answer's groups are not the query's public categories in order; "
            "build it with exact_plan (a data-dependent key set would leak)"
        )
    return list(found)


def _means(
    q: EventQuery,
    mechanisms: _Mechanisms,
    keys: list[str | None],
    frame: pl.DataFrame,
    suppress_below: int | None,
) -> list[GroupValue]:
    """Noisy mean = mid + noisy sum of (x - mid) / noisy count, clamped to the bounds.

    With probability >= 95% both noises are within their 97.5% accuracies ``a_s`` and
    ``a_n``; then ``|mean - true| <= (a_s + r * a_n) / noisy_count`` (``r`` bounds
    ``|true - mid|``), an interval computed from released values only.
    """
    assert q.bounds is not None and mechanisms.count is not None
    sums, counts = mechanisms.primary, mechanisms.count
    assert isinstance(sums, _VectorLaplace)
    lo, hi = q.bounds
    mid = mechanisms.mid
    exact_counts = frame[COUNT].to_list()
    shifted = [s - mid * n for s, n in zip(frame[SUM].to_list(), exact_counts, strict=True)]
    noisy_sums, noisy_counts = sums(shifted), counts(exact_counts)
    a_s, a_n = sums.ci975, counts.ci975
    r = _mean_radius(q, mid)
    groups = []
    for key, noisy_sum, noisy_count in zip(keys, noisy_sums, noisy_counts, strict=True):
        if noisy_count >= 1:
            mean = min(max(mid + noisy_sum / noisy_count, lo), hi)
            ci = min((a_s + r * a_n) / noisy_count, float(hi - lo))
        else:  # nothing to divide by: the bounds' midpoint, honest about knowing nothing
            mean, ci = (lo + hi) / 2, (hi - lo) / 2
        groups.append(_suppressed(key, mean, ci, noisy_count, suppress_below))
    return groups


def _suppressed(
    key: str | None, value: float, ci: float, count: int, below: int | None
) -> GroupValue:
    if below is not None and count < below:
        return GroupValue(key, None, None, suppressed=True)
    return GroupValue(key, value, ci)
