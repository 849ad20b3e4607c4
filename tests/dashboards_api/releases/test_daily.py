"""Daily classes: the day paid once before any node, every value committed free, every
resolution with its span and interval, the automatic resolution, public clamps, and a
dashboard polling a whole (simulated) day without a 429."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dashboards_api.errors import BudgetExhausted, InvalidParameters, NoDataYet
from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.policy import GovernancePolicy, PolicyCell
from dashboards_api.query_classes import (
    ProductBudget,
    QueryClass,
    load_product_budgets,
    load_query_classes,
)
from dashboards_api.releases import ReleaseService, event_query, privacy_unit_of
from dashboards_api.settings import ApiSettings
from domains.registry import load_contracts
from tests.dashboards_api.test_live import events
from tests.fakes import FakeWindowSource

DAY = 1_795_392_000  # 2026-11-23T00:00:00Z
WINDOW = 10
COUNT = "shop.orders.order_count"
REVENUE = "shop.orders.revenue_cents"
DISTINCT = "shop.orders.distinct_customers"
MEAN = "shop.orders.mean_order_cents"
SPAN_SECONDS = {"window": WINDOW, "1m": 60, "1h": 3_600}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def window_rows(
    first_day: int, days: int = 1, events: int = 100, amount: int = 5_000
) -> dict[int, dict[str, Any]]:
    """Rows of every window of ``days`` days: ``events`` orders of ``amount`` cents each, 5
    subjects new to the hour and 2 new to the day per window, bounded (and revenue capped per
    day) as the contract says."""
    return {
        first_day + WINDOW * i: {
            "distinct_subjects": max(events // 2, 1),
            "events": events,
            "amount_cents_sum": float(events * amount),
            "amount_cents_sum_cap": 100_658.0,
            "new_subjects_hour": 5,
            "new_subjects_period": 2,
            "max_records_per_period": 10,
            "max_windows_per_period": 10,
            "contribution_bound": 10,
        }
        for i in range(days * 86_400 // WINDOW)
    }


def make(
    path: Path,
    clock: Clock,
    rows: dict[int, dict[str, Any]],
    classes: dict[str, QueryClass] | None = None,
    ledger: SqliteLedger | None = None,
) -> ReleaseService:
    """The release service over fake window rows, the shipped classes and a sqlite ledger."""
    ledger = ledger or SqliteLedger(path / "ledger.db")
    ledger._conn.execute("PRAGMA synchronous=OFF")  # speed only: a test's ledger may be lost
    return ReleaseService(
        classes=classes or load_query_classes(),
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(rows=rows)},
        ledger=ledger,
        window_seconds=WINDOW,
        grace_seconds=2,
        lookback_windows=3,
        clock=clock,
        product_budgets=dict(load_product_budgets()),  # a copy: tests change theirs
    )


def half_width(answer: dict[str, Any]) -> float:
    """The unclamped 95% half-width of a count's answer (its upper end is never clamped)."""
    return float(answer["ci95"][1] - answer["value"])


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


class PaymentFirstLedger(SqliteLedger):
    """A ledger that fails a node write for a class whose day is not paid yet."""

    def put(self, stream_id: str, level: int, index: int, value: int) -> int:
        class_id, day, *_ = stream_id.split("|")
        paid = [e for e in self.entries(limit=1_000, class_id=class_id) if e.cost_micro > 0]
        assert any(e.data_version.startswith(f"{day}|") for e in paid), (
            f"node of {stream_id} written before its day was paid"
        )
        return super().put(stream_id, level, index, value)


