"""The bound advisor: contribution bounds chosen from data, privately.

A domain owner has to pick ``max_records_per_period`` and each measure's ``clamp`` without
seeing raw per-person counts. :func:`advise` reads one UTC day of the product's offline
event files (``event_aggregates.scan_events``: every accepted event, counted or not) and
releases, through OpenDP only:

* the 0.9, 0.95 and 0.99 quantiles of **records per subject-day** (over the subjects with
  at least one record that day), from one discrete Laplace histogram of the counts over
  public candidates (one subject-day is one count: L1 sensitivity 1), read from the top
  (:func:`tail_quantiles`; why not OpenDP's exponential-mechanism quantile is said there);
* the 0.99 quantile of **each bounded measure** per record, the same way, each subject
  keeping its first ``k`` records of the day (``k``: the released 0.9 quantile of records,
  so most subjects keep all of theirs while the noise, which grows with ``k``, stays small;
  the records are the event-level quantile's, ``event_aggregates.exact_plan``), L1 ``k``;
* the 0.9, 0.95 and 0.99 quantiles of **each measure's total per subject-day** (the
  candidate ``max_sum_per_period``): one discrete Laplace histogram per measure of each
  subject-day's total over its first ``k`` records of the day (``k`` the suggested record
  bound), each value clamped to the suggested clamp (else the contract's), over a geometric
  grid up to ``k`` times the clamp's max; one subject-day is one total (L1 sensitivity 1).
  ``k`` and the clamp are earlier parts of the same release (adaptive sequential
  composition: the parts' epsilons add up);
* the **truncation share** of each candidate bound ``b`` (the reliable quantiles, below,
  and the contract's current bound): a discrete Laplace vector of ``kept(b) = sum min(n, b)`` for
  every candidate and for a cap ``C`` (twice the largest candidate), L1 sensitivity
  ``sum(b) + C`` per subject-day. The share is ``1 - kept(b) / kept(C)``: the records a
  bound of ``b`` would drop, relative to the records counted up to ``C`` per subject-day.
  Subject-days above ``C`` lose the same records from both, so this is a lower bound of
  the true share (exact when no subject-day exceeds ``C``).

The advisor's epsilon is one release of the product, paid from its daily total in the
period of the day it reads (a subject's day is charged by every release that reads it),
under the pseudo-class ``<domain>.<product>:bounds_advisor``, whose daily budget is the
product's **planning room**: its total less what its classes are allocated (at least the
product's ``reserve_per_day``, which no class may be allocated), so the advisor never takes
what a class may still spend that day. The ledger entry, with the
answer, is committed before :func:`advise` returns anything; asking again for the same day
and parameters returns the stored answer and spends nothing. Suggestion (post-processing):
``max_records_per_period`` = the 0.99 quantile (at most about 1% of subject-days are
truncated) when it is reliable (the 95% error of its noisy tail count within half the
subject-days expected above it: the true share above it is 0.5 to 1.5 times 1%), else
the contract's bound, raised to any reliable quantile above it (a tail the release cannot
resolve never lowers a bound: ``suggest``); each clamp = the measure's 0.99 quantile when
reliable (about 1% of the kept records are clamped); each ``max_sum_per_period`` = the
0.99 quantile of the measure's subject-day totals when reliable (about 1% of subject-days
give up part of their total), else the contract's cap by the same rule (no cap when it has
none: the record bound times the clamp stays the sum's bound). Noise grows with the
bound and bias falls with it: the shares say what each candidate costs in bias;
``planner.bound_options`` what each costs in noise.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import opendp.prelude as dp
import polars as pl

from dashboards_api.budget import from_micro, to_micro
from dashboards_api.errors import BudgetExhausted, InvalidParameters
from dashboards_api.event_aggregates import CONFIDENCE, VALUES, EventQuery, exact_plan
from dashboards_api.ledger import LedgerEntry, ReleaseLedger, period_of
from dashboards_api.mechanisms import finite_accuracy, vector_laplace
from dashboards_api.releases.commit import Sealed, Spend, commit_then_reveal
from domains.contract import DataProduct

dp.enable_features("contrib")

ADVISOR = "bounds_advisor"
RECORD_ALPHAS = (0.9, 0.95, 0.99)
"""Quantiles of records per subject-day released: the suggestion is the last."""
MEASURE_ALPHA = 0.99
"""The quantile of each measure per record released: the suggested clamp."""
DEFAULT_EPSILON = Decimal("1")
"""The advisor's epsilon per subject-day (pure DP) if none is given and the product's
planning room has that much: what one run costs (else the room)."""
SUM_ALPHAS = (0.9, 0.95, 0.99)
"""Quantiles of each measure's total per subject-day released: the suggested cap is the
last when reliable (``suggest``)."""
# Shares of the advisor's epsilon: the record quantiles (one histogram), the truncation
# vector, the measure quantiles and the subject-day totals (each split evenly over the
# measures); without measures the rest is rescaled.
_SHARES = {
    "records": Decimal("0.2"),
    "truncation": Decimal("0.35"),
    "measures": Decimal("0.25"),
    "sums": Decimal("0.2"),
}
RECORD_CANDIDATES: tuple[int, ...] = (
    *range(1, 30),
    *sorted({min(round(30 * 1.1**i), 10_000) for i in range(62)}),
)
"""Records-per-subject-day candidates: every count below 30, then steps of 10% to 10,000
(the histogram's bins: few bins keep the noise of a tail count small)."""
_MEASURE_CANDIDATES = 160  # geometric grid over the field's bounds


def advisor_class(domain: str, product: str) -> str:
    """The ledger's class id of ``domain.product``'s advisor (no query class has a colon)."""
    return f"{domain}.{product}:{ADVISOR}"


@dataclass(frozen=True)
class Candidate:
    """One candidate ``max_records_per_period`` and what it would drop (see the module
    docstring): ``dropped_share`` of the records, within ``ci95`` with 95% probability
    (both noisy coordinates within their 97.5% bounds); ``source`` says where it comes
    from (a quantile, the contract's current bound)."""

    bound: int
    dropped_share: float
    ci95: float
    source: str


@dataclass(frozen=True)
class MeasureAdvice:
    """The released quantile of one measure (``value``), the current clamp, the 95% error of
    the noisy count of records above a candidate (``error``, in records) and whether that
    is small enough for the quantile (``reliable``)."""

    measure: str
    alpha: float
    value: int | None
    current_clamp: tuple[float, float]
    error: float
    reliable: bool
    records_per_subject_day: int


@dataclass(frozen=True)
class SumCapAdvice:
    """The released quantiles of one measure's total per subject-day (``values``, by alpha),
    the 95% error of each one's noisy tail count (``errors``, in subject-days), which are
    ``reliable``, and what the totals were taken over: each subject-day's first
    ``records_per_subject_day`` records, each clamped to ``clamp``."""

    measure: str
    values: dict[str, int]
    errors: dict[str, float]
    reliable: dict[str, bool]
    clamp: tuple[float, float]
    records_per_subject_day: int


@dataclass(frozen=True)
class BoundsAdvice:
    """The advisor's released answer for one product and UTC day (JSON: ``to_dict``)."""

    product: str
    day: str
    epsilon: Decimal
    ledger_entry: int
    reused: bool
    record_quantiles: dict[str, int]
    record_errors: dict[str, float]
    subject_days: int
    reliable: dict[str, bool]
    candidates: list[Candidate]
    cap: int
    measures: list[MeasureAdvice]
    current: dict[str, Any]
    suggestion: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    sum_caps: list[SumCapAdvice] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the epsilon as a string."""
        body = asdict(self)
        body["epsilon"] = str(self.epsilon)
        return body

    @classmethod
    def from_entry(cls, entry: LedgerEntry, reused: bool) -> BoundsAdvice:
        """The advice stored with a ledger entry (what was released, never recomputed)."""
        body = dict(entry.answer)
        body.update(ledger_entry=entry.id, reused=reused, epsilon=Decimal(body["epsilon"]))
        body["candidates"] = [Candidate(**c) for c in body["candidates"]]
        body["measures"] = [
            MeasureAdvice(**{**m, "current_clamp": tuple(m["current_clamp"])})
            for m in body["measures"]
        ]
        body["sum_caps"] = [
            SumCapAdvice(**{**c, "clamp": tuple(c["clamp"])}) for c in body.get("sum_caps", [])
        ]
        return cls(**body)


def measures_of(product: DataProduct) -> list[str]:
    """The product's bounded numeric fields: the measures the processor sums and clamps."""
    return [f.name for f in product.fields if f.numeric and f.bounds is not None]


def measure_candidates(lo: float, hi: float, count: int = _MEASURE_CANDIDATES) -> list[int]:
    """Integer candidates over ``[lo, hi]``: 0 (when inside) and a geometric grid towards
    each end, so small and large clamps are both resolved to a few percent."""
    low, high = math.floor(lo), math.ceil(hi)
    points = {low, high}
    if low <= 0 <= high:
        points.add(0)
    for sign, end in ((1, high), (-1, -low)):
        if end >= 1:
            ratio = end ** (1 / count)
            points.update(sign * round(ratio**i) for i in range(count + 1))
    return sorted(p for p in points if low <= p <= high)


def subject_day_counts(events: pl.LazyFrame, product: DataProduct, day: date) -> pl.LazyFrame:
    """Records per subject on UTC ``day`` (column ``records``; subjects with at least one),
    from the product's event files. Events without a subject or a time are not counted."""
    start, end = _day_span(day)
    subject, when = product.subject_field, product.event_time
    return (
        events.select(pl.col(subject).alias("subject"), pl.col(when))
        .filter(
            pl.col("subject").is_not_null(),
            pl.col(when).is_not_null(),
            pl.col(when) >= start,
            pl.col(when) < end,
        )
        .group_by("subject")
        .agg(records=pl.len().cast(pl.Int64))
    )


def subject_day_totals(
    events: pl.LazyFrame,
    product: DataProduct,
    day: date,
    measure: str,
    records: int,
    clamp: tuple[float, float],
) -> pl.Series:
    """Per subject with a value of ``measure`` on UTC ``day``: the total of its first
    ``records`` values by event time (ties in storage order), each clamped to ``clamp``
    (rounded to an integer; NaN and missing values skipped). What the processor would count
    towards a per-day cap with those bounds (Int64)."""
    start, end = _day_span(day)
    subject, when = product.subject_field, product.event_time
    lo, hi = clamp
    value = pl.col(measure).cast(pl.Float64).fill_nan(None).clip(lo, hi).round()
    return (
        events.select(pl.col(subject).alias("subject"), pl.col(when), value.alias("value"))
        .filter(
            pl.col("subject").is_not_null(),
            pl.col("value").is_not_null(),
            pl.col(when) >= start,
            pl.col(when) < end,
        )
        .sort(when, maintain_order=True)
        .group_by("subject")
        .agg(pl.col("value").head(records).sum().cast(pl.Int64).alias("total"))
        .collect()["total"]
    )


def _day_span(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _split(epsilon: Decimal, measures: int) -> dict[str, Decimal]:
    """Each part's epsilon (quantized down: the parts never add up to more)."""
    shares = dict(_SHARES)
    if not measures:
        rest = shares.pop("measures") + shares.pop("sums")
        scale = 1 / (1 - rest)
        shares = {k: v * scale for k, v in shares.items()}
    q = Decimal("0.000001")
    out = {
        "record_quantiles": (epsilon * shares["records"]).quantize(q, rounding="ROUND_DOWN"),
        "truncation": (epsilon * shares["truncation"]).quantize(q, rounding="ROUND_DOWN"),
    }
    if measures:
        out["measure_quantile"] = (epsilon * shares["measures"] / measures).quantize(
            q, rounding="ROUND_DOWN"
        )
        out["sum_quantiles"] = (epsilon * shares["sums"] / measures).quantize(
            q, rounding="ROUND_DOWN"
        )
    if min(out.values()) <= 0:
        raise InvalidParameters(f"advisor epsilon {epsilon} is too small to split; use >= 0.001")
    return out


@dataclass(frozen=True)
class TailQuantiles:
    """Quantiles read from one noisy histogram (:func:`tail_quantiles`): per alpha the
    candidate, and the 95% error of the noisy count of values above it (in values:
    subject-days or records); ``total``: the noisy number of values; ``spent``: OpenDP's map
    of the histogram."""

    values: dict[float, int]
    errors: dict[float, float]
    total: int
    spent: Decimal

    def reliable(self, alpha: float) -> bool:
        """Whether the ``alpha`` quantile's tail count is known well: its 95% error within
        half the values expected above it, so the true share above the released quantile is
        within 0.5 to 1.5 times ``1 - alpha`` (with 95% probability)."""
        return self.errors[alpha] <= (1 - alpha) * self.total / 2


def tail_quantiles(
    values: pl.Series,
    candidates: Sequence[int],
    alphas: Sequence[float],
    epsilon: Decimal,
    per_subject: int,
) -> TailQuantiles:
    """DP quantiles of ``values``: OpenDP's discrete Laplace on their histogram over the
    ``candidates`` (bins ``(c[j-1], c[j]]``, one below the first, one above the last), L1
    sensitivity ``per_subject`` (the most values one subject-day adds); then, by
    post-processing, each alpha's quantile is the smallest candidate with a noisy count of
    values above it of at most ``(1 - alpha)`` times the noisy total.

    Not OpenDP's exponential-mechanism quantile (``make_private_quantile``): every candidate
    above the largest value ties on its score, so with a coarse grid (or a point mass at the
    largest value) it returns any of them (measured: 86,596 for a true 0.99 quantile of
    24,751). Counts from the top keep the tail's error at a few noise scales instead.
    """
    grid = np.asarray(candidates, dtype=np.int64)
    raw = values.cast(pl.Int64).drop_nulls().to_numpy()
    exact = np.bincount(np.searchsorted(grid, raw, side="left"), minlength=len(grid) + 1)
    measurement, scale = vector_laplace(per_subject, epsilon)
    noisy = np.asarray(measurement([int(v) for v in exact]), dtype=np.int64)
    total = max(int(noisy.sum()), 0)
    above = np.cumsum(noisy[::-1])[::-1]  # above[j]: noisy count in bins j and later
    chosen, errors = {}, {}
    for alpha in alphas:
        # values above candidate j are the bins after j: above[j + 1]
        fits = [j for j in range(len(grid)) if above[j + 1] <= (1 - alpha) * total]
        j = fits[0] if fits else len(grid) - 1
        chosen[alpha] = int(grid[j])
        # discrete Laplace has variance about 2 scale^2: a sum of n bins about 2 n scale^2
        errors[alpha] = 1.96 * scale * math.sqrt(2 * (len(grid) - j))
        finite_accuracy(errors[alpha], f"quantiles at epsilon {epsilon}")
    return TailQuantiles(chosen, errors, total, Decimal(measurement.map(per_subject)))


def _measure_query(
    product: DataProduct, measure: str, k: int, epsilon: Decimal
) -> EventQuery | None:
    spec = product.field(measure)
    if spec is None or spec.bounds is None:
        return None
    lo, hi = math.floor(spec.bounds.min), math.ceil(spec.bounds.max)
    return EventQuery(
        aggregate="quantile",
        subject=product.subject_field,
        time=product.event_time,
        max_records_per_subject=k,
        epsilon=epsilon,
        measure=measure,
        bounds=(lo, hi),  # the field's bounds, not the current clamp: the clamp is the question
        alpha=MEASURE_ALPHA,
        candidates=tuple(measure_candidates(lo, hi)),
    )


def suggest(
    values: dict[str, int], reliable: dict[str, bool], current: float | None
) -> float | None:
    """The suggested bound from released quantiles (by alpha; post-processing): the highest
    alpha's quantile when it is reliable; else ``current`` (None: no bound), raised to the
    highest reliable quantile above it. A tail the release cannot resolve never lowers a
    bound (that could truncate far more than 1% of subject-days), while a reliable lower
    quantile above the bound shows that more than its share is cut now."""
    top = max(values, key=float)
    if reliable[top]:
        return values[top]
    if current is None:
        return None
    return max([current, *(v for a, v in values.items() if reliable[a])])


def _truncation(
    counts: pl.Series, bounds: list[int], epsilon: Decimal
) -> tuple[list[tuple[float, float]], Decimal]:
    """Per bound but the last (the cap), the noisy dropped share relative to the cap and its
    95% half-width (module docstring), and the epsilon OpenDP maps the vector release to."""
    values = counts.cast(pl.Int64)
    exact = [int(values.clip(upper_bound=b).sum()) for b in bounds]
    sensitivity = sum(bounds)
    measurement, scale = vector_laplace(sensitivity, epsilon)
    noisy = [int(v) for v in measurement(exact)]
    accuracy = float(dp.discrete_laplacian_scale_to_accuracy(scale, (1 - CONFIDENCE) / 2))
    finite_accuracy(accuracy, f"truncation shares at epsilon {epsilon}")
    total = max(noisy[-1], 1)
    out = []
    for kept in noisy[:-1]:
        share = min(max(1.0 - kept / total, 0.0), 1.0)  # post-processing: a share is in [0, 1]
        out.append((share, 2 * accuracy / total))
    return out, Decimal(measurement.map(sensitivity))


def _version(product: DataProduct, day: date, epsilon: Decimal) -> str:
    """The ledger's data version of one advisor run: same day and parameters, same entry."""
    params = {
        "alphas": RECORD_ALPHAS,
        "measure_alpha": MEASURE_ALPHA,
        "sum_alphas": SUM_ALPHAS,
        "candidates": [RECORD_CANDIDATES[0], RECORD_CANDIDATES[-1], len(RECORD_CANDIDATES)],
        "contribution": product.contribution.model_dump(mode="json"),
        "epsilon": str(epsilon),
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return f"bounds:{day.isoformat()}:{digest}"


def advise(
    events: pl.LazyFrame,
    domain: str,
    product: DataProduct,
    day: date,
    ledger: ReleaseLedger,
    *,
    product_budget_micro: int | None,
    epsilon: Decimal | None = None,
    planning_budget_micro: int | None = None,
) -> BoundsAdvice:
    """Release the bound advice for ``product`` on UTC ``day`` (module docstring), paying
    ``epsilon`` (None: ``DEFAULT_EPSILON``, or the planning room when smaller) from the
    product's planning room ``planning_budget_micro`` (its daily total less its classes'
    allocations; None: the whole total) and its daily total ``product_budget_micro`` in
    ``day``'s period.

    Refuses (``InvalidParameters``) a product without a daily total or a non-positive
    epsilon; the ledger refuses (``BudgetExhausted``) when the planning room or the product's
    total has no room left for the day. Nothing is returned before the entry is committed.
    """
    if product_budget_micro is None:
        raise InvalidParameters(
            f"{domain}.{product.name} has no daily privacy total: declare budget_per_day for "
            "it (or a policy default) before spending epsilon on bound advice"
        )
    room = product_budget_micro if planning_budget_micro is None else planning_budget_micro
    if epsilon is None:
        epsilon = min(DEFAULT_EPSILON, Decimal(from_micro(max(room, 0))))
        if epsilon <= 0:
            raise BudgetExhausted(
                f"{domain}.{product.name} leaves no planning room: its classes are allocated "
                "its whole daily total; declare a reserve_per_day for the product (and lower "
                "a class's budget_per_day to fit it)"
            )
    if not isinstance(epsilon, Decimal) or not epsilon.is_finite() or epsilon <= 0:
        raise InvalidParameters(f"advisor epsilon must be a finite Decimal > 0, not {epsilon}")
    key, class_id = f"{domain}.{product.name}", advisor_class(domain, product.name)
    version = _version(product, day, epsilon)
    stored = ledger.find(class_id, version)
    if stored is not None:  # released before: the same answer again, for free
        return BoundsAdvice.from_entry(stored, reused=True)
    measures = [m for m in measures_of(product) if m in events.collect_schema()]
    parts = _split(epsilon, len(measures))
    # The ledger charges the declared parts (micro-exact); OpenDP's maps are at most them.
    charged = parts["record_quantiles"] + parts["truncation"]
    charged += len(measures) * parts.get("measure_quantile", Decimal(0))
    charged += len(measures) * parts.get("sum_quantiles", Decimal(0))
    cost = to_micro(charged)

    def draw() -> dict[str, Any]:
        """The advice's noisy answer, drawn only inside the commit that pays for it."""
        answer, mapped = _release(events, product, day, parts, measures)
        if mapped > charged:
            raise AssertionError(f"OpenDP maps the advice to {mapped}, above its {charged}")
        answer.update(product=key, epsilon=str(charged))
        return answer

    spend = Spend(
        class_id=class_id,
        period=period_of(_day_span(day)[0]),
        key=version,
        cost_micro=cost,
        budget_micro=room,
        product=key,
        product_budget_micro=product_budget_micro,
    )
    try:
        commit = commit_then_reveal(ledger, spend, Sealed(draw))
    except BudgetExhausted as exc:
        raise BudgetExhausted(
            f"{exc.detail}; the bound advisor needs {from_micro(cost)} of {key}'s planning "
            f"room on {day} ({from_micro(max(room, 0))} a day: the total less the classes' "
            "allocations): run it with a smaller --epsilon, for a day with room, or raise the "
            "product's reserve_per_day",
            **exc.extra,
        ) from exc
    return BoundsAdvice.from_entry(commit.entry, reused=commit.reused)


def _release(
    events: pl.LazyFrame,
    product: DataProduct,
    day: date,
    parts: dict[str, Decimal],
    measures: list[str],
) -> tuple[dict[str, Any], Decimal]:
    """The noisy answer (JSON) and the epsilon OpenDP maps its parts to, summed."""
    counts = subject_day_counts(events, product, day).collect()["records"]
    records = tail_quantiles(
        counts, RECORD_CANDIDATES, RECORD_ALPHAS, parts["record_quantiles"], per_subject=1
    )
    spent = records.spent
    ordered = [records.values[a] for a in RECORD_ALPHAS]  # increasing by construction
    quantiles = {str(a): v for a, v in zip(RECORD_ALPHAS, ordered, strict=True)}
    current = product.contribution.max_records_per_period
    subject_days = records.total
    reliable = {str(a): records.reliable(a) for a in RECORD_ALPHAS}
    # Candidates: the reliable quantiles and the contract's bound (an unreliable quantile
    # would only widen the truncation vector's noise, which grows with the candidates).
    sources: dict[int, list[str]] = {}
    for alpha, value in zip(RECORD_ALPHAS, ordered, strict=True):
        if reliable[str(alpha)]:
            sources.setdefault(value, []).append(f"q{alpha}")
    sources.setdefault(current, []).append("contract")
    bounds = sorted(sources)
    cap = 2 * bounds[-1]
    shares, truncation_spent = _truncation(counts, [*bounds, cap], parts["truncation"])
    spent += truncation_spent
    suggested = int(suggest(quantiles, reliable, current) or current)
    per_subject = ordered[0] if reliable[str(RECORD_ALPHAS[0])] else min(ordered[0], current)
    start, end = _day_span(day)
    measure_advice: list[dict[str, Any]] = []
    for measure in measures:
        q = _measure_query(product, measure, per_subject, parts["measure_quantile"])
        assert q is not None  # measures_of lists bounded fields only
        # each subject's first k records of the day, clamped to the field's bounds, NaN
        # dropped: the event-level quantile's exact part
        kept_values = exact_plan(events, q, start, end).collect()[VALUES][0]
        result = tail_quantiles(
            kept_values, q.candidates, (MEASURE_ALPHA,), q.epsilon, per_subject=per_subject
        )
        spent += result.spent
        clamp = product.clamp_of(measure)
        measure_advice.append(
            {
                "measure": measure,
                "alpha": MEASURE_ALPHA,
                "value": result.values[MEASURE_ALPHA],
                "current_clamp": [clamp.min, clamp.max],
                "error": result.errors[MEASURE_ALPHA],
                "reliable": result.reliable(MEASURE_ALPHA),
                "records_per_subject_day": per_subject,
            }
        )
    suggested_clamps = {
        m["measure"]: [m["current_clamp"][0], max(m["value"], m["current_clamp"][0])]
        for m in measure_advice
        if m["reliable"]
    }
    sum_caps: list[dict[str, Any]] = []
    for measure in measures:
        current_clamp = product.clamp_of(measure)
        lo, hi = suggested_clamps.get(measure, [current_clamp.min, current_clamp.max])
        totals = subject_day_totals(events, product, day, measure, suggested, (lo, hi))
        grid = measure_candidates(0, max(suggested * hi, 1))
        result = tail_quantiles(totals, grid, SUM_ALPHAS, parts["sum_quantiles"], per_subject=1)
        spent += result.spent
        sum_caps.append(
            {
                "measure": measure,
                "values": {str(a): result.values[a] for a in SUM_ALPHAS},
                "errors": {str(a): result.errors[a] for a in SUM_ALPHAS},
                "reliable": {str(a): result.reliable(a) for a in SUM_ALPHAS},
                "clamp": [lo, hi],
                "records_per_subject_day": suggested,
            }
        )
    suggested_caps: dict[str, float] = {}
    for cap_advice in sum_caps:
        now = product.sum_cap_of(cap_advice["measure"])
        day_cap = suggest(cap_advice["values"], cap_advice["reliable"], now)
        if day_cap is not None and cap_advice["clamp"][0] >= 0:  # caps bound non-negative sums
            # at least clamp.min and 1: a lower cap contradicts the clamp (the linter says so)
            low = max(math.ceil(cap_advice["clamp"][0]), 1)
            suggested_caps[cap_advice["measure"]] = max(day_cap, low)
    answer: dict[str, Any] = {
        "product": product.name,
        "day": day.isoformat(),
        "record_quantiles": quantiles,
        "record_errors": {str(a): records.errors[a] for a in RECORD_ALPHAS},
        "subject_days": subject_days,
        "reliable": reliable,
        "candidates": [
            {"bound": b, "dropped_share": s, "ci95": c, "source": ", ".join(sources[b])}
            for b, (s, c) in zip(bounds, shares, strict=True)
        ],
        "cap": cap,
        "measures": measure_advice,
        "current": {
            "max_records_per_period": current,
            "max_windows_per_period": product.contribution.max_windows_per_period,
            "clamp": {m: [product.clamp_of(m).min, product.clamp_of(m).max] for m in measures},
            "max_sum_per_period": dict(product.contribution.max_sum_per_period),
        },
        "suggestion": {
            "max_records_per_period": suggested,
            "clamp": suggested_clamps,
            "max_sum_per_period": suggested_caps,
        },
        "sum_caps": sum_caps,
        "notes": [
            "quantiles are over the subjects with at least one record that day",
            f"dropped shares are relative to the records counted up to {cap} per subject-day "
            "(a lower bound of the true share when some subject-day has more)",
            "max_windows_per_period is not advised: it should be at least the record bound "
            "unless a product's windows are rare",
            "the suggestion is the 0.99 quantile when reliable (the 95% error of its tail count "
            "within half the subject-days above it); else the contract's bound, raised to a "
            "reliable quantile above it, never lowered",
            "max_sum_per_period: the same rule over each measure's total per subject-day "
            "(first k records, each clamped); no cap when the contract has none and the 0.99 "
            "quantile is not reliable",
        ],
    }
    return answer, spent
