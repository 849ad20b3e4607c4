"""Utility of the daily releases over consecutive days of realistic demo traffic (issue 19,
item 9).

``BENCH_UTILITY_DAYS`` (default 3) consecutive UTC days of event time at the demo generator's
traffic (its default people pool, activity tail, product shares and rate:
``streams.generator``; the same people every day, other event times and draws) are replayed,
compressed in wall time, in layers, each real code and each reported as run or not in the JSON
(``layers``):

1. **processor**: the day's ``shop.orders`` events (``EventGenerator``, event times uniform
   over the day) go through the real stream processing path, ``ProductPipeline.route`` and
   ``drain`` (contract transform, tokenisation, consent, per-subject per-day bounds of the
   shipped contract, event-time windows closed by the watermark), partitioned by the Kafka
   partitioner as the ingest topic would be. No broker and no Faust worker: the pure path
   those workers run per record. The window rows are the ones ``window_records`` writes to
   the feature store; the exact (bounded) truth of every span is summed from them.
2. **dp**: every shipped ``release: daily`` class of ``shop.orders`` gets each day's
   ``DailyHierarchy`` per stream (the API's sensitivities, epsilon split and hour structure:
   ``dashboards_api.sensitivity``), yesterday's as ``previous``, and every tile is read at
   every resolution (``read_times``: window at every window end, 1m and 1h at every minute
   end, today and 24h once a minute; ``24h`` from the second day). Values are clamped to the
   public bounds as the API does. In the same run, on the same days, the same for the
   structure's version 1 (uniform over four levels with the day: the baseline), so the
   allocation's gain is measured, with coverage and its Wilson interval (72 independent
   hours over 3 days).
3. **api** (when the API answers daily classes; the first day): the FastAPI app in-process
   with the shipped classes, a real sqlite ledger and an injected clock, reading the
   processor's window rows through the ``WindowSource`` seam, queried at every resolution
   once per ``BENCH_UTILITY_API_EVERY`` simulated seconds (default 600); the user-level
   epsilon per subject per product is read back from its ledger.

In the same run, for comparison: (a) the per-window design shipped before issue 19 (epsilon 1
per 10-second release, 100 releases a day per class, the old per-window bound of 20 orders
and the contract bound of 100,000 cents), (b) independent per-release noise at the same daily
epsilon per class (split evenly over the resolutions, then over each resolution's releases
of the day), both on the first day. The truncation bias (events and revenue the per-day
bounds drop) is measured on the first day's replay and set against the generator's
expectation (``expected_truncation``).

**advisor**: the replay's accepted product events are written as the offline store writes
them (``append_part`` of ``event_table``, one part per 20,000 events), and the bound advisor
(``dashboards_api.bounds``) runs on them with a fresh sqlite ledger at its default epsilon,
paid from the product's total. For each of its candidate bounds (its quantiles and the
contract's bound) the exact bias is computed from the same events (each subject's first
``b`` records of the day, amounts clamped to the suggested or the current clamp: what the
processor's record bound keeps when the window bound does not bind first) and set against
the advisor's released share, with the noise each bound gives the shipped daily classes
(``planner.bound_options``).

**today so far** (``today_so_far``; alone: ``python -m bench.utility today``, which writes
bench/results/utility_today.json): on each shape's first replayed day, ``BENCH_UTILITY_STUDY_REPS``
independent draws of every node of the day by the levels' own mechanisms, 'today' read once a
minute by the shipped cover and by Honaker's least-squares (bottom-up) reading on the same
draws, and the minute-aligned alternative: the day's median relative error against the bounded
truth (the DP noise) and the raw truth (plus truncation), with intervals over the independent
replications; and the coverage of the stated 95% interval over
``BENCH_UTILITY_COVERAGE_REPS`` independent replications of the day's releases, one read
each, with a Clopper-Pearson interval (a day's 'today' / '24h' values share nodes, so no
binomial interval is stated for them above).

Traffic shapes: ``demo`` (the defaults) and a second shape with fewer people and a heavier
tail, to show the figures are not tuned to one. ``BENCH_UTILITY_HOURS`` (default 24) shortens
the replayed day (a day shorter than 24 h replays one day only); the JSON says so. Writes
bench/results/utility.json; last line ``RESULT {json}``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import opendp.prelude as dp
import polars as pl

from bench.dp_baselines import discrete_laplace_variance
from dashboards_api import daily
from dashboards_api.bounds import advise, advisor_class
from dashboards_api.continual import MemoryNodeStore
from dashboards_api.errors import ResolutionUnavailable
from dashboards_api.event_aggregates import scan_events
from dashboards_api.hierarchy import (
    VERSION,
    DailyHierarchy,
    level_epsilons,
    level_widths,
    mean_level_counts,
    mixed_half_width,
)
from dashboards_api.ledger import SqliteLedger
from dashboards_api.mechanisms import laplace_within, vector_laplace
from dashboards_api.planner import bound_options
from dashboards_api.query_classes import QueryClass, load_product_budgets, load_query_classes
from dashboards_api.sensitivity import (
    EVENTS,
    NEW_HOUR,
    NEW_PERIOD,
    SUM,
    daily_sensitivities,
    split_epsilon,
)
from domains.contract import DataProduct
from domains.registry import load_contracts
from feature_repo.events import event_schema, event_table
from feature_repo.names import (
    CONTRIBUTION_BOUND,
    MAX_RECORDS_PER_PERIOD,
    MAX_WINDOWS_PER_PERIOD,
    NEW_SUBJECTS_HOUR,
    NEW_SUBJECTS_PERIOD,
    PARTITION_KEY,
    TRUNCATED_EVENTS,
    WINDOW_COMPLETE,
    WINDOW_KEY,
    sum_cap_feature,
    sum_feature,
)
from feature_repo.offline import append_part
from infra.settings import GeneratorSettings
from streams.generator import (
    EventGenerator,
    events_per_day,
    expected_truncation,
    make_people,
)
from streams.keys import derive_domain_key
from streams.pipeline import build_pipelines, partition_for
from streams.pseudonymise import Tokeniser
from streams.settings import KafkaSettings, StreamSettings
from streams.transform import Accepted

dp.enable_features("contrib")

RESULTS = Path(__file__).with_name("results") / "utility.json"
DOMAIN, PRODUCT, MEASURE = "shop", "orders", "amount_cents"
DAY = 86_400
HOUR = 3_600
DAY_START = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())  # a fixed UTC day, replayed
HOURS = int(os.environ.get("BENCH_UTILITY_HOURS", "24"))
SECOND_HOURS = int(os.environ.get("BENCH_UTILITY_SECOND_HOURS", "24"))
# Consecutive UTC days replayed: the 24h tile needs yesterday's structure, and the hourly
# coverage wants at least 70 independent hours (3 days: 72).
DAYS = int(os.environ.get("BENCH_UTILITY_DAYS", "3"))
SHAPES = os.environ.get("BENCH_UTILITY_SHAPES", "demo,fewer_people_heavier_tail").split(",")
# Targets of issue 19 at the demo traffic: median relative error per (tile, resolution).
TARGETS = {
    ("order_count", "1h"): 0.05,
    ("distinct_customers", "1h"): 0.05,
    ("revenue_cents", "1h"): 0.10,
    ("order_count", "today"): 0.01,
    ("distinct_customers", "today"): 0.01,
    ("revenue_cents", "today"): 0.01,
}
# The per-window design shipped before issue 19 (for comparison (a)).
OLD_EPSILON = Decimal(1)
OLD_RELEASES_PER_DAY = 100  # budget_per_day 100 at epsilon 1 a release
OLD_WINDOW_BOUND = 20  # the processor's per-window bound (orders of one subject per window)
OLD_REVENUE_BOUND = 100_000  # cents: the field's contract bound, the old clamp
OLD_PRODUCT_TOTAL = 600


@dataclass(frozen=True)
class Shape:
    """A traffic shape: the generator's people pool and its rate (all products together)."""

    name: str
    people: int
    activity_sigma: float
    seed: int
    rate: float
    bad_ratio: float
    hours: int  # of the UTC day replayed, from midnight


def shapes() -> dict[str, Shape]:
    """The demo defaults, and fewer people with a heavier tail at the same rate."""
    demo = GeneratorSettings()
    return {
        "demo": Shape(
            "demo", demo.people, demo.activity_sigma, demo.seed, demo.rate, demo.bad_ratio, HOURS
        ),
        "fewer_people_heavier_tail": Shape(
            "fewer_people_heavier_tail",
            20_000,
            2.0,
            demo.seed + 4,
            demo.rate,
            demo.bad_ratio,
            SECOND_HOURS,
        ),
    }