def test_day_is_paid_before_any_node_and_values_cost_nothing(tmp_path: Path) -> None:
    """The first value of a day commits the class's epsilon (data version day:<start>) before
    any node is written; the value itself is committed at cost 0, and later values and
    repeated requests spend nothing more."""
    clock = Clock(DAY + 5 * 3_600 + 15)
    ledger = PaymentFirstLedger(tmp_path / "ledger.db")
    service = make(tmp_path, clock, window_rows(DAY), ledger=ledger)
    first = service.release(COUNT, resolution="1h")
    entries = sorted(ledger.entries(class_id=COUNT), key=lambda e: e.id)
    payment, value = entries
    assert payment.data_version.startswith(f"day:{DAY}|") and payment.cost_micro == 500_000
    assert (
        value.cost_micro == 0
        and value.id > payment.id == first["daily_epsilon"]["paid_by_ledger_entry"]
    )
    assert first["ledger_entry"] == value.id and value.answer["value"] == first["value"]
    again = service.release(COUNT, resolution="1h")
    assert again["reused"] is True and again["value"] == first["value"]
    for _ in range(30):
        clock.now += WINDOW
        later = service.release(COUNT)
        assert later["epsilon_charged"] == "0"
    assert service.budget(service.classes[COUNT])["epsilon_spent"] == "0.5"
    assert sum(e.cost_micro for e in ledger.entries(limit=1_000, class_id=COUNT)) == 500_000


