"""Event-level DP aggregates: exact bounded plans, OpenDP releases, and the Context baseline."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboards_api.errors import NoDataYet
from dashboards_api.event_aggregates import (
    FILTERED_SUMS_UP_TO,
    EventQuery,
    InvalidEventQuery,
    exact_plan,
    mechanisms_for,
    release,
    scan_events,
    sensitivity,
)
from domains.registry import get_contract
from feature_repo.offline import append_part

S, T, G, M = "visitor_id_token", "viewed_at", "page", "duration_ms"
CATEGORIES = ("home", "search", "product", "cart")
T0 = datetime(2026, 11, 1, tzinfo=UTC)
START, END = T0, T0 + timedelta(hours=1)
WEB = get_contract("web").products[0]

Row = tuple[str, int, str | None, float | None]  # subject, seconds after T0, key, measure


def events(rows: list[Row], float_measure: bool = False) -> pl.LazyFrame:
    """Product events in storage order, typed as the event files are."""
    return pl.LazyFrame(
        {
            S: [r[0] for r in rows],
            T: [T0 + timedelta(seconds=r[1]) for r in rows],
            G: [r[2] for r in rows],
            M: [r[3] for r in rows],
        },
        schema={
            S: pl.String,
            T: pl.Datetime("us", "UTC"),
            G: pl.String,
            M: pl.Float64 if float_measure else pl.Int64,
        },
    )


def query(aggregate: str, k: int = 2, grouped: bool = True, **extra: Any) -> EventQuery:
    """A query over ``events`` frames; measured aggregates read ``M`` within [0, 10]."""
    measured = aggregate in {"bounded_sum", "mean", "quantile"}
    return EventQuery(
        aggregate=aggregate,  # type: ignore[arg-type]
        subject=S,
        time=T,
        max_records_per_subject=k,
        epsilon=Decimal(extra.pop("epsilon", "1")),
        group_by=G if grouped else None,
        categories=CATEGORIES if grouped else (),
        measure=M if measured else None,
        bounds=(0, 10) if measured else None,
        **extra,
    )


def exact(rows: list[Row], q: EventQuery, float_measure: bool = False) -> list[tuple[Any, ...]]:
    """The exact plan's rows for ``rows``."""
    return exact_plan(events(rows, float_measure), q, START, END).collect().rows()


# ------------------------------------------------------------------- exact plans
def test_a_subject_over_k_keeps_k_records_shared_over_its_groups() -> None:
    """A subject with more than k records in the window keeps k in total over the groups
    (not k per group), shared in proportion to its records per group: floor(k n / N)
    each, the slots left to the largest remainders, ties to the earlier category."""
    rows: list[Row] = [
        ("a", 50, "cart", 1),
        ("a", 10, "home", 1),
        ("a", 20, "search", 1),
        ("a", 60, "home", 1),
        ("b", 5, "cart", 1),
    ]
    # a: home 2, search 1, cart 1 of N = 4, k = 2: home 1 (remainder 0); search and
    # cart 0 with remainders 2 each: the slot left goes to search, the earlier category
    assert exact(rows, query("histogram", k=2)) == [
        ("home", 1),
        ("search", 1),
        ("product", 0),
        ("cart", 1),
    ]
    assert exact(rows, query("histogram", k=3)) == [
        ("home", 1),  # 3 * 2 // 4 = 1, remainder 2; search and cart 0, remainders 3:
        ("search", 1),  # the two slots left go to them
        ("product", 0),
        ("cart", 2),
    ]
    assert exact(rows, query("count_records", k=2, grouped=False)) == [(3,)]
    assert exact(rows, query("count_records", k=3, grouped=False)) == [(4,)]


def test_window_is_half_open_and_categories_are_public() -> None:
    """Only records in [start, end) count; every category is present (missing ones 0, in
    the declared order), values outside the categories or null are dropped before the
    truncation, so they do not use up a subject's k."""
    hour = 3600
    rows: list[Row] = [
        ("a", -1, "home", 1),  # before the window
        ("a", 0, "other", 1),  # not a public category: dropped, does not count towards k
        ("a", 1, None, 1),
        ("a", 2, "search", 1),
        ("a", hour - 1, "search", 1),
        ("a", hour, "home", 1),  # end is exclusive
    ]
    assert exact(rows, query("histogram", k=2)) == [
        ("home", 0),
        ("search", 2),
        ("product", 0),
        ("cart", 0),
    ]


