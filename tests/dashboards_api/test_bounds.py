"""The bound advisor: DP quantiles of records per subject-day and of each measure, private
truncation shares, paid from the product's ledger before anything is shown.

The statistical test draws OpenDP noise (not seedable); its bounds are the mechanisms'
95% errors widened to a 1e-6 tail each, so the whole test fails falsely with probability
below 1e-5 (the data themselves come from a fixed numpy seed).
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dashboards_api.bounds import (
    RECORD_ALPHAS,
    RECORD_CANDIDATES,
    BoundsAdvice,
    advise,
    advisor_class,
    measure_candidates,
    subject_day_counts,
    suggest,
)
from dashboards_api.errors import BudgetExhausted, InvalidParameters
from dashboards_api.event_aggregates import scan_events
from dashboards_api.ledger import SqliteLedger
from domains.contract import DataProduct
from domains.registry import load_contracts

DAY = date(2026, 12, 1)
TOTAL = 2_000_000  # the product's daily total, micro-epsilon
PERIOD = DAY.isoformat()


@pytest.fixture(scope="module")
def orders() -> DataProduct:
    product = load_contracts()["shop"].product("orders")
    assert product is not None
    return product


def write_day(
    folder: Path, product: DataProduct, counts: np.ndarray, amounts: np.ndarray, seed: int = 0
) -> Path:
    """One day of events (subject ``s<i>`` has ``counts[i]`` records) as a part file, plus
    a few events of the next day that must not be counted."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat([f"s{i}" for i in range(len(counts))], counts)
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp()
    times = start + rng.uniform(0, 86_400, len(subjects))
    frame = pl.DataFrame(
        {
            product.subject_field: [*subjects.tolist(), "s0", "s0"],
            product.event_time: pl.Series(
                [*(times * 1e6).astype(np.int64), *[int((start + 90_000) * 1e6)] * 2]
            ).cast(pl.Datetime("us", "UTC")),
            "amount_cents": [*amounts.tolist(), 1.0, 1.0],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(folder / "part-00001.parquet")
    return folder


def test_measure_candidates_cover_the_bounds() -> None:
    """Candidates are increasing integers within the bounds, with both ends and 0."""
    grid = measure_candidates(0, 100_000)
    assert grid[0] == 0 and grid[-1] == 100_000 and grid == sorted(set(grid))
    # steps under 10% from 100 up (below, every few integers)
    assert max(b / a for a, b in itertools.pairwise(grid) if a >= 100) < 1.1
    signed = measure_candidates(-50.5, 20)
    assert signed[0] == -51 and signed[-1] == 20 and 0 in signed


def test_advisor_recovers_known_quantiles_within_the_dp_error(
    tmp_path: Path, orders: DataProduct
) -> None:
    """On 50,000 subject-days with known counts and amounts, each released quantile lies
    between the true quantiles at alpha -/+ its tail error (the 95% error widened 5x: about
    10 noise sd, a tail below 1e-6 even for a single discrete Laplace), and each truncation
    share is within 4x its 95% half-width of the exact share relative to the cap (again a
    tail below 1e-6)."""
    rng = np.random.default_rng(19)
    counts = np.minimum(rng.geometric(0.35, 50_000), 5_000)
    amounts = np.round(rng.lognormal(8.0, 1.0, int(counts.sum())))
    folder = write_day(tmp_path / "events", orders, counts, amounts)
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    advice = advise(scan_events(folder), "shop", orders, DAY, ledger, product_budget_micro=TOTAL)
    n = len(counts)
    for alpha in RECORD_ALPHAS:
        released = advice.record_quantiles[str(alpha)]
        # the tail count's error, and the noisy total's share of it
        slack = 5 * advice.record_errors[str(alpha)] / n + 0.001
        low = np.quantile(counts, max(alpha - slack, 0), method="inverted_cdf")
        high = np.quantile(counts, min(alpha + slack, 1), method="inverted_cdf")
        assert low <= released <= high, (alpha, released, low, high)
    cap = advice.cap
    total = np.minimum(counts, cap).sum()
    for candidate in advice.candidates:
        exact = 1 - np.minimum(counts, candidate.bound).sum() / total
        assert abs(candidate.dropped_share - exact) <= 4 * candidate.ci95 + 1e-9, candidate
    (measure,) = advice.measures
    assert measure.value is not None and measure.reliable
    kept = np.minimum(counts, measure.records_per_subject_day).sum()
    m_slack = 5 * measure.error / kept + 0.003  # + sampling of the first k records (sd 0.0005)
    low = np.quantile(amounts, 0.99 - m_slack)
    high = np.quantile(amounts, min(0.99 + m_slack, 1))
    assert low / 1.08 <= measure.value <= high * 1.08  # the grid's steps are under 8%
    assert all(advice.reliable.values())
    assert abs(advice.subject_days - n) < 0.05 * n  # over 20 noise scales
    assert advice.suggestion["max_records_per_period"] == advice.record_quantiles["0.99"]
    ledger.close()


def test_spend_is_committed_first_and_a_repeat_is_free(tmp_path: Path, orders: DataProduct) -> None:
    """The advice returned is the answer stored with its ledger entry, charged to the
    product in the day's period; asking again returns it and spends nothing."""
    counts = np.full(2_000, 2)
    folder = write_day(tmp_path / "events", orders, counts, np.full(4_000, 500.0))
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    eps = Decimal("0.4")
    advice = advise(
        scan_events(folder), "shop", orders, DAY, ledger, product_budget_micro=TOTAL, epsilon=eps
    )
    assert advice.epsilon == eps and not advice.reused
    assert ledger.product_spent("shop.orders", PERIOD) == 400_000
    (entry,) = ledger.entries(class_id=advisor_class("shop", "orders"))
    assert entry.id == advice.ledger_entry and entry.period == PERIOD
    assert BoundsAdvice.from_entry(entry, reused=False) == advice
    again = advise(
        scan_events(folder), "shop", orders, DAY, ledger, product_budget_micro=TOTAL, epsilon=eps
    )
    assert again.reused and again.record_quantiles == advice.record_quantiles
    assert ledger.product_spent("shop.orders", PERIOD) == 400_000
    ledger.close()


def test_refuses_when_the_products_budget_is_spent(tmp_path: Path, orders: DataProduct) -> None:
    """With the product's daily total already spent on the day, the advisor is refused
    (budget_exhausted) and nothing is stored; without a total it is refused outright."""
    folder = write_day(tmp_path / "events", orders, np.full(100, 1), np.full(100, 10.0))
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    ledger.commit_release(
        "shop.orders.order_count",
        PERIOD,
        "v1",
        1_800_000,
        TOTAL,
        {},
        product="shop.orders",
        product_budget_micro=TOTAL,
    )
    with pytest.raises(BudgetExhausted, match="bound advisor needs 1") as refused:
        advise(scan_events(folder), "shop", orders, DAY, ledger, product_budget_micro=TOTAL)
    assert refused.value.code == "budget_exhausted"
    assert ledger.entries(class_id=advisor_class("shop", "orders")) == []
    assert ledger.product_spent("shop.orders", PERIOD) == 1_800_000
    with pytest.raises(InvalidParameters, match="no daily privacy total"):
        advise(scan_events(folder), "shop", orders, DAY, ledger, product_budget_micro=None)
    with pytest.raises(InvalidParameters, match="epsilon"):
        advise(
            scan_events(folder),
            "shop",
            orders,
            DAY,
            ledger,
            product_budget_micro=TOTAL,
            epsilon=Decimal("-1"),
        )
    ledger.close()


def test_hostile_offline_data_does_not_crash_it(tmp_path: Path, orders: DataProduct) -> None:
    """NaN, infinite and huge measures, null subjects and times, and a subject with a
    million records are counted or dropped, never a crash; every value released is a
    candidate within the public bounds."""
    folder = tmp_path / "events"
    folder.mkdir()
    start = int(datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp() * 1e6)
    heavy = 1_000_000
    frame = pl.DataFrame(
        {
            orders.subject_field: [None, "a", "b", "c", "d", "e", *["h"] * heavy],
            orders.event_time: pl.Series(
                [start, None, start, start, start, start, *[start] * heavy]
            ).cast(pl.Datetime("us", "UTC")),
            "amount_cents": [1.0, 2.0, math.nan, math.inf, -math.inf, 1e300, *[3e18] * heavy],
        }
    )
    frame.write_parquet(folder / "part-00001.parquet")
    counts = subject_day_counts(scan_events(folder), orders, DAY).collect()
    assert sorted(counts["records"].to_list()) == [1, 1, 1, 1, heavy]
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    advice = advise(scan_events(folder), "shop", orders, DAY, ledger, product_budget_micro=TOTAL)
    assert all(v in RECORD_CANDIDATES for v in advice.record_quantiles.values())
    field = orders.field("amount_cents")
    assert field is not None and field.bounds is not None
    (measure,) = advice.measures
    assert measure.value is not None
    assert field.bounds.min <= measure.value <= field.bounds.max
    assert all(0 <= c.dropped_share <= 1 and math.isfinite(c.ci95) for c in advice.candidates)
    # five subject-days: no quantile is reliable, the contract's bound stays the suggestion
    assert not advice.reliable["0.99"]
    assert advice.suggestion["max_records_per_period"] == orders.contribution.max_records_per_period
    ledger.close()


@pytest.mark.parametrize(
    ("reliable", "current", "expected"),
    [
        ((True, True, True), 10, 8),  # a reliable 0.99 quantile is the suggestion
        ((True, True, False), 10, 10),  # the tail is not resolved: never lowered
        ((True, True, False), 3, 5),  # a reliable 0.95 quantile above the bound raises it
        ((False, False, False), 7, 7),
        ((True, True, False), None, None),  # no bound now and no reliable 0.99: none
        ((False, False, True), None, 8),
    ],
)
def test_suggest_lowers_only_on_a_reliable_top_quantile(
    reliable: tuple[bool, ...], current: int | None, expected: int | None
) -> None:
    """The suggested bound is the 0.99 quantile when reliable; else the current bound,
    raised to a reliable quantile above it (quantiles 4, 5, 8)."""
    values = {"0.9": 4, "0.95": 5, "0.99": 8}
    flags = dict(zip(values, reliable, strict=True))
    assert suggest(values, flags, current) == expected


def test_advisor_suggests_a_cap_from_subject_day_totals(
    tmp_path: Path, orders: DataProduct
) -> None:
    """On 40,000 subject-days whose records all have their subject's amount, the released
    quantiles of the day totals (first k records, each clamped) lie between the true ones at
    alpha -/+ 5 times their tail error (a tail below 1e-6 each, as above), and the
    suggested cap is the reliable 0.99 quantile."""
    rng = np.random.default_rng(7)
    counts = np.minimum(rng.geometric(0.5, 40_000), 50)
    per_subject = np.round(rng.uniform(100, 30_000, len(counts)))
    folder = write_day(tmp_path / "events", orders, counts, np.repeat(per_subject, counts))
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    advice = advise(scan_events(folder), "shop", orders, DAY, ledger, product_budget_micro=TOTAL)
    ledger.close()
    (caps,) = advice.sum_caps
    k, (lo, hi) = caps.records_per_subject_day, caps.clamp
    assert k == advice.suggestion["max_records_per_period"]
    totals = np.minimum(counts, k) * np.clip(per_subject, lo, hi)
    grid_step = 1.08  # the candidates' geometric steps are under 8%
    for alpha, released in caps.values.items():
        slack = 5 * caps.errors[alpha] / len(counts) + 0.001
        low = np.quantile(totals, max(float(alpha) - slack, 0), method="inverted_cdf")
        high = np.quantile(totals, min(float(alpha) + slack, 1), method="inverted_cdf")
        assert low / grid_step <= released <= high * grid_step, (alpha, released, low, high)
    assert caps.reliable["0.99"]
    assert advice.suggestion["max_sum_per_period"] == {"amount_cents": caps.values["0.99"]}
    assert BoundsAdvice.to_dict(advice)["sum_caps"][0]["measure"] == "amount_cents"


def test_the_advisor_pays_from_the_planning_room(tmp_path: Path, orders: DataProduct) -> None:
    """Without an epsilon the advisor spends the planning room (the product's total less its
    classes' allocations) when it is below 1; more than the room is refused, and so is a
    product whose classes are allocated its whole total."""
    folder = write_day(tmp_path / "events", orders, np.full(500, 2), np.full(1_000, 50.0))
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    events = scan_events(folder)
    with pytest.raises(BudgetExhausted, match="no planning room"):
        advise(events, "shop", orders, DAY, ledger, product_budget_micro=TOTAL,
               planning_budget_micro=0)  # fmt: skip
    with pytest.raises(BudgetExhausted, match="planning room"):
        advise(events, "shop", orders, DAY, ledger, product_budget_micro=TOTAL,
               planning_budget_micro=300_000, epsilon=Decimal("0.5"))  # fmt: skip
    advice = advise(
        events, "shop", orders, DAY, ledger, product_budget_micro=TOTAL,
        planning_budget_micro=300_000,
    )  # fmt: skip
    assert advice.epsilon == Decimal("0.3")
    assert ledger.spent(advisor_class("shop", "orders"), PERIOD) == 300_000
    ledger.close()