def test_every_resolution_answers_with_its_span_and_interval(tmp_path: Path) -> None:
    """Each resolution's answer names it, spans exactly its period ending at the newest closed
    window (1m/1h: the last complete one) and holds its value inside its interval; 24h needs
    yesterday's structure, which a release yesterday paid for."""
    clock = Clock(DAY - 3_600)  # yesterday, 23:00
    service = make(tmp_path, clock, window_rows(DAY - 86_400, days=2))
    service.release(COUNT, resolution="today")
    clock.now = DAY + 5 * 3_600 + 30 * 60 + 15  # 05:30:15: the newest window ends 05:30:10
    t_end = DAY + 5 * 3_600 + 30 * 60 + 10
    expected = {
        "window": (t_end - 10, t_end),
        "1m": (t_end - 10 - 60, t_end - 10),
        "1h": (DAY + 4 * 3_600, DAY + 5 * 3_600),
        "today": (DAY, t_end),
        "24h": (t_end - 86_400, t_end),
    }
    for resolution, (start, end) in expected.items():
        answer = service.release(COUNT, resolution=resolution)
        assert answer["resolution"] == resolution
        assert answer["span"] == {"start": iso(start), "end": iso(end)}, resolution
        low, high = answer["ci95"]
        assert low <= answer["value"] <= high and high > low
        # 100 orders per window; the noise is far below the span's total
        assert abs(answer["value"] - 100 * (end - start) // WINDOW) <= high - low
    for resolution in ("1h", "today"):
        assert service.release(DISTINCT, resolution=resolution)["resolution"] == resolution
    for refused in ("window", "1m", "24h"):
        with pytest.raises(InvalidParameters, match="distinct"):
            service.release(DISTINCT, resolution=refused)


def test_auto_picks_the_finest_resolution_meeting_the_accuracy(tmp_path: Path) -> None:
    """With no resolution asked, the answer is the finest resolution whose 95% half-width is
    within the class's declared 5% of its value, and equals that resolution's own answer."""
    clock = Clock(DAY + 5 * 3_600 + 15)
    service = make(tmp_path, clock, window_rows(DAY))
    relative = service.classes[COUNT].accuracy.relative  # type: ignore[union-attr]
    explicit = {r: service.release(COUNT, resolution=r) for r in ("window", "1m", "1h", "today")}
    finest = next(r for r, a in explicit.items() if half_width(a) <= relative * a["value"])
    auto = service.release(COUNT)
    assert auto["resolution"] == finest == "1h"  # 100 orders a window: 1h is the first
    assert (auto["value"], auto["ci95"]) == (explicit[finest]["value"], explicit[finest]["ci95"])


def test_too_noisy_flags_and_offers_the_coarser_resolution(tmp_path: Path) -> None:
    """A value whose half-width is above half its magnitude says too_noisy; every answer
    names the next coarser resolution the class answers (none after the coarsest)."""
    clock = Clock(DAY + 5 * 3_600 + 15)
    service = make(tmp_path, clock, window_rows(DAY, events=1))
    answers = {r: service.release(COUNT, resolution=r) for r in ("window", "1m", "1h", "today")}
    for answer in answers.values():
        if answer["ci95"] == [0, 0]:  # noisy value below minus its half-width, clamped to 0
            assert answer["value"] == 0 and answer["too_noisy"]
        else:
            assert answer["too_noisy"] == (half_width(answer) > abs(answer["value"]) / 2)
    # one order a window against a half-width of about 288: too noisy unless the noise
    # passes twice its 95% width (about 1 in 800), at both fine resolutions about 1 in 10^6
    assert answers["window"]["too_noisy"] or answers["1m"]["too_noisy"]
    assert answers["window"]["coarser"] == "1m"
    assert not answers["today"]["too_noisy"] and answers["today"]["coarser"] == "24h"
    assert service.release(DISTINCT, resolution="today")["coarser"] is None


def test_values_and_intervals_are_clamped_to_public_bounds(tmp_path: Path) -> None:
    """With no orders at all, counts, sums and their intervals never go below 0 (noise would
    take about half of them below), and the mean stays within the measure's clamp."""
    clock = Clock(DAY + 5 * 3_600 + 15)
    service = make(tmp_path, clock, window_rows(DAY, events=0))
    for _ in range(20):
        clock.now += WINDOW
        for class_id in (COUNT, REVENUE):
            answer = service.release(class_id, resolution="window")
            assert answer["value"] >= 0 and answer["ci95"][0] >= 0
        mean = service.release(MEAN, resolution="window")
        assert 0 <= mean["ci95"][0] <= mean["value"] <= mean["ci95"][1] <= 20_000


@pytest.mark.parametrize("applied", [None, 100_659.0, 200_000.0])
def test_rows_counted_without_the_contracts_day_cap_are_refused(
    tmp_path: Path, applied: float | None
) -> None:
    """Revenue's sensitivity assumes the contract's per-day cap (100658 cents): windows
    written by a processor that applied none, or a looser one, are refused for revenue and
    the mean before anything is paid; the order count (no measure) still answers."""
    rows = window_rows(DAY)
    for row in rows.values():
        if applied is None:
            del row["amount_cents_sum_cap"]
        else:
            row["amount_cents_sum_cap"] = applied
    service = make(tmp_path, Clock(DAY + 5 * 3_600 + 15), rows)
    for class_id in (REVENUE, MEAN):
        with pytest.raises(NoDataYet, match="max_sum_per_period 100658"):
            service.release(class_id, resolution="1h")
    assert service.product_budget("shop", "orders")["epsilon_spent"] == "0"  # type: ignore[index]
    assert service.release(COUNT, resolution="1h")["value"] is not None


def test_mean_is_the_ratio_of_its_paid_classes_and_costs_nothing(tmp_path: Path) -> None:
    """The mean is revenue / orders at one resolution and window end, near the true 5,000
    cents, inside its interval; it pays nothing itself (its parts pay their day once)."""
    clock = Clock(DAY + 5 * 3_600 + 15)
    service = make(tmp_path, clock, window_rows(DAY))
    mean = service.release(MEAN, resolution="today")
    assert mean["ci95"][0] <= mean["value"] <= mean["ci95"][1]
    assert abs(mean["value"] - 5_000) < 100
    assert service.budget(service.classes[MEAN])["epsilon_spent"] == "0"
    spent = service.product_budget("shop", "orders")
    assert spent is not None and spent["epsilon_spent"] == "1"  # revenue and orders, 0.5 each


def test_a_redefined_class_pays_its_day_afresh(tmp_path: Path) -> None:
    """A class redefined during the day (another epsilon) never serves the old definition's
    values: it pays its new epsilon and draws new nodes."""
    base = load_query_classes()[COUNT]
    roomy = base.model_copy(update={"budget_per_day": Decimal(1)})
    clock = Clock(DAY + 5 * 3_600 + 15)
    service = make(tmp_path, clock, window_rows(DAY), classes={COUNT: roomy})
    first = service.release(COUNT, resolution="1h")
    service.classes[COUNT] = roomy.model_copy(update={"epsilon_per_release": Decimal("0.25")})
    second = service.release(COUNT, resolution="1h")
    assert second["reused"] is False and second["definition"] != first["definition"]
    assert (
        second["daily_epsilon"]["paid_by_ledger_entry"]
        != first["daily_epsilon"]["paid_by_ledger_entry"]
    )
    assert service.budget(service.classes[COUNT])["epsilon_spent"] == "0.75"
    # Back to the first definition: its day is paid, its values are served again.
    service.classes[COUNT] = roomy
    assert service.release(COUNT, resolution="1h")["value"] == first["value"]
    # A third definition has no room left (1 a day).
    service.classes[COUNT] = roomy.model_copy(update={"epsilon_per_release": Decimal("0.3")})
    with pytest.raises(BudgetExhausted):
        service.release(COUNT, resolution="1h")


def test_a_dashboard_polling_all_day_never_meets_a_429(tmp_path: Path) -> None:
    """A dashboard polling every class every 5 minutes of a whole simulated day gets an answer
    every time, and each class spends exactly its epsilon for the day (the product its
    total of the daily classes, 1.5)."""
    clock = Clock(DAY + 12)
    service = make(tmp_path, clock, window_rows(DAY))
    answered = 0
    while clock.now < DAY + 86_400:
        for class_id in (COUNT, REVENUE, DISTINCT, MEAN):
            answer = service.release(class_id)
            assert answer["value"] is not None and answer["budget_lasts_until"] == iso(DAY + 86_400)
            answered += 1
        clock.now += 300  # every 5 minutes (a minute's cadence only adds run time)
    assert answered == 4 * 288
    period = iso(DAY)[:10]
    for class_id, spent in ((COUNT, 500_000), (REVENUE, 500_000), (DISTINCT, 500_000), (MEAN, 0)):
        assert service.ledger.spent(class_id, period) == spent
    assert service.ledger.product_spent("shop.orders", period) == 1_500_000


def test_budget_lasts_until_the_day_end_or_the_current_cadence(tmp_path: Path) -> None:
    """A daily class's budget lasts the day whatever the cadence; a per-window class's runs
    out at its spend per second so far today: 0.5 of 1 spent in the day's first 6 hours
    (and 15 s) lasts another 6 hours (and 15 s)."""
    per_window = QueryClass.model_validate(
        {
            "id": "shop.orders.per_window",
            "title": "Distinct customers per window",
            "domain": "shop",
            "product": "orders",
            "aggregate": "count_distinct_subjects",
            "epsilon_per_release": "0.1",
            "budget_per_day": "1",
        }
    )
    clock = Clock(DAY + 6 * 3_600 + 15)
    classes = {COUNT: load_query_classes()[COUNT], per_window.id: per_window}
    service = make(tmp_path, clock, window_rows(DAY), classes=classes)
    service.product_budgets["shop.orders"] = ProductBudget(budget_per_day=Decimal(2))
    assert service.release(COUNT)["budget_lasts_until"] == iso(DAY + 86_400)
    fresh = service.release(per_window.id)
    assert fresh["budget_lasts_until"] == iso(DAY + 86_400)  # 0.1 of 1 in 6 h: the day ends first
    assert fresh["data_version"] == f"window:{service.last_closed()}"
    for i in range(1, 5):
        answer = service.release(per_window.id, service.last_closed() - WINDOW * i)
    assert answer["budget"]["epsilon_spent"] == "0.5"
    assert answer["budget_lasts_until"] == iso(DAY + 2 * (6 * 3_600 + 15))


def test_daily_classes_are_checked_when_defined() -> None:
    """A distinct count at a resolution without a meaning, a mean that pays, a daily
    histogram and a daily class without the subject-day unit are refused with the reason."""
    base = load_query_classes()[DISTINCT].model_dump(mode="json")
    with pytest.raises(ValueError, match="no meaning at 1m"):
        QueryClass.model_validate({**base, "resolutions": ["1m", "1h"]})
    with pytest.raises(ValueError, match="subject_day"):
        QueryClass.model_validate({**base, "privacy_unit": "subject"})
    mean = load_query_classes()[MEAN].model_dump(mode="json")
    with pytest.raises(ValueError, match="post-processing"):
        QueryClass.model_validate({**mean, "epsilon_per_release": "0.1"})
    with pytest.raises(ValueError, match="event class"):
        QueryClass.model_validate({**base, "aggregate": "histogram", "group_by": "payment_method"})


def test_policy_defaults_cap_every_product_at_two() -> None:
    """The governance defaults a privacy officer signs: epsilon 2 per subject per day per
    product, per class and per release; every shipped product total fits them exactly."""
    policy = GovernancePolicy()
    assert (
        policy.max_product_budget_per_day,
        policy.default_product_budget_per_day,
        policy.max_class_budget_per_day,
        policy.max_epsilon_per_release,
    ) == (Decimal(2), Decimal(2), Decimal(2), Decimal(2))
    totals = {k: b.budget_per_day for k, b in load_product_budgets().items()}
    assert totals == {k: Decimal(2) for k in ("shop.orders", "support.tickets", "web.page_views")}
    classes = load_query_classes()
    for key, total in totals.items():
        allocated = sum(c.budget_per_day for c in classes.values() if c.id.startswith(f"{key}."))
        assert allocated <= total
    assert all(c.release != "continual" for c in classes.values())
    assert PolicyCell().current == policy


def test_live_pushes_each_daily_value_per_new_window(tmp_path: Path) -> None:
    """The live stream pushes a daily class's value at its default resolution once per newly
    closed window, each free, after one payment for the day."""
    clock = Clock(DAY + 5 * 3_600 + 15)
    service = make(tmp_path, clock, window_rows(DAY))
    settings = ApiSettings(live_poll_seconds=0.02, live_keepalive_seconds=0.2)
    client = TestClient(create_app(service, None, settings))
    seen = []
    with client.stream("GET", f"/v1/live?classes={COUNT}") as response:
        for name, data in events(response.iter_lines()):
            assert name == "release" and data["class_id"] == COUNT
            assert data["resolution"] == "1h" and data["epsilon_charged"] == "0"
            seen.append(data["data_version"])
            if len(seen) == 3:
                break
            clock.now += WINDOW
    t_end = DAY + 5 * 3_600 + 10
    assert seen == [f"day:{DAY}:auto:{t_end + WINDOW * i}" for i in range(3)]
    assert service.ledger.spent(COUNT, iso(DAY)[:10]) == 500_000


def test_the_class_list_shows_each_products_user_level_budget(tmp_path: Path) -> None:
    """GET /v1/queries says per product the loss per subject per day (its total), the
    allocation per class, and what is spent and left today after a daily class paid."""
    clock = Clock(DAY + 5 * 3_600 + 15)
    service = make(tmp_path, clock, window_rows(DAY))
    client = TestClient(create_app(service))
    client.get(f"/v1/queries/{COUNT}", params={"resolution": "today"})
    listing = client.get("/v1/queries").json()
    orders = next(p for p in listing["products"] if p["product"] == "shop.orders")
    assert orders["privacy_unit"] == "subject_day"
    assert orders["epsilon_per_subject_per_day"] == "2"
    assert orders["allocation"] == {
        COUNT: "0.5",
        REVENUE: "0.5",
        DISTINCT: "0.5",
        MEAN: "0",
        "shop.orders.payment_methods": "0.1",
        "shop.orders.median_order_cents": "0.1",
    }
    assert orders["reserve_per_day"] == "0.3"  # shop.orders keeps 0.3 for planning
    assert (orders["epsilon_spent_today"], orders["epsilon_left_today"]) == ("0.5", "1.5")
    count = next(c for c in listing["classes"] if c["id"] == COUNT)
    assert count["resolutions"] == ["window", "1m", "1h", "today", "24h"]
    assert count["accuracy"] == {"relative": 0.05, "resolution": "1h"}
    refused = client.get(f"/v1/queries/{DISTINCT}", params={"resolution": "1m"})
    assert refused.status_code == 422 and "distinct" in refused.json()["detail"]


def test_shipped_distributions_are_user_level_over_yesterday() -> None:
    """The shipped histogram and median read yesterday's whole UTC day, each subject's
    records bounded by the contract's per-day bound (the class declares none), so one
    release protects the subject-day."""
    product = load_contracts()["shop"].product("orders")
    assert product is not None
    for class_id in ("shop.orders.payment_methods", "shop.orders.median_order_cents"):
        qc = load_query_classes()[class_id]
        assert (qc.window, qc.max_records_per_subject, privacy_unit_of(qc)) == (
            "1d",
            None,
            "subject_day",
        )
        bound = event_query(qc, product).max_records_per_subject
        assert bound == product.contribution.max_records_per_period == 10