def test_measures_are_clamped_rounded_and_nulls_dropped() -> None:
    """Measures are clamped to the bounds (floats rounded after clamping); records without
    a measure are dropped before the truncation."""
    rows: list[Row] = [
        ("a", 1, "home", -7.0),
        ("a", 2, "home", None),
        ("a", 3, "home", 4.6),
        ("b", 1, "cart", 99.0),
        ("b", 2, "cart", 2.4),
        ("b", 3, "cart", 8.0),  # b has 3 records, k = 2: it keeps 2/3 of its sum 20
    ]
    assert exact(rows, query("bounded_sum"), float_measure=True) == [
        ("home", 5),
        ("search", 0),
        ("product", 0),
        ("cart", 13),  # floor(20 * 2 / 3)
    ]
    assert exact(rows, query("mean", grouped=False), float_measure=True) == [(18, 4)]
    [(values,)] = exact(rows, query("quantile", grouped=False, alpha=0.5, candidates=(0, 5)), True)
    assert sorted(values) == [0, 2, 5, 10]
    quantiles = exact(rows, query("quantile", alpha=0.5, candidates=(0, 5)), float_measure=True)
    assert [(key, sorted(v)) for key, v in quantiles] == [
        ("home", [0, 5]),
        ("search", []),
        ("product", []),
        ("cart", [2, 10]),
    ]


def test_distinct_subjects_per_group_where_they_keep_a_record() -> None:
    """A subject counts once in each group where it keeps a record; ungrouped, once."""
    rows: list[Row] = [
        ("a", 1, "home", None),
        ("a", 2, "home", None),
        ("a", 3, "cart", None),
        ("a", 4, "search", None),
        ("b", 1, "search", None),
    ]
    # a keeps 3 of 4: home 3 * 2 // 4 = 1, cart and search 0 with the larger remainders
    assert exact(rows, query("count_distinct_subjects", k=3)) == [
        ("home", 1),
        ("search", 2),
        ("product", 0),
        ("cart", 1),
    ]
    assert exact(rows, query("count_distinct_subjects", grouped=False)) == [(2,)]


def test_empty_window_gives_zeros_for_every_category() -> None:
    """With no event in the window every aggregate is 0 (or no values) for every category."""
    rows: list[Row] = [("a", -10, "home", 3)]
    assert exact(rows, query("histogram")) == [(c, 0) for c in CATEGORIES]
    assert exact(rows, query("mean")) == [(c, 0, 0) for c in CATEGORIES]
    assert exact(rows, query("count_records", grouped=False)) == [(0,)]


