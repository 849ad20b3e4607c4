"""The budget planner: what a daily class costs and how precise it will be, before it runs.

A daily class (``release: daily``) pays its ``epsilon_per_release`` once per UTC day; every
resolution is then post-processing of one :class:`~dashboards_api.hierarchy.DailyHierarchy`
per stream it reads. So its cost per day is fixed, and its expected 95% half-width at each
resolution is a function of public parameters only (window length, epsilon, the contract's
per-subject per-day contribution bound): :func:`dashboards_api.hierarchy.expected_half_width`.
The relative half-width also needs the statistic's typical size. That comes from values the
API already RELEASED (noisy, already paid for: reading them again is post-processing), never
from raw counts; else from an operator's explicit ``volume_per_day``; else it is unknown and
only absolute half-widths are given.

When a class's declared accuracy is not met, :func:`plan` says what would meet it: the finest
coarser resolution that does, the smallest epsilon that does (and whether the product's daily
total still has room for it), and the largest contribution bound that does at the class's
epsilon. The registry refuses such a class (``accuracy_unreachable``) with this suggestion.

:func:`bound_options` sets the bias of each contribution bound the bound advisor
(``dashboards_api.bounds``) proposes, its released truncation share, against its noise: the
class's expected half-width per resolution at that bound (public parameters only).

:func:`mechanism_comparison` measures the alternatives the hierarchy was chosen over (the
binary tree over the day's windows; independent noise per release; zCDP Gaussian noise at
the same daily (epsilon, delta)): the table in ``docs/continual-release.md`` comes from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

import opendp.prelude as dp

from dashboards_api.bounds import BoundsAdvice
from dashboards_api.budget import from_micro, to_micro
from dashboards_api.continual import ci95_half_width, dyadic_nodes, levels, tree_scale
from dashboards_api.errors import AccuracyUnreachable, InvalidParameters
from dashboards_api.hierarchy import (
    DAY_SECONDS,
    RESOLUTIONS,
    VERSION,
    cover_sizes,
    expected_half_width,
    half_width_profile,
    level_widths,
)
from dashboards_api.ledger import LedgerEntry
from dashboards_api.query_classes import QueryClass
from dashboards_api.sensitivity import NEW_HOUR, daily_sensitivities, split_epsilon
from domains.contract import DataProduct, DomainContract

dp.enable_features("contrib")

HOUR = 3_600
_MAX_MICRO = 100 * 1_000_000
"""The largest class epsilon the planner searches (the API's cap on one release, 100)."""

# What one value at each resolution covers, in seconds (None: the window; today: the whole
# day at the end of the day, when its half-width is largest).
_SPAN = {"1m": 60, "1h": HOUR, "today": DAY_SECONDS, "24h": DAY_SECONDS}


@dataclass(frozen=True)
class Structure:
    """One hierarchy a class pays for: the stream it reads, its window, epsilon and Δ, and
    which of the class's resolutions it answers (class resolution -> structure resolution)."""

    stream: str
    window_seconds: int
    epsilon: Decimal
    sensitivity: int
    answers: dict[str, str]


@dataclass(frozen=True)
class ResolutionPlan:
    """The expected precision of a class at one resolution.

    ``half_width``: the 95% half-width at the worst time of the day (``today`` and ``24h``
    sum the most nodes just before midnight); ``typical_value``: the value at the typical
    volume (spread evenly over the day), None when the volume is unknown; ``relative``:
    ``half_width / typical_value``; ``meets``: whether it is within the class's declared
    accuracy (None: no accuracy declared or volume unknown).
    """

    resolution: str
    half_width: int
    typical_value: float | None
    relative: float | None
    meets: bool | None


@dataclass(frozen=True)
class Suggestion:
    """What would meet a declared accuracy the class does not meet.

    ``coarser``: the finest coarser resolution that meets it at the class's epsilon;
    ``epsilon``: the smallest class epsilon that meets it at the declared resolution, and
    ``epsilon_fits``: whether the product's daily total has room for it; ``sensitivity``:
    the largest per-subject per-day contribution bound (Δ) that meets it at the class's
    epsilon, and ``max_records_per_period``: the contract bound that gives it (None when no
    bound of at least 1 record would).
    """

    coarser: str | None
    epsilon: Decimal | None
    epsilon_fits: bool | None
    sensitivity: int | None
    max_records_per_period: int | None
    text: str


@dataclass(frozen=True)
class Plan:
    """The planner's answer for one daily class (see the module docstring)."""

    class_id: str
    product: str
    epsilon_per_day: Decimal
    product_total: Decimal | None
    product_room: Decimal | None
    volume_per_day: float | None
    volume_source: str
    structures: list[Structure]
    rows: list[ResolutionPlan]
    accuracy: dict[str, Any] | None
    meets: bool | None
    suggestion: Suggestion | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: decimals as strings."""
        body = asdict(self)
        body["epsilon_per_day"] = str(self.epsilon_per_day)
        for key in ("product_total", "product_room"):
            body[key] = None if body[key] is None else str(body[key])
        for structure in body["structures"]:
            structure["epsilon"] = str(structure["epsilon"])
        if self.suggestion is not None and self.suggestion.epsilon is not None:
            body["suggestion"]["epsilon"] = str(self.suggestion.epsilon)
        return body


def structures_of(qc: QueryClass, product: DataProduct, window_seconds: int) -> list[Structure]:
    """The hierarchies a daily ``qc`` pays for, as the release path builds them: one per
    stream of ``sensitivity.daily_sensitivities`` with its share of the class's epsilon (a
    distinct count's hour stream has hour-long windows and answers ``1h``)."""
    if qc.release != "daily" or qc.derived_mean:
        raise ValueError(
            f"class {qc.id!r}: the planner is for daily classes that pay for a structure "
            "(a daily mean costs nothing: plan its numerator and denominator)"
        )
    deltas = daily_sensitivities(qc, product)
    epsilons = split_epsilon(qc, list(deltas))
    answered = qc.answered_resolutions
    built = []
    for stream, delta in deltas.items():
        if stream == NEW_HOUR:
            answers = {"1h": "window"} if "1h" in answered else {}
            window = HOUR
        elif qc.aggregate == "count_distinct_subjects":
            answers = {r: r for r in answered if r != "1h"}
            window = window_seconds
        else:
            answers = {r: r for r in answered}
            window = window_seconds
        built.append(Structure(stream, window, epsilons[stream], delta, answers))
    return built


def _half_widths(structures: list[Structure]) -> dict[str, int]:
    """Each answered resolution's worst-time 95% half-width."""
    return {
        resolution: expected_half_width(inner, s.window_seconds, s.epsilon, s.sensitivity)
        for s in structures
        for resolution, inner in s.answers.items()
    }


def _typical(resolution: str, window_seconds: int, volume_per_day: float) -> float:
    """The value at ``resolution`` when ``volume_per_day`` is spread evenly over the day."""
    return volume_per_day * _SPAN.get(resolution, window_seconds) / DAY_SECONDS


def _meets(half_width: int, typical: float | None, relative: float) -> bool | None:
    if typical is None:
        return None
    return typical > 0 and half_width <= relative * typical


def volume_from_releases(
    qc: QueryClass, entries: Iterable[LedgerEntry], classes: dict[str, QueryClass]
) -> tuple[float, str] | None:
    """The product's typical volume per day of ``qc``'s statistic, from RELEASED values of a
    daily class of the same product, aggregate and measure (newest first: a ``24h`` value,
    else an ``1h`` value times 24, else a ``today`` value over at least an hour scaled to
    the day). None when no such value was released. Noisy values only: post-processing."""
    preference = {"24h": 0, "1h": 1, "today": 2}
    best: tuple[int, float, str] | None = None
    for entry in entries:
        other = classes.get(entry.class_id)
        if (
            other is None
            or other.release != "daily"
            or (other.domain, other.product, other.aggregate, other.measure)
            != (qc.domain, qc.product, qc.aggregate, qc.measure)
        ):
            continue
        answer = entry.answer
        resolution = answer.get("resolution")
        value, span = answer.get("value"), answer.get("span")
        if resolution not in preference or value is None or not isinstance(span, dict):
            continue
        try:
            seconds = (
                datetime.fromisoformat(span["end"]) - datetime.fromisoformat(span["start"])
            ).total_seconds()
        except (KeyError, TypeError, ValueError):
            continue
        if seconds < HOUR:
            continue
        per_day = float(value) * DAY_SECONDS / seconds
        source = (
            f"released {resolution} value of {entry.class_id} "
            f"(ledger entry {entry.id}, {span['end']})"
        )
        rank = preference[str(resolution)]
        if best is None or rank < best[0]:
            best = (rank, max(per_day, 0.0), source)
        if rank == 0:
            break
    return None if best is None else (best[1], best[2])


def _with_epsilon(qc: QueryClass, micro: int) -> QueryClass:
    epsilon = Decimal(from_micro(micro))
    return qc.model_copy(update={"epsilon_per_release": epsilon, "budget_per_day": epsilon})


def _smallest_epsilon(
    qc: QueryClass, product: DataProduct, window_seconds: int, resolution: str, target: float
) -> Decimal | None:
    """The smallest class epsilon (micro-exact) whose half-width at ``resolution`` is at most
    ``target``, or None when even epsilon 100 is not enough (the half-width only falls as
    epsilon grows: bisection)."""

    def ok(micro: int) -> bool:
        widths = _half_widths(structures_of(_with_epsilon(qc, micro), product, window_seconds))
        return widths[resolution] <= target

    low, high = 0, _MAX_MICRO
    if not ok(high):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if ok(middle):
            high = middle
        else:
            low = middle
    return Decimal(from_micro(high))


def _largest_sensitivity(structure: Structure, inner: str, target: float) -> int | None:
    """The largest Δ whose half-width at ``inner`` is at most ``target`` (None: not even 1)."""

    def ok(delta: int) -> bool:
        return (
            expected_half_width(inner, structure.window_seconds, structure.epsilon, delta) <= target
        )

    if not ok(1):
        return None
    low, high = 1, structure.sensitivity
    while high - low > 1:
        middle = (low + high) // 2
        if ok(middle):
            low = middle
        else:
            high = middle
    return high if ok(high) else low


def _records_for(qc: QueryClass, product: DataProduct, delta: int) -> int | None:
    """The contract's max_records_per_period that gives a sensitivity of at most ``delta``."""
    current = product.contribution.max_records_per_period
    for records in range(current, 0, -1):
        bounds = product.contribution.model_copy(update={"max_records_per_period": records})
        changed = product.model_copy(update={"contribution": bounds})
        if max(daily_sensitivities(qc, changed).values()) <= delta:
            return records
    return None


def plan(
    qc: QueryClass,
    product: DataProduct,
    volume: tuple[float, str] | None,
    *,
    window_seconds: int,
    product_total_micro: int | None = None,
    allocated_micro: int = 0,
) -> Plan:
    """The plan of a daily ``qc`` of ``product`` (its contract).

    ``volume``: (typical statistic per day, where it comes from), from
    :func:`volume_from_releases` or an explicit argument; None: unknown. ``window_seconds``:
    the stream window. ``product_total_micro``: the product's daily total; ``allocated_micro``:
    what the product's OTHER classes take of it per day (their budget_per_day), so the room
    for this class is the difference.
    """
    structures = structures_of(qc, product, window_seconds)
    widths = _half_widths(structures)
    accuracy = qc.accuracy
    volume_per_day = None if volume is None else volume[0]
    rows = []
    for resolution in qc.answered_resolutions:
        typical = (
            None if volume_per_day is None else _typical(resolution, window_seconds, volume_per_day)
        )
        relative = widths[resolution] / typical if typical else None
        meets = None
        if accuracy is not None:
            meets = _meets(widths[resolution], typical, accuracy.relative)
        rows.append(ResolutionPlan(resolution, widths[resolution], typical, relative, meets))
    room = None if product_total_micro is None else product_total_micro - allocated_micro
    notes = []
    if volume is None:
        notes.append(
            "typical volume unknown (nothing released yet and no --volume-per-day): only "
            "absolute half-widths; the declared accuracy is not checked"
        )
    if qc.aggregate == "count_distinct_subjects":
        notes.append(
            "distinct subjects per hour are estimated as the day's / 24 (a lower bound: each "
            "subject of the day is new to at least one hour), so relative widths are upper bounds"
        )
    met: bool | None = None
    suggestion = None
    if accuracy is not None and volume_per_day is not None:
        row = next(r for r in rows if r.resolution == accuracy.resolution)
        met = row.meets
        if not met:
            suggestion = _suggest(qc, product, window_seconds, rows, structures, room)
    return Plan(
        class_id=qc.id,
        product=f"{qc.domain}.{qc.product}",
        epsilon_per_day=qc.epsilon_per_release,
        product_total=None
        if product_total_micro is None
        else Decimal(from_micro(product_total_micro)),
        product_room=None if room is None else Decimal(from_micro(max(room, 0))),
        volume_per_day=volume_per_day,
        volume_source="unknown" if volume is None else volume[1],
        structures=structures,
        rows=rows,
        accuracy=None if accuracy is None else accuracy.model_dump(),
        meets=met,
        suggestion=suggestion,
        notes=notes,
    )


def _suggest(
    qc: QueryClass,
    product: DataProduct,
    window_seconds: int,
    rows: list[ResolutionPlan],
    structures: list[Structure],
    room: int | None,
) -> Suggestion:
    """What would meet ``qc``'s declared accuracy (see :class:`Suggestion`)."""
    assert qc.accuracy is not None
    relative, resolution = qc.accuracy.relative, qc.accuracy.resolution
    target_row = next(r for r in rows if r.resolution == resolution)
    assert target_row.typical_value is not None
    target = relative * target_row.typical_value
    order = RESOLUTIONS.index(resolution)
    coarser = next(
        (r.resolution for r in rows if RESOLUTIONS.index(r.resolution) > order and r.meets),
        None,
    )
    epsilon = _smallest_epsilon(qc, product, window_seconds, resolution, target)
    fits = None if epsilon is None or room is None else to_micro(epsilon) <= room
    structure = next(s for s in structures if resolution in s.answers)
    delta = _largest_sensitivity(structure, structure.answers[resolution], target)
    records = None
    if delta is not None and qc.aggregate in ("count_records", "bounded_sum"):
        records = _records_for(qc, product, delta)
    parts = [
        f"{resolution} is expected within ±{target_row.half_width} "
        f"({target_row.relative:.1%} of {target_row.typical_value:,.0f}), not {relative:.1%}"
    ]
    if coarser is not None:
        parts.append(f"resolution {coarser} meets it at epsilon {qc.epsilon_per_release}")
    if epsilon is None:
        parts.append("no epsilon up to 100 a day meets it")
    else:
        room_text = "" if room is None else f" (the product has {from_micro(max(room, 0))} left)"
        verb = "fits" if fits else "does not fit" if fits is not None else "would be needed"
        parts.append(f"epsilon {epsilon} a day would meet it; it {verb}{room_text}")
    if delta is not None and delta < structure.sensitivity:
        bound = f"a contribution bound of {delta} (now {structure.sensitivity})"
        if records is not None:
            bound += f", e.g. max_records_per_period {records}"
        elif qc.aggregate == "bounded_sum":
            most = product.contribution.max_records_per_period
            bound += (
                f", e.g. a clamp of at most {delta // most} per record at {most} records, "
                f"or max_sum_per_period {delta}"
            )
        parts.append(f"{bound} would meet it, at the cost of truncating more")
    return Suggestion(coarser, epsilon, fits, delta, records, "; ".join(parts))


def plan_in_context(
    qc: QueryClass,
    contracts: dict[str, DomainContract],
    classes: dict[str, QueryClass],
    product_total_micro: int | None,
    entries: Iterable[LedgerEntry],
    window_seconds: int,
    volume_per_day: float | None = None,
    reserve_micro: int = 0,
) -> Plan:
    """:func:`plan` with its inputs gathered: ``qc``'s product contract, the room its
    product's daily total leaves next to the product's other ``classes`` and its planning
    reserve ``reserve_micro`` (which no class may be allocated), and the typical volume from
    released values in ``entries`` (else ``volume_per_day``, else unknown)."""
    contract = contracts.get(qc.domain)
    product = None if contract is None else contract.product(qc.product)
    if product is None:
        raise InvalidParameters(f"class {qc.id!r}: no data product {qc.domain}.{qc.product}")
    volume = volume_from_releases(qc, entries, classes)
    if volume is None and volume_per_day is not None:
        volume = (float(volume_per_day), "given volume_per_day (no released value yet)")
    allocated = reserve_micro + sum(
        other.budget_micro
        for other in classes.values()
        if (other.domain, other.product) == (qc.domain, qc.product) and other.id != qc.id
    )
    try:
        return plan(
            qc,
            product,
            volume,
            window_seconds=window_seconds,
            product_total_micro=product_total_micro,
            allocated_micro=allocated,
        )
    except ValueError as exc:
        raise InvalidParameters(str(exc)) from exc


def check_accuracy(the_plan: Plan) -> None:
    """Refuse (``accuracy_unreachable``) a class whose declared accuracy its plan does not
    meet; a plan with an unknown volume, or without an accuracy, passes."""
    if the_plan.meets is False:
        assert the_plan.suggestion is not None
        raise AccuracyUnreachable(
            f"class {the_plan.class_id!r} cannot meet its declared accuracy at epsilon "
            f"{the_plan.epsilon_per_day} a day: {the_plan.suggestion.text}",
            suggestion=the_plan.to_dict()["suggestion"],
            plan=the_plan.to_dict(),
        )


@dataclass(frozen=True)
class BoundOption:
    """One candidate ``max_records_per_period`` for a class: its bias (the share of records
    it drops, released by the bound advisor, within ``dropped_ci95``) and its noise (the
    class's expected 95% half-width per resolution with that bound in the contract)."""

    bound: int
    source: str
    dropped_share: float
    dropped_ci95: float
    half_widths: dict[str, int]


def bound_options(
    advice: BoundsAdvice, qc: QueryClass, product: DataProduct, window_seconds: int
) -> list[BoundOption]:
    """Each of ``advice``'s candidate bounds for daily ``qc`` of ``product`` (post-processing
    of the advice; nothing is drawn or spent). The window bound is kept as the contract has
    it; the record bound is the candidate."""
    options = []
    for candidate in advice.candidates:
        bounds = product.contribution.model_copy(update={"max_records_per_period": candidate.bound})
        changed = product.model_copy(update={"contribution": bounds})
        widths = _half_widths(structures_of(qc, changed, window_seconds))
        options.append(
            BoundOption(
                candidate.bound,
                candidate.source,
                candidate.dropped_share,
                candidate.ci95,
                {r: widths[r] for r in qc.answered_resolutions},
            )
        )
    return options


# --- the measured comparison (docs/continual-release.md) ---------------------------------


@cache
def rho_for(epsilon: float, delta: float) -> float:
    """The zCDP ``rho`` whose (epsilon, delta)-DP conversion by OpenDP
    (``make_zCDP_to_approxDP``, the tight conversion) is ``epsilon`` at ``delta``."""

    def epsilon_at(scale: float) -> float:
        gaussian = dp.m.make_gaussian(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale)
        profile = dp.c.make_zCDP_to_approxDP(gaussian).map(1)
        return float(profile.epsilon(delta))

    low, high = 1e-3, 1e4  # noise scales: epsilon falls as the scale grows
    for _ in range(200):
        middle = math.sqrt(low * high)
        if epsilon_at(middle) > epsilon:
            low = middle
        else:
            high = middle
    return 1.0 / (2.0 * high * high)


def _tree_range_nodes(a: int, b: int) -> int:
    """Noisy nodes in the tree's range (a, b] as a difference of prefixes: the nodes of
    ``b``'s and ``a``'s decompositions that do not cancel."""
    return len(set(dyadic_nodes(b)) ^ set(dyadic_nodes(a)))


@cache
def _node_counts(window_seconds: int) -> dict[str, dict[str, list[int]]]:
    """Per mechanism and resolution, the nodes summed at every window end of the day."""
    horizon = DAY_SECONDS // window_seconds
    per = {"1m": 60 // window_seconds, "1h": HOUR // window_seconds}
    counts: dict[str, dict[str, list[int]]] = {"hierarchy": {}, "tree": {}}
    for resolution in RESOLUTIONS:
        if resolution in per and per[resolution] < 1:
            continue
        hierarchy, tree = [], []
        for t in range(1, horizon + 1):
            seconds = t * window_seconds
            hierarchy.append(sum(cover_sizes(resolution, window_seconds, seconds)))
            if resolution == "window":
                tree.append(_tree_range_nodes(t - 1, t))
            elif resolution in per:
                end = t - t % per[resolution]
                tree.append(_tree_range_nodes(end - per[resolution], end) if end else 0)
            elif resolution == "today":
                tree.append(len(dyadic_nodes(t)))
            else:  # 24h: today's prefix plus yesterday's total minus its prefix at t
                rest = _tree_range_nodes(t, horizon) if t < horizon else 0
                tree.append(len(dyadic_nodes(t)) + rest)
        counts["hierarchy"][resolution] = hierarchy
        counts["tree"][resolution] = [n for n in tree if n > 0]
    return counts


_RELEASES_PER_DAY = {"1m": 1440, "1h": 24}


def mechanism_comparison(
    window_seconds: int, epsilon: Decimal, sensitivity: int, delta: float = 1e-6
) -> list[dict[str, Any]]:
    """Per resolution, the 95% half-widths (mean over the day's window ends, and worst) of:
    the daily hierarchy (and its version 1, uniform over four levels); the binary tree over
    the day's windows (ranges as differences of prefixes); independent noise per release (the
    day's epsilon split over the releases of that one resolution); and the same three with
    Gaussian noise at the zCDP ``rho`` whose OpenDP (epsilon, delta) conversion is the same
    daily epsilon (the hierarchy's Gaussian uniform over its levels). Discrete Laplace widths
    are exact quantiles; Gaussian ones ``1.96 * sigma * sqrt(nodes)``."""
    eps = float(epsilon)
    rho = rho_for(eps, delta)
    hierarchy_levels = len(level_widths(window_seconds))
    horizon = DAY_SECONDS // window_seconds
    tree_levels = levels(horizon)
    t_scale = tree_scale(horizon, epsilon, sensitivity)
    h_sigma = sensitivity * math.sqrt(hierarchy_levels / (2 * rho))
    t_sigma = sensitivity * math.sqrt(tree_levels / (2 * rho))
    rows = []
    for resolution, by_t in _node_counts(window_seconds)["hierarchy"].items():
        tree_counts = _node_counts(window_seconds)["tree"][resolution]
        releases = _RELEASES_PER_DAY.get(resolution, horizon)
        naive_scale = releases * sensitivity / eps
        naive_sigma = sensitivity * math.sqrt(releases / (2 * rho))

        def laplace(scale: float, counts: list[int]) -> tuple[int, int]:
            widths = [ci95_half_width(scale, n) for n in counts]
            return round(sum(widths) / len(widths)), int(max(widths))

        def gaussian(sigma: float, counts: list[int]) -> tuple[int, int]:
            widths = [1.959964 * sigma * math.sqrt(n) for n in counts]
            return round(sum(widths) / len(widths)), round(max(widths))

        rows.append(
            {
                "resolution": resolution,
                "hierarchy": half_width_profile(
                    resolution, window_seconds, epsilon, sensitivity, VERSION
                ),
                "hierarchy_v1": half_width_profile(
                    resolution, window_seconds, epsilon, sensitivity, 1
                ),
                "tree": laplace(t_scale, tree_counts),
                "independent": laplace(naive_scale, [1]),
                "hierarchy_gaussian": gaussian(h_sigma, by_t),
                "tree_gaussian": gaussian(t_sigma, tree_counts),
                "independent_gaussian": gaussian(naive_sigma, [1]),
            }
        )
    return rows