# --------------------------------------------------------------------------- layer 1
@dataclass
class Replay:
    """What the processor made of one day: per window the summed rows, and the raw truth."""

    day_start: int
    windows: dict[int, dict[str, float]]
    rows: dict[tuple[int, int], dict[str, Any]]  # (window start, partition) -> written row
    raw_events: np.ndarray  # accepted events per window before any bound
    raw_revenue: np.ndarray  # their amounts, before the clamp
    counters: dict[str, int]
    incomplete_windows: int
    events_sent: int
    hours: int
    wall_s: float
    people_s: float
    expected: dict[str, float] = field(default_factory=dict)
    events_folder: Path | None = None  # the accepted events as offline part files
    # accepted subjects (pseudonymous) first seen that day per window, before any bound
    raw_new_subjects: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def product_of() -> DataProduct:
    product = load_contracts()[DOMAIN].product(PRODUCT)
    assert product is not None
    return product


def replay(  # noqa: PLR0915 - read top down
    shape: Shape, events_folder: Path | None, day_index: int = 0, people: Any = None
) -> Replay:
    """Day ``day_index`` (from ``DAY_START``) of ``shape``'s shop orders through the real
    processing path (see layer 1), the same people every day, other event times and draws;
    the accepted events are written to ``events_folder`` (if any) as the offline store
    writes them."""
    began = time.perf_counter()
    if people is None:
        people = make_people(shape.people, shape.seed, shape.activity_sigma)
    people_s = time.perf_counter() - began
    day_start = DAY_START + day_index * DAY
    contract = load_contracts()[DOMAIN]
    streams = StreamSettings()
    window, grace = streams.window_seconds, streams.grace_seconds
    partitions = KafkaSettings().partitions
    tokeniser = Tokeniser(derive_domain_key(secrets.token_bytes(32), DOMAIN, 1), 1)
    pipeline = next(
        p for p in build_pipelines(contract, tokeniser, streams) if p.product.name == PRODUCT
    )
    per_day = events_per_day(shape.rate, DOMAIN, PRODUCT, bad_ratio=shape.bad_ratio)
    count = round(per_day * shape.hours / 24)
    rng = np.random.default_rng((shape.seed, day_index))
    times = np.sort(rng.uniform(0, shape.hours * HOUR, count)) + day_start
    gen = EventGenerator(DOMAIN, pipeline.product, people, 0.0, shape.seed + 1000 * day_index)
    slots = DAY // window
    raw_events = np.zeros(slots, dtype=np.int64)
    raw_revenue = np.zeros(slots, dtype=np.float64)
    raw_new_subjects = np.zeros(slots, dtype=np.int64)
    seen_subjects: set[str] = set()
    windows: dict[int, dict[str, float]] = {}
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    incomplete = 0
    schema = event_schema(pipeline.product)
    pending: list[dict[str, Any]] = []

    def flush(at_least: int) -> None:
        if events_folder is None:
            pending.clear()
        elif len(pending) >= at_least:
            append_part(events_folder, event_table(schema, pending))
            pending.clear()

    def collect(now: float) -> None:
        nonlocal incomplete
        _, closed = pipeline.drain(now)
        pending.extend(pipeline.take_events())  # the offline store's share
        flush(20_000)
        for row in pipeline.window_records(closed):
            start = int(row[WINDOW_KEY])  # type: ignore[call-overload]
            if not day_start <= start < day_start + DAY:
                continue
            incomplete += not row[WINDOW_COMPLETE]
            rows[(start, int(row[PARTITION_KEY]))] = row  # type: ignore[call-overload]
            totals = windows.setdefault(start, {})
            for name, value in row.items():
                if isinstance(value, int | float) and name != WINDOW_KEY:
                    totals[name] = totals.get(name, 0.0) + value

    next_close = day_start + window + grace
    began = time.perf_counter()
    for t in times.tolist():
        while t >= next_close:
            collect(next_close)
            next_close += window
        key, value = gen.next_event(t)
        assert key is not None
        outcome = pipeline.route(value, partition_for(key, partitions), partitions, key, t + 0.2)
        if isinstance(outcome, Accepted):
            slot = (int(t) - day_start) // window
            raw_events[slot] += 1
            raw_revenue[slot] += outcome.measures[MEASURE]
            if outcome.subject not in seen_subjects:
                seen_subjects.add(outcome.subject)
                raw_new_subjects[slot] += 1
    end = day_start + shape.hours * HOUR + window + grace + 1
    for partition in range(partitions):
        pipeline.caught_up(partition, end)
    while next_close <= end:
        collect(next_close)
        next_close += window
    pending.extend(pipeline.take_events())
    flush(1)
    wall = time.perf_counter() - began
    bounds = pipeline.product.contribution
    bias = expected_truncation(
        people,
        per_day,
        bounds.max_records_per_period,
        bounds.max_windows_per_period,
        weights=gen.weights,
    )
    return Replay(
        day_start=day_start,
        windows=windows,
        rows=rows,
        raw_events=raw_events,
        raw_revenue=raw_revenue,
        counters=dict(pipeline.counters),
        incomplete_windows=incomplete,
        events_sent=count,
        hours=shape.hours,
        wall_s=wall,
        people_s=people_s,
        expected={
            "events_dropped_share": round(bias.events_dropped_share, 4),
            "people_truncated_share": round(bias.people_truncated_share, 4),
            "median_person_orders_per_day": round(bias.median_person_events, 2),
            "p99_person_orders_per_day": round(bias.top_percent_person_events, 1),
        },
        events_folder=events_folder,
        raw_new_subjects=raw_new_subjects,
    )


COLUMN = {EVENTS: "events", SUM: sum_feature(MEASURE), NEW_HOUR: NEW_SUBJECTS_HOUR}
COLUMN[NEW_PERIOD] = NEW_SUBJECTS_PERIOD