def shares(counts: dict[str | None, int], k: int, order: list[str | None]) -> dict[str | None, int]:
    """Records kept per cell of one subject: all when at most k; else k shared in
    proportion (largest remainder, ties to the earlier category)."""
    total = sum(counts.values())
    if total <= k:
        return dict(counts)
    kept = {g: k * n // total for g, n in counts.items()}
    left = k - sum(kept.values())
    ranked = sorted(counts, key=lambda g: (-(k * counts[g] % total), order.index(g)))
    for g in ranked[:left]:
        kept[g] += 1
    return kept


def reference(rows: list[Row], q: EventQuery) -> dict[str | None, Any]:
    """A direct implementation of the bounded aggregate (the plan's specification)."""
    span = (END - START).total_seconds()
    lo, hi = q.bounds or (0, 0)
    groups: list[str | None] = list(q.categories) if q.grouped else [None]
    admitted = [  # stable: ties stay in storage order
        r
        for r in sorted(rows, key=lambda r: r[1])
        if 0 <= r[1] < span
        and not (q.grouped and r[2] not in q.categories)
        and not (q.measure is not None and r[3] is None)
    ]

    def bounded(measure: float | None) -> int:
        return 0 if measure is None else round(min(max(measure, lo), hi))

    out: dict[str | None, Any] = dict.fromkeys(groups, 0)
    if q.aggregate in {"mean", "quantile"}:
        out = {g: [] for g in groups}
    if q.aggregate == "quantile":  # each subject's first k records by event time
        taken: dict[str, int] = defaultdict(int)
        for subject, _, key, measure in admitted:
            if taken[subject] < q.max_records_per_subject:
                taken[subject] += 1
                out[key if q.grouped else None].append(bounded(measure))
        return {g: sorted(v) for g, v in out.items()}
    cells: dict[str, dict[str | None, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in admitted:
        cells[row[0]][row[2] if q.grouped else None].append(row)
    for per_cell in cells.values():
        kept = shares({g: len(r) for g, r in per_cell.items()}, q.max_records_per_subject, groups)
        for g, records in per_cell.items():
            c, n = kept[g], len(records)
            values = [bounded(r[3]) for r in records]
            if q.aggregate == "count_distinct_subjects":
                out[g] += c > 0
            elif q.aggregate == "bounded_sum":
                out[g] += sum(values) * c // n
            elif q.aggregate == "mean":
                out[g].append((sum(values) * c // n, c))
            else:
                out[g] += c
    if q.aggregate == "mean":
        return {g: (sum(s for s, _ in v), sum(c for _, c in v)) for g, v in out.items()}
    return out


rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(-5, 3610),
        st.sampled_from([*CATEGORIES, "zzz", None]),
        st.one_of(st.none(), st.integers(-5, 30).map(float)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    rows=rows_strategy,
    aggregate=st.sampled_from(
        ["count_records", "count_distinct_subjects", "bounded_sum", "mean", "quantile"]
    ),
    grouped=st.booleans(),
    k=st.integers(1, 4),
)
def test_exact_plan_matches_the_reference(
    rows: list[Row], aggregate: str, grouped: bool, k: int
) -> None:
    """For any small event list, the plan equals a direct implementation of the bounds."""
    extra: dict[str, Any] = {"alpha": 0.5, "candidates": (0, 5)} if aggregate == "quantile" else {}
    q = query(aggregate, k=k, grouped=grouped, **extra)
    found = exact(rows, q, float_measure=True)
    expected = reference(rows, q)
    keys = [r[0] for r in found] if grouped else [None]
    payloads = [r[1:] if grouped else r for r in found]
    values = [p if aggregate == "mean" else p[0] for p in payloads]
    if aggregate == "quantile":
        values = [sorted(v) for v in values]
    assert dict(zip(keys, values, strict=True)) == expected


MANY = tuple(f"page{i}" for i in range(FILTERED_SUMS_UP_TO + 2))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", None]),
            st.integers(-5, 3610),
            st.sampled_from([*CATEGORIES, *MANY[:3], None]),
            st.one_of(st.none(), st.integers(-5, 30).map(float)),
        ),
        max_size=40,
    ),
    aggregate=st.sampled_from(["count_records", "count_distinct_subjects", "bounded_sum", "mean"]),
    many=st.booleans(),
    k=st.integers(1, 4),
)
def test_grouped_sums_of_few_or_many_categories_and_null_subjects_match_the_reference(
    rows: list[Row], aggregate: str, many: bool, k: int
) -> None:
    """The grouped answer is the reference's whether its categories are summed in one
    filtered pass each (few) or by a group-by (more than FILTERED_SUMS_UP_TO), and records
    without a subject token are bounded together as one subject."""
    q = replace(query(aggregate, k=k), categories=MANY if many else CATEGORIES)
    found = exact(rows, q, float_measure=True)
    values = [r[1:] if aggregate == "mean" else r[1] for r in found]
    assert dict(zip([r[0] for r in found], values, strict=True)) == reference(rows, q)


def test_scan_events_reads_part_files_and_refuses_an_empty_folder(tmp_path: Path) -> None:
    """The scan reads every part file of the folder as one dataset; no files is NoDataYet."""
    with pytest.raises(NoDataYet):
        scan_events(tmp_path / "page_views_events")
    frame = events([("a", 1, "home", 1), ("b", 2, "cart", 3)]).collect()
    append_part(tmp_path / "page_views_events", frame.head(1).to_arrow())
    append_part(tmp_path / "page_views_events", frame.tail(1).to_arrow())
    scanned = scan_events(tmp_path / "page_views_events")
    assert exact_plan(scanned, query("bounded_sum"), START, END).collect().rows() == [
        ("home", 1),
        ("search", 0),
        ("product", 0),
        ("cart", 3),
    ]


# ------------------------------------------------------------------- queries
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_records_per_subject": 0}, "max_records_per_subject"),
        ({"epsilon": Decimal(0)}, "epsilon"),
        ({"categories": ()}, "group_by and categories"),
        ({"categories": ("a", "a")}, "distinct"),
        ({"measure": M, "bounds": (0, 1)}, "takes no measure"),
        ({"aggregate": "mean"}, "needs a measure"),
        ({"group_by": None, "categories": (), "aggregate": "histogram"}, "histogram needs"),
        ({"aggregate": "sum"}, "not one of"),
        ({"alpha": 0.5}, "quantiles only"),
    ],
)
def test_contradictory_queries_are_refused(change: dict[str, Any], message: str) -> None:
    """A query whose parameters contradict each other cannot be built, and says why."""
    with pytest.raises(InvalidEventQuery, match=message):
        replace(query("histogram"), **change)


