"""Continual classes: one spend per horizon, every running total committed, nodes shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboards_api.errors import BudgetExhausted
from dashboards_api.ledger import SqliteLedger
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases import ReleaseService
from domains.registry import load_contracts
from tests.fakes import FakeWindowSource

HORIZON = 8
START = 1_795_426_560  # a multiple of 8 windows of 10 s
RUNNING = QueryClass.model_validate(
    {
        "id": "shop.orders.running",
        "title": "Orders so far in the horizon",
        "domain": "shop",
        "product": "orders",
        "aggregate": "count_records",
        "release": "continual",
        "horizon_windows": HORIZON,
        "privacy_unit": "subject_window",
        "epsilon_per_release": "1",
        "budget_per_day": "1",
    }
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(path: Path, clock: Clock) -> ReleaseService:
    rows = {
        START + 10 * i: {"distinct_subjects": 50, "events": 100 + i, "contribution_bound": 2}
        for i in range(2 * HORIZON)
    }
    return ReleaseService(
        classes={RUNNING.id: RUNNING},
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(rows=rows)},
        ledger=SqliteLedger(path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=clock,
    )


def test_one_spend_per_horizon_and_every_total_committed(tmp_path: Path) -> None:
    """Eight refreshes cost one epsilon; each total is in the ledger before it is returned."""
    clock = Clock(START + 10 + 5)  # window START has closed
    service = make(tmp_path, clock)
    totals = []
    for t in range(1, HORIZON + 1):
        answer = service.release(RUNNING.id)
        assert answer["running_total"]["t"] == t and answer["reused"] is False
        totals.append(answer["value"])
        clock.now += 10
    entries = service.ledger.entries(class_id=RUNNING.id)
    assert sum(e.cost_micro for e in entries) == 1_000_000
    assert len(entries) == HORIZON + 1  # the horizon's payment and eight totals
    assert service.budget(RUNNING)["epsilon_spent"] == "1"
    # Noise of scale L * sensitivity / epsilon = 4 * 2 / 1 on at most 4 nodes.
    truth = [sum(100 + i for i in range(t)) for t in range(1, HORIZON + 1)]
    assert all(abs(v - x) < 200 for v, x in zip(totals, truth, strict=True))
    assert [h["value"] for h in service.history(RUNNING.id, 100)] == totals


def test_totals_are_reused_and_shared_by_replicas(tmp_path: Path) -> None:
    """Asking again, or asking another replica on the same ledger, returns the same total."""
    clock = Clock(START + 10 * 4 + 5)
    first, second = make(tmp_path, clock), make(tmp_path, clock)
    answer = first.release(RUNNING.id)
    again = second.release(RUNNING.id)
    assert again["reused"] is True and again["value"] == answer["value"]
    # An earlier total computed later uses the same stored nodes: consistent prefixes.
    early = second.release(RUNNING.id, START)
    assert early["running_total"]["t"] == 1


def test_next_horizon_needs_budget(tmp_path: Path) -> None:
    """A new horizon is a new spend; with the day's budget used, it is refused with 429."""
    clock = Clock(START + 15)
    service = make(tmp_path, clock)
    service.release(RUNNING.id)
    clock.now += 10 * HORIZON
    with pytest.raises(BudgetExhausted):
        service.release(RUNNING.id)


def test_continual_needs_the_window_privacy_unit() -> None:
    """A continual class must declare privacy_unit subject_window; a distinct count is refused."""
    with pytest.raises(ValueError, match="subject_window"):
        QueryClass.model_validate({**RUNNING.model_dump(), "privacy_unit": "subject"})
    with pytest.raises(ValueError, match="running totals"):
        QueryClass.model_validate({**RUNNING.model_dump(), "aggregate": "count_distinct_subjects"})