def stream_values(day: Replay, stream: str, window: int) -> np.ndarray:
    """The exact bounded value of every window of the day for one stream (0: no row)."""
    values = np.zeros(DAY // window, dtype=np.int64)
    for start, totals in day.windows.items():
        values[(start - day.day_start) // window] = round(totals.get(COLUMN[stream], 0))
    return values


def truncation(day: Replay, window: int) -> dict[str, Any]:
    """What the per-day bounds removed, measured on the replay (all day and by hour)."""
    counted = stream_values(day, EVENTS, window)
    revenue = stream_values(day, SUM, window)
    truncated = np.zeros_like(counted)
    for start, totals in day.windows.items():
        truncated[(start - day.day_start) // window] = round(totals.get(TRUNCATED_EVENTS, 0))
    per_hour = HOUR // window
    hours = day.hours

    def share(lost: float, total: float) -> float:
        return round(lost / total, 4) if total else 0.0

    by_hour = [
        share(
            float(day.raw_events[h * per_hour : (h + 1) * per_hour].sum())
            - float(counted[h * per_hour : (h + 1) * per_hour].sum()),
            float(day.raw_events[h * per_hour : (h + 1) * per_hour].sum()),
        )
        for h in range(hours)
    ]
    raw_revenue = float(day.raw_revenue.sum())
    return {
        "events_accepted": int(day.raw_events.sum()),
        "events_counted": int(counted.sum()),
        "events_truncated_reported": int(truncated.sum()),
        "events_dropped_share": share(
            float(day.raw_events.sum() - counted.sum()), float(day.raw_events.sum())
        ),
        "revenue_dropped_share": share(raw_revenue - float(revenue.sum()), raw_revenue),
        "events_dropped_share_by_hour": by_hour,
        "expected_by_generator": day.expected,
        "note": "dropped = accepted events (or their raw amounts) not in the bounded windows: "
        "per-day truncation, plus the clamp for revenue; distinct customers are not biased "
        "(a truncated customer still counts once)",
    }


# --------------------------------------------------------------------------- advisor
def exact_bias(
    events: pl.LazyFrame, product: DataProduct, bound: int, clamp_max: float
) -> dict[str, float]:
    """What a record bound of ``bound`` and a clamp at ``clamp_max`` drop from the replayed
    events, exactly: each subject's first ``bound`` records of the day (by event time, as
    they arrive), amounts clamped to ``[clamp.min, clamp_max]`` (the bench reads raw truth;
    no release)."""
    subject, when = product.subject_field, product.event_time
    low = product.clamp_of(MEASURE).min
    frame = (
        events.select(subject, when, MEASURE)
        .filter(pl.col(subject).is_not_null())
        .sort(when, maintain_order=True)
        .with_columns(rank=pl.int_range(pl.len()).over(subject))
        .select(
            records=pl.len(),
            kept=(pl.col("rank") < bound).sum(),
            revenue=pl.col(MEASURE).sum(),
            kept_revenue=pl.when(pl.col("rank") < bound)
            .then(pl.col(MEASURE).clip(low, clamp_max))
            .otherwise(0)
            .sum(),
        )
        .collect()
        .row(0, named=True)
    )
    records, revenue = frame["records"], float(frame["revenue"])
    return {
        "events_dropped_share": round(1 - frame["kept"] / records, 4) if records else 0.0,
        "revenue_dropped_share": round(1 - float(frame["kept_revenue"]) / revenue, 4)
        if revenue
        else 0.0,
    }


def advisor_figures(
    day: Replay, product: DataProduct, classes: dict[str, QueryClass], window: int
) -> dict[str, Any]:
    """The bound advisor on the replay's offline events (a fresh ledger, the product's shipped
    total), and per candidate bound its released share against the exact bias and the
    shipped daily classes' half-widths at that bound."""
    assert day.events_folder is not None
    events = scan_events(day.events_folder)
    budget = load_product_budgets().get(f"{DOMAIN}.{PRODUCT}")
    total = None if budget is None else budget.budget_micro
    began = time.perf_counter()
    ledger = SqliteLedger(day.events_folder.parent / "advisor-ledger.sqlite")
    try:
        advice = advise(
            events,
            DOMAIN,
            product,
            datetime.fromtimestamp(DAY_START, tz=UTC).date(),
            ledger,
            product_budget_micro=total,
        )
        (entry,) = ledger.entries(class_id=advisor_class(DOMAIN, PRODUCT))
    finally:
        ledger.close()
    wall = time.perf_counter() - began
    current_max = product.clamp_of(MEASURE).max
    suggested_clamp = advice.suggestion["clamp"].get(MEASURE, [None, current_max])[1]
    paid = [
        qc
        for qc in classes.values()
        if qc.product == PRODUCT and qc.release == "daily" and not qc.derived_mean
    ]
    noise = {qc.id: bound_options(advice, qc, product, window) for qc in paid}
    rows = []
    for i, candidate in enumerate(advice.candidates):
        rows.append(
            {
                "bound": candidate.bound,
                "source": candidate.source,
                "released_dropped_share": round(candidate.dropped_share, 4),
                "released_ci95": round(candidate.ci95, 4),
                "exact_at_current_clamp": exact_bias(events, product, candidate.bound, current_max),
                "exact_at_suggested_clamp": exact_bias(
                    events, product, candidate.bound, suggested_clamp
                ),
                "ci95_half_width_1h": {
                    class_id: options[i].half_widths.get("1h")
                    for class_id, options in noise.items()
                },
            }
        )
    return {
        "advice": advice.to_dict(),
        "ledger_entry_epsilon": str(Decimal(entry.cost_micro) / 1_000_000),
        "wall_s": round(wall, 2),
        "candidates": rows,
        "note": "released_*: the advisor's DP figures (shares relative to the records counted "
        f"up to {advice.cap} per subject-day); exact_*: the same replayed events read "
        "directly (benchmark truth, the record bound alone: with a bound at most the "
        "contract's window bound that is what the processor keeps); ci95_half_width_1h: the "
        "shipped daily classes' expected hourly 95% half-width with that record bound",
    }


# --------------------------------------------------------------------------- layer 2
@dataclass(frozen=True)
class Tile:
    """One dashboard tile: a class and the stream of it a resolution reads."""

    name: str
    class_id: str


TILES = (
    Tile("order_count", "shop.orders.order_count"),
    Tile("revenue_cents", "shop.orders.revenue_cents"),
    Tile("distinct_customers", "shop.orders.distinct_customers"),
)
LEVEL_RESOLUTIONS = ("window", "1m", "1h", "today")


def stream_of(qc: QueryClass, resolution: str) -> str:
    """The stream a resolution of a daily class reads (the API's choice)."""
    if qc.aggregate == "count_records":
        return EVENTS
    if qc.aggregate == "bounded_sum":
        return SUM
    return NEW_HOUR if resolution == "1h" else NEW_PERIOD


def span_truth(values: np.ndarray, window: int, resolution: str, t_in_day: int) -> int:
    """The exact value a resolution releases when the newest closed window ends at
    ``t_in_day`` seconds into the day (None-free: a one-day replay starts at 0)."""
    end = t_in_day // window
    if resolution == "24h" and t_in_day == DAY:  # a one-day replay answers it at midnight only
        resolution = "today"
    if resolution == "window":
        return int(values[end - 1])
    if resolution == "today":
        return int(values[:end].sum())
    width = 60 if resolution == "1m" else HOUR
    stop = (t_in_day - t_in_day % width) // window
    return int(values[stop - width // window : stop].sum())


@dataclass
class Figures:
    """Accumulated figures of one (tile, resolution, design)."""

    errors: list[float] = field(default_factory=list)
    covered: int = 0
    values: int = 0
    zero_truth: int = 0
    too_noisy: int = 0
    answerable_minutes: set[int] = field(default_factory=set)
    chosen: Counter[str] = field(default_factory=Counter)  # the API's resolution (auto)

    def add(self, bounded: daily.Bounded, truth: int) -> None:
        self.values += 1
        self.covered += bounded.low <= truth <= bounded.high
        self.too_noisy += bounded.too_noisy
        if truth == 0:
            self.zero_truth += 1
        else:
            self.errors.append(abs(bounded.value - truth) / truth)

    def summary(self, shared_noise: bool = False) -> dict[str, Any]:
        """The figures; ``shared_noise``: the values share noisy nodes ('today', '24h': one
        day's prefixes reuse its hours and minutes), so they are not independent trials and no
        binomial interval of their coverage is stated (``today_coverage`` measures it over
        independent replications)."""
        if not self.values:
            return {"answerable_minutes": 0, "values": 0}
        interval: Any = wilson(self.covered, self.values)
        if shared_noise:
            interval = (
                "not stated: these values share noisy nodes, so they are not independent "
                "trials; see today_so_far.coverage (independent replications)"
            )
        return {
            "median_relative_error": round(statistics.median(self.errors), 5)
            if self.errors
            else None,
            "p90_relative_error": round(float(np.quantile(self.errors, 0.9)), 5)
            if self.errors
            else None,
            "coverage_95": round(self.covered / self.values, 4),
            "coverage_95_interval": interval,
            "too_noisy_share": round(self.too_noisy / self.values, 4),
            "answerable_minutes": len(self.answerable_minutes),
            "values": self.values,
            **({"resolution_chosen": dict(self.chosen)} if self.chosen else {}),
            "zero_truth_values": self.zero_truth,
        }


def wilson(successes: int, trials: int) -> list[float]:
    """The Wilson score 95% interval of a binomial proportion (valid for independent trials
    only: values that share noisy nodes, 'today' and '24h', make it too narrow)."""
    z = 1.959964
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    return [round(centre - half, 4), round(centre + half, 4)]


# When each resolution is read, seconds into the day: every window end, every minute end,
# and for 'today' / '24h' one window end per minute, cycling through the minute's windows
# (60k - 10 (k mod 6)) so each count of trailing window nodes is read as often; a read at
# every window end would compute 8,640 new half-widths a day per tile (the bench's cost, not
# the API's: the API computes one per read).
def read_times(resolution: str, window: int) -> list[int]:
    if resolution == "window":
        return list(range(window, DAY + 1, window))
    if resolution in ("today", "24h"):
        per = 60 // window
        return [60 * k - window * (k % per) for k in range(1, DAY // 60 + 1)]
    return list(range(60, DAY + 1, 60))


RESOLUTIONS_MEASURED = ("window", "1m", "1h", "today", "24h")
SHARED_NOISE = ("today", "24h")  # a day's values of these share nodes: not independent


def hierarchy_figures(
    days: list[Replay],
    classes: dict[str, QueryClass],
    product: DataProduct,
    window: int,
    version: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Layer 2: each tile at each resolution over the consecutive replayed days (each day a
    structure of ``version`` with yesterday's as ``previous``), from the shipped classes'
    parameters, clamped as the API clamps; a span read twice counts once."""
    out: dict[str, dict[str, Any]] = {}
    spent: dict[str, str] = {}
    store = MemoryNodeStore()
    first = days[0].day_start
    for tile in TILES:
        qc = classes[tile.class_id]
        deltas = daily_sensitivities(qc, product)
        epsilons = split_epsilon(qc, list(deltas))
        spent[qc.id] = str(qc.epsilon_per_release)
        low, high = bounds_of(qc, product)
        figures: dict[str, Figures] = {}
        for stream in deltas:
            width = HOUR if stream == NEW_HOUR else window
            exact = np.concatenate([stream_values(day, stream, window) for day in days])
            if stream == NEW_HOUR:  # the hour stream's structure reads hours, not windows
                exact = exact.reshape(-1, HOUR // window).sum(axis=1)

            def read(start: int, exact: np.ndarray = exact, width: int = width) -> int:
                return int(exact[(start - first) // width])

            resolutions = [
                r
                for r in qc.answered_resolutions
                if r in RESOLUTIONS_MEASURED and stream_of(qc, r) == stream
            ]
            seen: dict[str, set[tuple[int, int]]] = {r: set() for r in resolutions}
            previous: DailyHierarchy | None = None
            for d, day in enumerate(days):
                structure = DailyHierarchy(
                    width,
                    day.day_start,
                    epsilons[stream],
                    deltas[stream],
                    store,
                    f"{qc.id}|{stream}|{d}",
                    version,
                )
                # Every node of the day in one draw per level (the same independent noise
                # per node as drawing each when its span completes, which the API does).
                structure.node_values(
                    [
                        (level, index)
                        for level, span in enumerate(structure.levels)
                        for index in range(DAY // span)
                    ],
                    read,
                )
                for resolution in resolutions:
                    fig = figures.setdefault(resolution, Figures())
                    for t_in_day in read_times(resolution, window):
                        noisy = read_value(structure, previous, stream, resolution, t_in_day, read)
                        if noisy is None:
                            continue
                        fig.answerable_minutes.add(d * 1440 + (t_in_day - 1) // 60)
                        if (noisy.start, noisy.end) in seen[resolution]:
                            continue
                        seen[resolution].add((noisy.start, noisy.end))
                        begin, stop = (noisy.start - first) // width, (noisy.end - first) // width
                        truth = int(exact[begin:stop].sum())
                        fig.add(daily.clamp(noisy.value, noisy.ci95_half_width, low, high), truth)
                previous = structure
        out[tile.name] = {
            r: {**f.summary(r in SHARED_NOISE), "values_share_noise": r in SHARED_NOISE}
            for r, f in figures.items()
        }
    return out, spent


def read_value(
    structure: DailyHierarchy,
    previous: DailyHierarchy | None,
    stream: str,
    resolution: str,
    t_in_day: int,
    read: Any,
) -> Any:
    """The value the API releases at ``resolution`` when the newest closed window ends
    ``t_in_day`` into ``structure``'s day (None: not answerable, no yesterday)."""
    t_end = structure.day_start + t_in_day
    if stream == NEW_HOUR:  # the newest complete hour of the hour stream
        t_end -= t_end % HOUR
        if t_end == structure.day_start:
            return None if previous is None else previous.value("1h", t_end, read)
        return structure.value("1h", t_end, read)
    try:
        return structure.value(resolution, t_end, read, previous)
    except ResolutionUnavailable:
        return None


def bounds_of(qc: QueryClass, product: DataProduct) -> tuple[float | None, float | None]:
    """The public bounds the API clamps a class's values to."""
    if qc.aggregate == "bounded_sum":
        assert qc.measure is not None
        clamp = product.clamp_of(qc.measure)
        return (0.0 if clamp.min >= 0 else None), (0.0 if clamp.max <= 0 else None)
    return 0.0, None


# --------------------------------------------------------------------------- today study
# "today so far" over independent noise draws (the figures above come from one draw per day:
# a day's prefixes share their hour and minute nodes, so one day's minutes are not
# independent trials). Every draw is made by the structure's own mechanisms
# (``vector_laplace(Δ, ε_l)`` per level, as ``level_mechanisms``, or ``DailyHierarchy`` itself).
STUDY_REPLICATIONS = int(os.environ.get("BENCH_UTILITY_STUDY_REPS", "100"))
COVERAGE_REPLICATIONS = int(os.environ.get("BENCH_UTILITY_COVERAGE_REPS", "1000"))
TODAY_STREAMS = {"order_count": EVENTS, "revenue_cents": SUM, "distinct_customers": NEW_PERIOD}


def raw_values(day: Replay, stream: str) -> np.ndarray:
    """Per window, the accepted events' value before any contribution bound or clamp (the
    truth a dashboard consumer means): orders, revenue in cents, customers new to the day."""
    if stream == EVENTS:
        return day.raw_events.astype(np.float64)
    if stream == SUM:
        return day.raw_revenue.astype(np.float64)
    return day.raw_new_subjects.astype(np.float64)


def level_sums(values: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """The exact node sums of every level (finest first) of a day of window ``values``."""
    return [values.reshape(-1, width // widths[0]).sum(axis=1) for width in widths]


def draw_levels(
    sums: list[np.ndarray], sensitivity: int, epsilons: tuple[Decimal, ...]
) -> tuple[list[np.ndarray], list[float]]:
    """Every node of the day noised by the level's own mechanism (OpenDP discrete Laplace at
    ``Δ / ε_l``, ``mechanisms.vector_laplace`` as ``hierarchy.level_mechanisms`` builds it):
    the noisy nodes per level and the levels' scales."""
    noisy, scales = [], []
    for exact, epsilon in zip(sums, epsilons, strict=True):
        measurement, scale = vector_laplace(sensitivity, epsilon)
        noisy.append(np.asarray(measurement([int(v) for v in exact]), dtype=np.float64))
        scales.append(scale)
    return noisy, scales


def bottom_up_variances(variances: list[float], widths: list[int]) -> list[float]:
    """The variances of :func:`bottom_up`'s estimates per level, from the levels' node noise
    variances (finest first)."""
    out = [variances[0]]
    for level in range(1, len(widths)):
        children = widths[level] // widths[level - 1] * out[-1]
        out.append(1 / (1 / variances[level] + 1 / children))
    return out


def bottom_up(
    noisy: list[np.ndarray], variances: list[float], widths: list[int]
) -> list[np.ndarray]:
    """Honaker's (2015) bottom-up pass over the hierarchy: each node's estimate is its own
    noisy value and the sum of its children's estimates, weighted by inverse variance (the
    estimates per level, finest first). A complete node is a root of the nodes drawn so far
    until its parent completes, so the least-squares estimate of a prefix (a sum of roots)
    is the sum of its cover's bottom-up estimates: no top-down pass is needed."""
    estimates = [noisy[0]]
    combined = bottom_up_variances(variances, widths)
    for level in range(1, len(widths)):
        ratio = widths[level] // widths[level - 1]
        children = estimates[-1].reshape(-1, ratio).sum(axis=1)
        children_variance = ratio * combined[level - 1]
        own = children_variance / (children_variance + variances[level])
        estimates.append(own * noisy[level] + (1 - own) * children)
    return estimates


def prefix_cover(levels: list[np.ndarray], widths: list[int], ends: np.ndarray) -> np.ndarray:
    """Per end (seconds into the day), the sum of the greedy cover of ``[0, end)`` (largest
    nodes first, as ``DailyHierarchy.cover('today')``) over per-level node values; row 0 the
    sums, rows 1.. the nodes used per level (finest first)."""
    total = np.zeros(len(ends), dtype=np.float64)
    counts = np.zeros((len(widths), len(ends)), dtype=np.int64)
    consumed = np.zeros(len(ends), dtype=np.int64)
    for level in range(len(widths) - 1, -1, -1):
        width = widths[level]
        count = (ends - consumed) // width
        first = consumed // width
        cumulative = np.concatenate(([0.0], np.cumsum(levels[level])))
        total += cumulative[first + count] - cumulative[first]
        counts[level] = count
        consumed += count * width
    return np.vstack((total, counts))


def ls_optimal_epsilons(window: int, epsilon: Decimal) -> tuple[Decimal, ...]:
    """The split of ``epsilon`` over the levels that minimises the shipped workload's
    day-averaged variance (``mean_level_counts``: window, 1m, 1h, today and 24h, each counted
    once) when values are read from the bottom-up estimates instead of the raw nodes: a grid
    over the simplex (steps of 1/400) of ``sum_l n_l v'_l``, ``v'`` the bottom-up variances
    at continuous Laplace variance ``2 / ε_l²`` (scale free). Derived from the workload, no
    data."""
    widths = level_widths(window)
    counts = np.asarray(mean_level_counts(window))
    steps = 400
    grid = np.arange(1, steps) / steps
    parts = np.array(np.meshgrid(*[grid] * (len(widths) - 1), indexing="ij")).reshape(
        len(widths) - 1, -1
    )
    parts = np.vstack((parts, 1 - parts.sum(axis=0)))
    parts = parts[:, parts[-1] > 0]
    variance = 2 / parts**2
    objective = counts[0] * variance[0]
    estimate = variance[0]
    for level in range(1, len(widths)):
        children = widths[level] // widths[level - 1] * estimate
        estimate = 1 / (1 / variance[level] + 1 / children)
        objective = objective + counts[level] * estimate
    best = parts[:, int(np.argmin(objective))]
    quantum = Decimal("1e-9")
    split = [(epsilon * Decimal(float(f))).quantize(quantum) for f in best[:-1]]
    return (*split, epsilon - sum(split, Decimal(0)))


ESTIMATORS = ("greedy", "least_squares")
"""How 'today' is read from the day's noisy nodes: ``greedy``, the shipped sum of the cover's
raw nodes (``DailyHierarchy.value``); ``least_squares``, the same cover over the bottom-up
estimates (:func:`bottom_up`), Honaker's least-squares estimate at no extra budget."""


def day_summary(values: list[float]) -> dict[str, Any]:
    """Mean (with a 95% interval over the independent replications), median and spread of a
    per-replication figure."""
    data = np.asarray(values)
    half = 1.96 * float(data.std(ddof=1)) / math.sqrt(len(data)) if len(data) > 1 else 0.0
    return {
        "mean": round(float(data.mean()), 5),
        "mean_ci95": [round(float(data.mean()) - half, 5), round(float(data.mean()) + half, 5)],
        "median": round(float(np.median(data)), 5),
        "p10": round(float(np.quantile(data, 0.1)), 5),
        "p90": round(float(np.quantile(data, 0.9)), 5),
    }


def _tile_setup(
    tile: str, classes: dict[str, QueryClass], product: DataProduct
) -> tuple[Decimal, int, float | None, float | None]:
    """(epsilon of the 'today' stream, its sensitivity, the public clamp bounds) of a tile."""
    qc = classes[{t.name: t.class_id for t in TILES}[tile]]
    deltas = daily_sensitivities(qc, product)
    stream = TODAY_STREAMS[tile]
    low, high = bounds_of(qc, product)
    return split_epsilon(qc, list(deltas))[stream], deltas[stream], low, high


def today_error_study(
    day: Replay, classes: dict[str, QueryClass], product: DataProduct, window: int, reps: int
) -> dict[str, Any]:
    """'today so far' at the bench's read times (one a minute), ``reps`` independent draws of
    the whole day at the shipped split, each read by both :data:`ESTIMATORS` (paired): the
    day's median relative error against the bounded truth (the DP noise: the bench's metric)
    and against the raw truth (noise and contribution-bound truncation), the truncation
    alone, per read time the noise's RMS against the truncation bias, and how often the
    public clamp acted. The split derived for the least-squares reading
    (:func:`ls_optimal_epsilons`) is compared in exact theory (its day-mean variance)."""
    widths = level_widths(window)
    ends = np.asarray(read_times("today", window), dtype=np.int64)
    ends = ends[ends <= day.hours * HOUR]
    counts = prefix_cover([np.zeros(DAY // w) for w in widths], widths, ends)[1:]
    out: dict[str, Any] = {}
    for tile, stream in TODAY_STREAMS.items():
        epsilon, delta, low, high = _tile_setup(tile, classes, product)
        exact = stream_values(day, stream, window)
        bounded = np.cumsum(exact)[ends // window - 1].astype(np.float64)
        raw = np.cumsum(raw_values(day, stream))[ends // window - 1]
        keep_b, keep_r = bounded > 0, raw > 0
        bias = bounded - raw
        sums = level_sums(exact, widths)
        split = level_epsilons(window, epsilon)
        variances = [discrete_laplace_variance(vector_laplace(delta, e)[1]) for e in split]
        combined = bottom_up_variances(variances, widths)
        medians: dict[str, dict[str, list[float]]] = {
            e: {"bounded": [], "raw": []} for e in ESTIMATORS
        }
        squared = {e: np.zeros(len(ends)) for e in ESTIMATORS}
        clamped = dict.fromkeys(ESTIMATORS, 0)
        for _ in range(reps):
            noisy, _ = draw_levels(sums, delta, split)
            for estimator in ESTIMATORS:
                nodes = bottom_up(noisy, variances, widths) if estimator != "greedy" else noisy
                value = prefix_cover(nodes, widths, ends)[0]
                shown = value if low is None and high is None else np.clip(value, low, high)
                clamped[estimator] += int(np.sum(shown != value))
                noise = shown - bounded
                squared[estimator] += noise**2
                medians[estimator]["bounded"].append(
                    float(np.median(np.abs(noise[keep_b]) / bounded[keep_b]))
                )
                medians[estimator]["raw"].append(
                    float(np.median(np.abs(shown - raw)[keep_r] / raw[keep_r]))
                )
        figures: dict[str, Any] = {
            "epsilon": str(epsilon),
            "sensitivity": delta,
            "level_epsilons": [str(e) for e in split],
            "truncation_only_median_relative_error": round(
                float(np.median(np.abs(bias[keep_r]) / raw[keep_r])), 5
            ),
            "truncation_share_of_raw_at_day_end": round(float(-bias[-1] / raw[-1]), 5)
            if raw[-1]
            else None,
        }
        for estimator in ESTIMATORS:
            rms = np.sqrt(squared[estimator] / reps)
            theory = combined if estimator != "greedy" else variances
            figures[estimator] = {
                "median_relative_error_vs_bounded": day_summary(medians[estimator]["bounded"]),
                "share_of_days_within_1pct": round(
                    float(np.mean(np.asarray(medians[estimator]["bounded"]) <= 0.01)), 3
                ),
                "median_relative_error_vs_raw": day_summary(medians[estimator]["raw"]),
                "median_over_day_noise_rms_relative": round(
                    float(np.median(rms[keep_r] / raw[keep_r])), 5
                ),
                "reads_where_noise_rms_exceeds_truncation_bias": round(
                    float(np.mean(rms > np.abs(bias))), 4
                ),
                "clamped_share_of_reads": round(clamped[estimator] / (reps * len(ends)), 6),
                "day_mean_noise_variance_theory": round(
                    float(np.mean(np.asarray(theory) @ counts)), 1
                ),
            }
        greedy, ls = medians["greedy"]["bounded"], medians["least_squares"]["bounded"]
        optimal = ls_optimal_epsilons(window, epsilon)
        optimal_variances = bottom_up_variances(
            [discrete_laplace_variance(vector_laplace(delta, e)[1]) for e in optimal], widths
        )
        shipped_theory = figures["greedy"]["day_mean_noise_variance_theory"]
        figures["least_squares_vs_greedy"] = {
            "variance_ratio_theory": round(
                figures["least_squares"]["day_mean_noise_variance_theory"] / shipped_theory, 4
            ),
            "median_error_ratio_paired": day_summary(
                [b / a for a, b in zip(greedy, ls, strict=True)]
            ),
        }
        figures["least_squares_workload_split"] = {
            "level_epsilons": [str(e) for e in optimal],
            "variance_ratio_to_greedy_shipped_theory": round(
                float(np.mean(np.asarray(optimal_variances) @ counts)) / shipped_theory, 4
            ),
        }
        figures["minute_aligned"] = minute_aligned_figures(
            exact, raw_values(day, stream), delta, epsilon, (low, high), window, ends, reps
        )
        figures["minute_aligned"]["median_error_over_shipped_measured"] = round(
            figures["minute_aligned"]["median_relative_error_vs_bounded"]["mean"]
            / figures["greedy"]["median_relative_error_vs_bounded"]["mean"],
            4,
        )
        out[tile] = figures
    return {
        "tiles": out,
        "replications": reps,
        "read_times_per_day": len(ends),
        "note": "each replication is an independent draw of every node of the day by the "
        "levels' own OpenDP mechanisms, read by both estimators (paired); a replication's "
        "figure is the median over the day's read times (one a minute), so the replications "
        "are independent and the intervals are over them; vs_bounded is the DP noise alone "
        "(the bench's metric), vs_raw adds the contribution-bound truncation",
    }


def minute_aligned_epsilons(window: int, epsilon: Decimal) -> tuple[Decimal, ...]:
    """The cube-root split (as ``level_epsilons``) of the workload in which 'today' and '24h'
    end at the newest complete minute instead of the newest window: ``n_l`` averaged over the
    day's window ends, window, 1m and 1h one node each. Derived from the workload alone."""
    widths = level_widths(window)
    ends = np.arange(window, DAY + 1, window, dtype=np.int64)
    aligned = ends - ends % 60
    today = prefix_cover([np.zeros(DAY // w) for w in widths], widths, aligned)[1:]
    before = prefix_cover([np.zeros(DAY // w) for w in widths], widths, DAY - aligned)[1:]
    counts = (2 * today + before).mean(axis=1) + 1  # today, 24h (today + yesterday), singles
    weights = counts ** (1 / 3)
    quantum = Decimal("1e-9")
    split = [(epsilon * Decimal(float(w / weights.sum()))).quantize(quantum) for w in weights[:-1]]
    return (*split, epsilon - sum(split, Decimal(0)))


def minute_aligned_figures(
    exact: np.ndarray,
    raw: np.ndarray,
    delta: int,
    epsilon: Decimal,
    bounds: tuple[float | None, float | None],
    window: int,
    ends: np.ndarray,
    reps: int,
) -> dict[str, Any]:
    """A structural alternative at the same epsilon, measured: 'today' read at the newest
    complete minute (no trailing window nodes; at most 50 s staler), the levels' split
    re-derived for that workload (:func:`minute_aligned_epsilons`); ``reps`` independent draws
    by the levels' own mechanisms, the error against the truth of the span it states."""
    widths = level_widths(window)
    split = minute_aligned_epsilons(window, epsilon)
    aligned = ends - ends % 60
    keep = aligned > 0
    aligned = aligned[keep]
    bounded = np.cumsum(exact)[aligned // window - 1].astype(np.float64)
    raw_truth = np.cumsum(raw)[aligned // window - 1]
    keep_b, keep_r = bounded > 0, raw_truth > 0
    sums = level_sums(exact, widths)
    low, high = bounds
    med_b, med_r = [], []
    for _ in range(reps):
        noisy, _ = draw_levels(sums, delta, split)
        value = prefix_cover(noisy, widths, aligned)[0]
        shown = value if low is None and high is None else np.clip(value, low, high)
        med_b.append(float(np.median(np.abs(shown - bounded)[keep_b] / bounded[keep_b])))
        med_r.append(float(np.median(np.abs(shown - raw_truth)[keep_r] / raw_truth[keep_r])))
    variances = [discrete_laplace_variance(vector_laplace(delta, e)[1]) for e in split]
    counts = prefix_cover([np.zeros(DAY // w) for w in widths], widths, aligned)[1:]
    return {
        "level_epsilons": [str(e) for e in split],
        "window_tile_scale": round(vector_laplace(delta, split[0])[1], 1),
        "median_relative_error_vs_bounded": day_summary(med_b),
        "share_of_days_within_1pct": round(float(np.mean(np.asarray(med_b) <= 0.01)), 3),
        "median_relative_error_vs_raw": day_summary(med_r),
        "day_mean_noise_variance_theory": round(float(np.mean(np.asarray(variances) @ counts)), 1),
        "note": "not shipped: a product change (today/24h up to 50 s staler, the 10-second "
        "window tile noisier), measured here as the lever the structure has left",
    }


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> list[float]:
    """The exact (Clopper-Pearson) two-sided interval of a binomial proportion from
    ``trials`` independent trials."""
    from scipy.stats import beta

    tail = (1 - confidence) / 2
    lo = float(beta.ppf(tail, successes, trials - successes + 1)) if successes else 0.0
    hi = float(beta.ppf(1 - tail, successes + 1, trials - successes)) if successes < trials else 1.0
    return [round(lo, 4), round(hi, 4)]


def today_coverage(
    day: Replay,
    classes: dict[str, QueryClass],
    product: DataProduct,
    window: int,
    reps: int,
    seed: int = 0,
    tiles: tuple[str, ...] = tuple(TODAY_STREAMS),
) -> dict[str, Any]:
    """Coverage of the 'today' tile's stated 95% interval over ``reps`` independent
    replications of the day's releases: each replication a fresh ``DailyHierarchy`` (its own
    store, so its own noise) read once, at a read time drawn at random, through
    ``DailyHierarchy.value`` and the API's clamp. One read per replication makes the trials
    independent (two reads of one day share nodes), so the count is binomial."""
    rng = np.random.default_rng(seed)
    times = [t for t in read_times("today", window) if t <= day.hours * HOUR]
    out: dict[str, Any] = {}
    for tile in tiles:
        stream = TODAY_STREAMS[tile]
        epsilon, delta, low, high = _tile_setup(tile, classes, product)
        exact = stream_values(day, stream, window)
        raw = np.cumsum(raw_values(day, stream))

        def read(start: int, exact: np.ndarray = exact) -> int:
            return int(exact[(start - day.day_start) // window])

        covered = covered_raw = 0
        for r in range(reps):
            t_in_day = int(rng.choice(times))
            structure = DailyHierarchy(
                window, day.day_start, epsilon, delta, MemoryNodeStore(), f"coverage|{r}"
            )
            noisy = structure.value("today", day.day_start + t_in_day, read)
            shown = daily.clamp(noisy.value, noisy.ci95_half_width, low, high)
            truth = int(exact[: t_in_day // window].sum())
            covered += shown.low <= truth <= shown.high
            covered_raw += shown.low <= raw[t_in_day // window - 1] <= shown.high
        out[tile] = {
            "coverage_95": round(covered / reps, 4),
            "coverage_95_interval": clopper_pearson(covered, reps),
            "coverage_of_raw_truth": round(covered_raw / reps, 4),
            "coverage_of_raw_truth_interval": clopper_pearson(covered_raw, reps),
        }
    return {
        "tiles": out,
        "replications": reps,
        "interval": "Clopper-Pearson 95% over independent replications (one read each)",
        "note": "coverage is of the exact bounded value the interval is stated for; coverage "
        "of the raw truth shows what the contribution bounds' truncation does to it",
    }


# --------------------------------------------------------------------------- comparisons
def noise(values: np.ndarray, sensitivity: int, epsilon: Decimal) -> tuple[np.ndarray, float]:
    """``values`` with OpenDP discrete Laplace noise calibrated to ``epsilon`` at L1
    ``sensitivity`` (one release per coordinate, as the per-release designs draw them)."""
    # 64-bit integers: a day's revenue in cents passes 2**31.
    domain = dp.vector_domain(dp.atom_domain(T="i64"))
    measurement, scale = laplace_within(domain, dp.l1_distance(T="i64"), sensitivity, epsilon)
    return np.asarray(measurement([int(v) for v in values]), dtype=np.int64), scale


def design_figures(
    truths: np.ndarray, noisy: np.ndarray, half_width: int, low: float | None, minutes: list[int]
) -> dict[str, Any]:
    fig = Figures()
    for truth, value in zip(truths.tolist(), noisy.tolist(), strict=True):
        fig.add(daily.clamp(int(value), half_width, low, None), int(truth))
    fig.answerable_minutes.update(minutes)
    return fig.summary()


def per_window_design(day: Replay, window: int) -> dict[str, Any]:
    """(a) Per-window releases at the old shipped epsilon 1 and 100 releases a class a day:
    a dashboard reading every window spends a class's day in 100 windows."""
    answerable = OLD_RELEASES_PER_DAY * window / 60
    out: dict[str, Any] = {}
    old = {
        "order_count": (EVENTS, OLD_WINDOW_BOUND),
        "revenue_cents": (SUM, OLD_WINDOW_BOUND * OLD_REVENUE_BOUND),
        "distinct_customers": ("distinct_subjects", 1),
    }
    for name, (stream, delta) in old.items():
        if stream == "distinct_subjects":
            truths = np.zeros(DAY // window, dtype=np.int64)
            for start, totals in day.windows.items():
                truths[(start - day.day_start) // window] = round(
                    totals.get("distinct_subjects", 0)
                )
        else:
            truths = stream_values(day, stream, window)
        truths = truths[: day.hours * HOUR // window]
        noisy, scale = noise(truths, delta, OLD_EPSILON)
        half = mixed_half_width(((scale, 1),))
        released = OLD_RELEASES_PER_DAY
        minutes = [i * window // 60 for i in range(released)]
        figures = design_figures(truths[:released], noisy[:released], half, 0.0, minutes)
        figures["answerable_minutes"] = round(answerable, 1)
        out[name] = {
            "window": figures,
            "1m": "not offered (per-window classes only)",
            "1h": "not offered (per-window classes only)",
            "today": "not offered (orders only, as a binary-tree running total with a "
            "per-window privacy unit)",
        }
    out["epsilon_per_release"] = str(OLD_EPSILON)
    out["releases_per_class_per_day"] = OLD_RELEASES_PER_DAY
    out["privacy_unit"] = "subject_window"
    out["user_level_epsilon_per_subject_per_day_worst_case"] = OLD_PRODUCT_TOTAL
    out["note"] = (
        "a dashboard reading every 10 s window spends a class's 100 releases in 100 windows "
        f"({answerable:.1f} minutes), then 429; a subject seen in k released windows is "
        "protected at k x epsilon per class, up to the product's 600 a day"
    )
    return out


def independent_design(
    day: Replay, classes: dict[str, QueryClass], product: DataProduct, window: int
) -> dict[str, Any]:
    """(b) Independent noise per release at each class's daily epsilon: the epsilon split
    evenly over the class's resolutions, then over that resolution's releases of the day,
    each release protecting a subject's whole day (sensitivity: the day's bound)."""
    out: dict[str, Any] = {}
    span = day.hours * HOUR
    for tile in TILES:
        qc = classes[tile.class_id]
        deltas = daily_sensitivities(qc, product)
        resolutions = [r for r in qc.answered_resolutions if r in LEVEL_RESOLUTIONS]
        low, _ = bounds_of(qc, product)
        per_resolution = Decimal(qc.cost_micro) / 1_000_000 / len(resolutions)
        figures: dict[str, Any] = {}
        for resolution in resolutions:
            stream = stream_of(qc, resolution)
            exact = stream_values(day, stream, window)
            step = {"window": window, "today": window, "1m": 60, "1h": HOUR}[resolution]
            ends = list(range(step, span + 1, step))
            if stream == NEW_HOUR:
                truths = exact.reshape(-1, HOUR // window).sum(axis=1)[: len(ends)]
            else:
                truths = np.asarray(
                    [span_truth(exact, window, resolution, t) for t in ends], dtype=np.int64
                )
            releases = DAY // step  # a day's releases at this resolution share its part
            epsilon = (per_resolution / releases).quantize(Decimal("0.000000001"))
            # Each release is a sum over a span: one subject's day moves it by at most the
            # day's bound (the hour stream's bound is per hour, so min(24, windows) as well).
            noisy, scale = noise(truths, deltas[stream], epsilon)
            half = mixed_half_width(((scale, 1),))
            figures[resolution] = design_figures(
                truths, noisy, half, low, [(t - 1) // 60 for t in ends]
            )
            figures[resolution]["epsilon_per_release"] = str(epsilon)
        out[tile.name] = figures
    return out


# --------------------------------------------------------------------------- layer 3
API_EVERY = int(os.environ.get("BENCH_UTILITY_API_EVERY", "600"))  # simulated s between reads


class ReplayWindows:
    """The ``WindowSource`` seam of the API over the processor's window rows: the rows
    summed over the partitions, None values while a partition has not reported (as the
    feature store answers)."""

    def __init__(self, day: Replay) -> None:
        self.day = day
        # bounds applied: the largest of the partitions' (as the store merges them)
        first = next(iter(day.rows.values()), {})
        self.bounds = {MAX_RECORDS_PER_PERIOD, MAX_WINDOWS_PER_PERIOD, CONTRIBUTION_BOUND}
        self.bounds |= {n for n in first if n.endswith(sum_cap_feature(""))}

    def window_stats(
        self, product: str, window_starts: list[int], partitions: int = 1
    ) -> list[dict[str, Any]]:
        merged: list[dict[str, Any]] = []
        for start in window_starts:
            parts = [self.day.rows.get((start, p)) for p in range(partitions)]
            if any(part is None for part in parts):
                merged.append(
                    {WINDOW_KEY: start, "partitions": partitions, "distinct_subjects": None}
                )
                continue
            row: dict[str, Any] = {WINDOW_KEY: start, "partitions": partitions}
            for part in parts:
                assert part is not None
                for name, value in part.items():
                    if name in (WINDOW_KEY, PARTITION_KEY) or not isinstance(value, int | float):
                        continue
                    if name in self.bounds:
                        row[name] = max(row.get(name, 0), value)
                    else:
                        row[name] = row.get(name, 0) + value
            merged.append(row)
        return merged


def api_figures(day: Replay, window: int) -> dict[str, Any]:
    """Layer 3: the FastAPI app in-process (shipped classes, a sqlite ledger, the clock set
    to each simulated moment) asked every tile at every resolution each ``API_EVERY``
    simulated seconds; the product's spend per day read back from the ledger."""
    import tempfile

    from fastapi.testclient import TestClient

    from dashboards_api.ledger import open_ledger, period_of
    from dashboards_api.main import build_service, create_app
    from dashboards_api.settings import ApiSettings
    from infra.api_app import window_facts

    now = [float(DAY_START)]
    figures: dict[str, dict[str, Figures]] = {}
    statuses: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="privmesh-utility-") as tmp:
        api, streams = ApiSettings(), StreamSettings()
        ledger = open_ledger("sqlite", Path(tmp))
        service = build_service(
            api,
            window_facts(streams, KafkaSettings()),
            {DOMAIN: ReplayWindows(day)},
            ledger,
            load_contracts(),
        )
        service = replace(service, clock=lambda: now[0])
        classes = {t.name: service.query_class(t.class_id) for t in TILES}
        values = {s: stream_values(day, s, window) for s in (EVENTS, SUM, NEW_HOUR, NEW_PERIOD)}
        hourly = values[NEW_HOUR].reshape(-1, HOUR // window).sum(axis=1)
        began = time.perf_counter()
        with TestClient(create_app(service, None, api)) as client:
            for t_in_day in range(API_EVERY, day.hours * HOUR + 1, API_EVERY):
                t_end = DAY_START + t_in_day
                now[0] = t_end + streams.grace_seconds + 1
                for tile in TILES:
                    qc = classes[tile.name]
                    for resolution in (*qc.answered_resolutions, "auto"):
                        response = client.get(
                            f"/v1/queries/{qc.id}",
                            params={"resolution": resolution, "window_start": t_end - window},
                        )
                        statuses[str(response.status_code)] += 1
                        fig = figures.setdefault(tile.name, {}).setdefault(resolution, Figures())
                        if response.status_code != 200:
                            continue
                        body = response.json()
                        fig.answerable_minutes.add(t_in_day // 60 - 1)
                        chosen = body["resolution"]
                        stream = stream_of(qc, chosen)
                        if stream == NEW_HOUR:
                            truth = int(hourly[t_in_day // HOUR - 1])
                        else:
                            truth = span_truth(values[stream], window, chosen, t_in_day)
                        lo, hi = body["ci95"]
                        value = float(body["value"])
                        fig.add(daily.Bounded(value, lo, hi, (hi - lo) / 2), truth)
                        fig.chosen[chosen] += 1
        wall = time.perf_counter() - began
        period = period_of(datetime.fromtimestamp(DAY_START, tz=UTC))
        spent = ledger.product_spent(f"{DOMAIN}.{PRODUCT}", period)
        total = service.product_total(DOMAIN, PRODUCT)
        ledger.close()
    reads = (day.hours * HOUR) // API_EVERY
    return {
        "tiles": {
            name: {
                r: {**f.summary(r in (*SHARED_NOISE, "auto")), "sampled_reads": reads}
                for r, f in by_res.items()
            }
            for name, by_res in figures.items()
        },
        "statuses": dict(statuses),
        "epsilon_spent_per_subject_per_day_from_ledger": str(Decimal(spent) / 1_000_000),
        "product_total_per_day": None if total is None else str(Decimal(total) / 1_000_000),
        "read_every_simulated_s": API_EVERY,
        "wall_s": round(wall, 1),
        "note": "answerable_minutes counts the sampled minutes (one read each "
        f"{API_EVERY // 60} simulated minutes) that answered 200; windows come from the "
        "processor's rows through the WindowSource seam (the Feast store is not in the loop)",
    }


# --------------------------------------------------------------------------- driver
def targets_met(tiles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    met: dict[str, Any] = {}
    for (tile, resolution), target in TARGETS.items():
        figures = tiles.get(tile, {}).get(resolution, {})
        error = figures.get("median_relative_error")
        met[f"{tile}@{resolution}"] = {
            "target": target,
            "median_relative_error": error,
            "met": error is not None and error <= target,
        }
    return met


def targets_over_replications(met: dict[str, Any], today: dict[str, Any]) -> dict[str, Any]:
    """``met`` (one draw per replayed day) with, for each 'today' target, the expected
    median relative error over the study's independent replications (shipped estimator)
    and the share of replicated days that meet it."""
    for tile, figures in today["errors"]["tiles"].items():
        entry = met.get(f"{tile}@today")
        if entry is None:
            continue
        shipped = figures["greedy"]
        errors = shipped["median_relative_error_vs_bounded"]
        entry["expected_over_replications"] = errors["mean"]
        entry["expected_over_replications_ci95"] = errors["mean_ci95"]
        entry["share_of_replicated_days_met"] = shipped["share_of_days_within_1pct"]
        entry["replications"] = today["errors"]["replications"]
    return met


def run_shape(shape: Shape) -> dict[str, Any]:
    import tempfile

    product = product_of()
    classes = {qc.id: qc for qc in load_query_classes().values() if qc.domain == DOMAIN}
    window = StreamSettings().window_seconds
    with tempfile.TemporaryDirectory(prefix="privmesh-utility-events-") as tmp:
        day = replay(shape, Path(tmp) / "events")
        advisor = advisor_figures(day, product, classes, window)
    day.events_folder = None
    # Later days: the same people, full days only (a partial day has no 'today' to follow).
    people = make_people(shape.people, shape.seed, shape.activity_sigma)
    count = DAYS if shape.hours == 24 else 1
    days = [day] + [replay(shape, None, d, people) for d in range(1, count)]
    began = time.perf_counter()
    tiles, spent = hierarchy_figures(days, classes, product, window, VERSION)
    dp_wall = time.perf_counter() - began
    began = time.perf_counter()
    baseline, _ = hierarchy_figures(days, classes, product, window, 1)
    baseline_wall = time.perf_counter() - began
    began = time.perf_counter()
    today = {
        "errors": today_error_study(day, classes, product, window, STUDY_REPLICATIONS),
        "coverage": today_coverage(day, classes, product, window, COVERAGE_REPLICATIONS),
        "wall_s": 0.0,
    }
    today["wall_s"] = round(time.perf_counter() - began, 1)
    try:
        api: dict[str, Any] = api_figures(day, window)
    except Exception as exc:  # the layer is reported as not run, with why
        api = {"ran": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    bounds = product.contribution
    daily_classes = [
        qc for qc in classes.values() if qc.product == PRODUCT and qc.release == "daily"
    ]
    events = sum(d.events_sent for d in days)
    return {
        "shape": shape.__dict__,
        "orders_per_day": day.events_sent * 24 // day.hours,
        "orders_per_replayed_day": [d.events_sent for d in days],
        "days_replayed": len(days),
        "hours_replayed": day.hours,
        "events_replayed": events,
        "processor": {
            "wall_s": round(sum(d.wall_s for d in days), 1),
            "events_per_s": round(events / sum(d.wall_s for d in days)),
            "make_people_s": round(day.people_s, 2),
            "counters": dict(sorted(day.counters.items())),
            "windows": len(day.windows),
            "incomplete_windows": day.incomplete_windows,
            "contribution": bounds.model_dump(mode="json"),
        },
        "truncation_bias": truncation(day, window),
        "bound_advisor": advisor,
        "daily_hierarchy": {
            "version": VERSION,
            "structure": "levels [window, 1m, 1h], epsilon split by the cube-root rule",
            "tiles": tiles,
            "wall_s": round(dp_wall, 1),
            "epsilon_per_subject_per_day_by_class": spent,
            "epsilon_per_subject_per_day_total": str(
                sum(Decimal(qc.cost_micro) for qc in daily_classes) / 1_000_000
            ),
            "minutes_replayed": len(days) * 1440,
            "note": f"{len(days)} consecutive days, each day's structure with yesterday's as "
            "previous: '24h' and the first minute/hour of a day from the second day on; "
            "epsilon per subject per day is the classes' (the structure does not change it)",
        },
        "baseline_uniform_v1": {
            "version": 1,
            "structure": "levels [window, 1m, 1h, day], one scale levels x delta / epsilon",
            "tiles": baseline,
            "wall_s": round(baseline_wall, 1),
            "note": "the same days, classes, epsilon and sensitivities; other noise draws",
        },
        "median_error_v1_over_v2": {
            tile: {
                r: round(b["median_relative_error"] / tiles[tile][r]["median_relative_error"], 2)
                for r, b in by_res.items()
                if b.get("median_relative_error") and tiles[tile][r].get("median_relative_error")
            }
            for tile, by_res in baseline.items()
        },
        "api": api,
        "targets": targets_over_replications(targets_met(tiles), today),
        "today_so_far": today,
        "targets_baseline_v1": targets_met(baseline),
        "targets_via_api": targets_met(api["tiles"]) if "tiles" in api else None,
        "per_window_design": per_window_design(day, window),
        "independent_per_release": independent_design(day, classes, product, window),
    }


TODAY_RESULTS = Path(
    os.environ.get("BENCH_UTILITY_TODAY_OUT", str(RESULTS.with_name("utility_today.json")))
)


def today_main() -> None:
    """``python -m bench.utility today``: the 'today so far' study alone (the first day of
    each shape through the real processor, then the offline replications); writes
    bench/results/utility_today.json."""
    began = time.perf_counter()
    load_start = round(os.getloadavg()[0], 1)
    product = product_of()
    classes = {qc.id: qc for qc in load_query_classes().values() if qc.domain == DOMAIN}
    window = StreamSettings().window_seconds
    known = shapes()
    results: dict[str, Any] = {}
    for name in SHAPES:
        day = replay(known[name], None)
        step = time.perf_counter()
        errors = today_error_study(day, classes, product, window, STUDY_REPLICATIONS)
        errors["wall_s"] = round(time.perf_counter() - step, 1)
        step = time.perf_counter()
        coverage = today_coverage(day, classes, product, window, COVERAGE_REPLICATIONS)
        coverage["wall_s"] = round(time.perf_counter() - step, 1)
        results[name] = {"errors": errors, "coverage": coverage}
        print(name, json.dumps(results[name]), flush=True)
    result = {
        "benchmark": "utility_today",
        "shapes": results,
        "wall_s": round(time.perf_counter() - began, 1),
        "cores": os.cpu_count(),
        "load_avg_1m_start": load_start,
        "load_avg_1m_end": round(os.getloadavg()[0], 1),
    }
    TODAY_RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(result))


def main() -> None:
    began = time.perf_counter()
    load_start = round(os.getloadavg()[0], 1)
    known = shapes()
    results = {name: run_shape(known[name]) for name in SHAPES}
    result: dict[str, Any] = {
        "benchmark": "utility",
        "day": datetime.fromtimestamp(DAY_START, tz=UTC).date().isoformat(),
        "hours_replayed": {name: r["hours_replayed"] for name, r in results.items()},
        "days_replayed": {name: r["days_replayed"] for name, r in results.items()},
        "layers": {
            "processor": "ran: ProductPipeline.route/drain/window_records over the day "
            "(no broker, no Faust worker)",
            "dp": "ran: DailyHierarchy per shipped daily class and stream",
            "api": {
                name: "ran" if "tiles" in r["api"] else f"not run: {r['api'].get('error')}"
                for name, r in results.items()
            },
        },
        "shapes": results,
        "wall_s": round(time.perf_counter() - began, 1),
        "cores": os.cpu_count(),
        "load_avg_1m_start": load_start,
        "load_avg_1m_end": round(os.getloadavg()[0], 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    import sys

    today_main() if sys.argv[1:] == ["today"] else main()