def test_query_for_a_product_reads_its_contract() -> None:
    """Subject, time, public categories and integer bounds come from the contract (the
    bounds: its per-record contribution clamp, 0..300000 ms, not the field's 0..600000); a
    key without allowed_values is refused."""
    q = EventQuery.for_product(
        WEB, "mean", max_records_per_subject=5, epsilon=Decimal(1), group_by="country", measure=M
    )
    assert (q.subject, q.time, q.bounds) == (S, T, (0, 300_000))
    assert q.categories == ("DE", "FR", "NL", "ES", "IT", "GB", "US", "OTHER")
    with pytest.raises(InvalidEventQuery, match="allowed_values"):
        EventQuery.for_product(
            WEB, "histogram", max_records_per_subject=5, epsilon=Decimal(1), group_by="view_id"
        )


@pytest.mark.parametrize(
    ("aggregate", "grouped", "expected"),
    [
        ("count_records", True, 7),
        ("count_records", False, 7),
        ("count_distinct_subjects", True, 4),  # min(k, 4 categories)
        ("count_distinct_subjects", False, 1),
        ("bounded_sum", True, 70),
        ("mean", True, 35),  # k * max(hi - mid, mid - lo) with mid 5
    ],
)
def test_l1_sensitivity(aggregate: str, grouped: bool, expected: int) -> None:
    """One subject moves the answer vector by the documented L1 amount (k = 7, bounds
    [0, 10], 4 categories)."""
    assert sensitivity(query(aggregate, k=7, grouped=grouped)) == expected


# ------------------------------------------------------------------- releases
ALL_QUERIES = [
    query("count_records", grouped=False, epsilon="0.3"),
    query("histogram", k=3, epsilon="0.7"),
    query("count_distinct_subjects", k=9, epsilon="0.1"),
    query("bounded_sum", epsilon="2"),
    query("mean", epsilon="0.9"),
    query("quantile", k=5, alpha=0.9, candidates=(0, 2, 4, 6, 8, 10), epsilon="0.33"),
    query("bounded_sum", k=4, epsilon="0.6", max_sum_per_subject=15),
    query("mean", k=4, epsilon="0.8", max_sum_per_subject=12),
]


@pytest.mark.parametrize("q", ALL_QUERIES, ids=lambda q: f"{q.aggregate}-{q.grouped}")
def test_opendp_maps_each_release_within_epsilon(q: EventQuery) -> None:
    """OpenDP's own privacy maps of the measurements built for each aggregate, at the
    documented sensitivities, add up to at most the query's epsilon."""
    built = mechanisms_for(q)
    assert 0 < built.spent <= q.epsilon
    primary: Any = built.primary
    if q.aggregate == "quantile":
        k = q.max_records_per_subject
        assert Decimal(primary._measurement.map(k)) <= q.epsilon
        assert k * Decimal(primary._measurement.map(1)) <= q.epsilon  # spread over groups
    elif q.aggregate == "mean":
        assert built.count is not None
        loss = Decimal(primary._measurement.map(sensitivity(q)))
        loss += Decimal(built.count._measurement.map(q.max_records_per_subject))
        assert loss <= q.epsilon
    else:
        assert Decimal(primary._measurement.map(sensitivity(q))) <= q.epsilon
        assert primary.scale == pytest.approx(sensitivity(q) / float(q.epsilon), rel=1e-12)
    assert mechanisms_for(q) is built  # built once per query


@pytest.mark.parametrize("q", ALL_QUERIES, ids=lambda q: f"{q.aggregate}-{q.grouped}")
def test_release_shape_and_intervals(q: EventQuery) -> None:
    """A release has one value per category in order (one overall when ungrouped), each with
    its 95% half-width; Laplace half-widths are OpenDP's accuracy at the query's scale."""
    rows: list[Row] = [(f"s{i}", i, CATEGORIES[i % 3], i % 11) for i in range(60)]
    result = release(q, exact_plan(events(rows), q, START, END))
    expected_keys: list[str | None] = list(q.categories) if q.grouped else [None]
    assert [g.key for g in result.groups] == expected_keys
    assert result.epsilon_spent <= q.epsilon and result.aggregate == q.aggregate
    assert all(g.ci95_half_width is not None and g.ci95_half_width > 0 for g in result.groups)
    if q.aggregate in {"count_records", "histogram", "count_distinct_subjects", "bounded_sum"}:
        scale = sensitivity(q) / float(q.epsilon)
        expected = dp.discrete_laplacian_scale_to_accuracy(scale, 0.05)
        assert all(g.ci95_half_width == pytest.approx(expected) for g in result.groups)
        assert all(isinstance(g.value, int) for g in result.groups)
    if q.aggregate == "quantile":
        assert result.ci95_unit == "rank"
        assert all(g.value in q.candidates for g in result.groups)
    if q.aggregate == "mean":
        assert all(g.value is not None and 0 <= g.value <= 10 for g in result.groups)


def test_release_refuses_a_frame_with_other_groups() -> None:
    """Only exact_plan's frame (the public categories in order) is released."""
    q = query("histogram")
    frame = pl.DataFrame({G: ["home", "cart"], "value": [3, 4]})
    with pytest.raises(InvalidEventQuery, match="public categories"):
        release(q, frame)


def test_large_data_means_and_quantiles_are_near_the_truth() -> None:
    """With 20,000 subjects and epsilon 5, the noisy mean is within 0.05 of the bounded
    mean and the median candidate is the one nearest the true median."""
    rng = random.Random(3)
    rows: list[Row] = [
        (f"s{i}", rng.randrange(3600), CATEGORIES[i % 4], rng.randrange(11)) for i in range(20_000)
    ]
    truth = {c: [r[3] for r in rows if r[2] == c] for c in CATEGORIES}
    q = query("mean", epsilon="5")
    means = release(q, exact_plan(events(rows), q, START, END))
    for group in means.groups:
        values = truth[str(group.key)]
        assert group.value == pytest.approx(sum(values) / len(values), abs=0.05)  # type: ignore[arg-type]
        assert group.ci95_half_width is not None and group.ci95_half_width < 0.05
    median_q = query("quantile", grouped=False, alpha=0.5, candidates=tuple(range(11)), epsilon="5")
    median = release(median_q, exact_plan(events(rows), median_q, START, END)).groups[0]
    assert median.value == 5


def test_mean_interval_covers_the_bounded_mean() -> None:
    """The mean's 95% interval covers the bounded mean in at least 82% of 400 releases
    (Hoeffding: a correct interval fails this with probability < 1e-6)."""
    rows: list[Row] = [(f"s{i}", i, "home", (i * 7) % 11) for i in range(300)]
    q = query("mean", grouped=False, k=1, epsilon="0.5")
    frame = exact_plan(events(rows), q, START, END).collect()
    true_mean = frame["sum"][0] / frame["count"][0]
    covered = 0
    for _ in range(400):
        [group] = release(q, frame).groups
        assert group.value is not None and group.ci95_half_width is not None
        covered += abs(group.value - true_mean) <= group.ci95_half_width
    assert covered / 400 >= 0.95 - math.sqrt(math.log(1e6) / (2 * 400))


def test_quantile_rank_error_bound_holds() -> None:
    """The chosen median candidate's score exceeds the best candidate's by more than the
    released 95% rank half-width in at most 5% of 1,000 releases (plus Hoeffding slack for a
    1e-6 false-failure rate), with 101 close candidates and little budget."""
    rng = random.Random(5)
    values = [rng.randrange(101) for _ in range(2000)]
    candidates = tuple(range(101))
    q = EventQuery(
        "quantile",
        S,
        T,
        1,
        Decimal("0.02"),
        measure=M,
        bounds=(0, 100),
        alpha=0.5,
        candidates=candidates,
    )

    def score(c: int) -> float:  # OpenDP's quantile score, unscaled
        return abs(0.5 * sum(v < c for v in values) - 0.5 * sum(v > c for v in values))

    scores = {c: score(c) for c in candidates}
    best = min(scores.values())
    frame = pl.DataFrame({"values": [values]})
    beyond = 0
    for _ in range(1000):
        [group] = release(q, frame).groups
        assert group.ci95_half_width is not None and isinstance(group.value, int)
        beyond += scores[group.value] - best > group.ci95_half_width
    assert beyond / 1000 <= 0.05 + math.sqrt(math.log(1e6) / (2 * 1000))


def test_suppression_hides_small_noisy_counts_only() -> None:
    """Groups whose noisy count is below the threshold come back without a value (counts
    and means); others keep theirs; sums and quantiles refuse a threshold."""
    rows: list[Row] = [(f"s{i}", i, "home", 5) for i in range(2000)]
    rows += [("t", 1, "cart", 5)]
    q = query("histogram", epsilon="2")
    result = release(q, exact_plan(events(rows), q, START, END), suppress_below=100)
    assert [(g.key, g.suppressed) for g in result.groups] == [
        ("home", False),
        ("search", True),
        ("product", True),
        ("cart", True),
    ]
    assert result.groups[0].value is not None and result.groups[1].value is None
    means = release(query("mean"), exact_plan(events(rows), query("mean"), START, END), 100)
    assert [g.suppressed for g in means.groups] == [False, True, True, True]
    for refused in (query("bounded_sum"), query("quantile", alpha=0.5, candidates=(1,))):
        with pytest.raises(InvalidEventQuery, match="suppress_below"):
            release(refused, exact_plan(events(rows), refused, START, END), suppress_below=5)


def test_histogram_noise_has_the_declared_scale() -> None:
    """Over 5,000 releases of an 8-category histogram (40,000 noise draws, k = 20, epsilon 1:
    discrete Laplace scale 20), the share of |noise| >= 14 and the share of positive noise
    among non-zero draws match the distribution. Hoeffding with a union bound: a correct
    implementation fails with probability below 1e-6; a scale off by 10% fails."""
    categories = ("DE", "FR", "NL", "ES", "IT", "GB", "US", "OTHER")
    q = EventQuery("histogram", S, T, 20, Decimal(1), group_by="country", categories=categories)
    frame = pl.DataFrame({"country": list(categories), "value": [1000] * 8})
    draws = [g.value - 1000 for _ in range(5000) for g in release(q, frame).groups]  # type: ignore[operator]
    n, threshold = len(draws), 14
    t = math.exp(-1 / 20)  # P(X = x) = (1 - t) / (1 + t) * t^|x|
    expected_tail = 2 * t**threshold / (1 + t)
    slack = math.sqrt(math.log(2 / 5e-7) / (2 * n))  # each check fails w.p. <= 5e-7
    tail = sum(abs(d) >= threshold for d in draws) / n
    assert abs(tail - expected_tail) <= slack, (tail, expected_tail)
    nonzero = [d for d in draws if d]
    positive = sum(d > 0 for d in nonzero) / len(nonzero)
    assert abs(positive - 0.5) <= math.sqrt(math.log(2 / 5e-7) / (2 * len(nonzero)))
    wrong = 2 * math.exp(-threshold / 22) / (1 + math.exp(-1 / 22))  # a 10% larger scale
    assert abs(wrong - expected_tail) > 2 * slack  # the check would catch it


# ------------------------------------------------------------------- per-subject sum cap
def capped_reference(rows: list[Row], q: EventQuery) -> dict[str | None, Any]:
    """The reference with a per-subject cap M: a subject whose kept cell sums add up to
    T > M keeps floor(s M / T) of each cell's kept sum s (its counts unchanged)."""
    cap = q.max_sum_per_subject
    assert cap is not None
    one = dict.fromkeys(q.categories if q.grouped else (None,), 0)
    out: dict[str | None, Any] = dict(one)
    if q.aggregate == "mean":
        out = dict.fromkeys(one, (0, 0))
    for subject in sorted({r[0] for r in rows}, key=str):
        kept = reference([r for r in rows if r[0] == subject], q)
        sums = {g: v[0] if q.aggregate == "mean" else v for g, v in kept.items()}
        total = sum(sums.values())
        for g, v in kept.items():
            s = sums[g] * cap // total if total > cap else sums[g]
            out[g] = (out[g][0] + s, out[g][1] + v[1]) if q.aggregate == "mean" else out[g] + s
    return out


@settings(max_examples=120, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 3599),
            st.sampled_from([*CATEGORIES, "zzz"]),
            st.one_of(st.none(), st.integers(-5, 30).map(float)),
        ),
        max_size=40,
    ),
    aggregate=st.sampled_from(["bounded_sum", "mean"]),
    grouped=st.booleans(),
    k=st.integers(1, 6),
    cap=st.integers(0, 40),
)
def test_a_sum_cap_bounds_each_subjects_kept_sum(
    rows: list[Row], aggregate: str, grouped: bool, k: int, cap: int
) -> None:
    """With a cap M, each subject's kept sum over the window is at most M, shared over its
    cells in proportion (rounded down): the plan equals the capped reference."""
    q = replace(query(aggregate, k=k, grouped=grouped), max_sum_per_subject=cap)
    found = exact(rows, q, float_measure=True)
    keys = [r[0] for r in found] if grouped else [None]
    payloads = [r[1:] if grouped else r for r in found]
    values = [tuple(p) if aggregate == "mean" else p[0] for p in payloads]
    assert dict(zip(keys, values, strict=True)) == capped_reference(rows, q)


@pytest.mark.parametrize(
    ("aggregate", "cap", "expected"),
    [
        ("bounded_sum", 25, 25),  # min(k * 10, 25)
        ("bounded_sum", 500, 70),  # the cap does not bind
        ("mean", 25, 25),  # mid 0: min(k * 10, 25) beats max(k * 5, min(k * 5, 25)) = 35
        ("mean", 500, 35),  # mid 5: max(7 * 5, min(7 * 5, 500))
    ],
)
def test_a_sum_cap_lowers_sum_and_mean_sensitivities(
    aggregate: str, cap: int, expected: int
) -> None:
    """A capped sum's L1 sensitivity is min(k r, M); a capped mean shifts by 0 or the
    midpoint, whichever gives the smaller sensitivity (k = 7, bounds [0, 10])."""
    assert sensitivity(replace(query(aggregate, k=7), max_sum_per_subject=cap)) == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_sum_per_subject": -1}, "integer >= 0"),
        ({"max_sum_per_subject": True}, "integer >= 0"),
        ({"max_sum_per_subject": 2.5}, "integer >= 0"),
        ({"max_sum_per_subject": "9"}, "integer >= 0"),
        ({"bounds": (-3, 10), "max_sum_per_subject": 5}, "lo >= 0"),
    ],
)
def test_hostile_sum_caps_are_refused_in_queries(change: dict[str, Any], message: str) -> None:
    """A cap is an integer >= 0 over a non-negative measure, for sums and means only."""
    with pytest.raises(InvalidEventQuery, match=message):
        replace(query("bounded_sum"), **change)
    with pytest.raises(InvalidEventQuery, match="takes none"):
        replace(query("histogram"), max_sum_per_subject=5)


def test_a_product_cap_reaches_its_sum_and_mean_queries_only() -> None:
    """shop.orders' max_sum_per_period caps its event-level sums and means (floored to an
    integer), not its quantiles; the sum's sensitivity is the cap."""
    orders = get_contract("shop").products[0]
    cap = orders.sum_cap_of("amount_cents")
    assert cap is not None
    for aggregate in ("bounded_sum", "mean"):
        q = EventQuery.for_product(
            orders,
            aggregate,
            max_records_per_subject=10,
            epsilon=Decimal(1),
            measure="amount_cents",
        )
        assert q.max_sum_per_subject == math.floor(cap)
    assert sensitivity(replace(q, aggregate="bounded_sum")) == math.floor(cap)
    median = EventQuery.for_product(
        orders,
        "quantile",
        max_records_per_subject=10,
        epsilon=Decimal(1),
        measure="amount_cents",
        alpha=0.5,
        candidates=(0, 10_000, 20_000),
    )
    assert median.max_sum_per_subject is None
