"""Commit, then reveal: no noisy value is readable before its ledger entry is committed,
and every kind of release passes through the one call."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import Any

import pytest

import dashboards_api.releases as releases_package
from dashboards_api.ledger import Commit, LedgerEntry, ReleaseLedger, SqliteLedger
from dashboards_api.releases import commit as commit_module
from dashboards_api.releases import service as service_module
from dashboards_api.releases.body import ReleaseBody
from dashboards_api.releases.commit import Sealed, Spend, commit_then_reveal

SPEND = Spend(
    class_id="c",
    period="2026-11-23",
    key="window:0|def=x",
    cost_micro=100_000,
    budget_micro=1_000_000,
    product="shop.orders",
    product_budget_micro=None,
)
PACKAGE = Path(releases_package.__file__).parent


class Draws:
    """A draw that counts its calls and returns fresh noise each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {"value": 40 + self.calls, "ci95": [0, 100]}


class FailingLedger(SqliteLedger):
    """A ledger whose commits fail (a lost connection, a refused budget)."""

    def commit_release(self, *args: Any, **kwargs: Any) -> Commit:
        raise RuntimeError("ledger unavailable")


def test_sealing_and_mapping_draw_nothing_and_show_nothing() -> None:
    """Building a sealed release, and composing an answer on it, draws no noise; the sealed
    object has no readable value (no attribute, repr or pickle shows it)."""
    draws = Draws()
    sealed = Sealed(draws).map(lambda answer: {**answer, "suppressed": False})
    assert draws.calls == 0
    assert "4" not in repr(sealed) and not hasattr(sealed, "value")
    assert not hasattr(sealed, "__dict__")
    with pytest.raises(TypeError):
        pickle.dumps(sealed)


def test_an_answer_is_drawn_in_the_call_and_returned_only_as_its_committed_row(
    tmp_path: Path,
) -> None:
    """The answer is drawn once inside the call; what comes back is the committed row, which
    the ledger already holds when the caller sees it."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    draws = Draws()
    commit = commit_then_reveal(ledger, SPEND, Sealed(draws))
    assert draws.calls == 1 and commit.reused is False
    stored = ledger.find(SPEND.class_id, SPEND.key)
    assert stored is not None and stored.answer == commit.entry.answer == {
        "value": 41,
        "ci95": [0, 100],
    }


def test_a_draw_that_loses_the_race_is_never_handed_out(tmp_path: Path) -> None:
    """When the same release is already committed, the call returns the stored row, not
    its own draw."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    first = commit_then_reveal(ledger, SPEND, Sealed(Draws()))
    draws = Draws()
    draws.calls = 10  # a different value: 51
    again = commit_then_reveal(ledger, SPEND, Sealed(draws))
    assert again.reused is True and again.entry.answer == first.entry.answer
    assert again.entry.answer["value"] == 41


def test_a_failing_commit_returns_nothing(tmp_path: Path) -> None:
    """A ledger whose commit raises: the answer path returns no value (the draw is
    unreachable), and the payment path draws no noise at all."""
    ledger = FailingLedger(tmp_path / "ledger.db")
    answer_draws, paid_draws = Draws(), Draws()
    with pytest.raises(RuntimeError, match="ledger unavailable"):
        commit_then_reveal(ledger, SPEND, Sealed(answer_draws))
    with pytest.raises(RuntimeError, match="ledger unavailable"):
        commit_then_reveal(ledger, SPEND, Sealed(paid_draws), {"epsilon": "0.1"})
    assert paid_draws.calls == 0
    assert ledger.entries() == []


def test_a_payment_is_committed_before_its_draw(tmp_path: Path) -> None:
    """With a payment row, the draw runs only once the payment's entry is in the ledger."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    seen: list[LedgerEntry | None] = []

    def draw() -> int:
        seen.append(ledger.find(SPEND.class_id, SPEND.key))
        return 7

    paid = commit_then_reveal(ledger, SPEND, Sealed(draw), {"epsilon": "0.1"})
    assert paid.value == 7 and seen[0] is not None and seen[0].id == paid.commit.entry.id
    assert seen[0].answer == {"epsilon": "0.1"}


def test_an_infinite_interval_is_refused_before_the_commit(tmp_path: Path) -> None:
    """An answer without a finite 95% interval is refused, and nothing is committed."""
    from dashboards_api.errors import MechanismRefused

    ledger = SqliteLedger(tmp_path / "ledger.db")
    with pytest.raises(MechanismRefused):
        commit_then_reveal(ledger, SPEND, Sealed(lambda: {"value": 1, "ci95": [float("-inf"), 3]}))
    assert ledger.entries() == []


def test_only_the_commit_module_opens_a_seal_or_writes_a_release() -> None:
    """In the release package (and the bound advisor), only commit.py reads a sealed draw or
    calls the ledger's commit_release, and every strategy module's noise is drawn inside a
    Sealed(...)."""
    bounds = PACKAGE.parent / "bounds.py"  # the bound advisor's release too
    for path in [*PACKAGE.glob("*.py"), bounds]:
        source = path.read_text()
        if path.name == "commit.py":
            continue
        assert "_Sealed__" not in source and "_open(" not in source, path.name
        assert "commit_release" not in source, path.name
    # The draws of each strategy are arguments of Sealed(...) (directly or via a function).
    draws = {
        "window.py": "mechanism.release",
        "events.py": "release_events",
        "running.py": "counter.release",
    }
    for name, call in draws.items():
        tree = ast.parse((PACKAGE / name).read_text())
        sealed_args = [
            ast.unparse(node.args[0])
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Sealed"
        ]
        assert any(call in arg or arg in ("total",) for arg in sealed_args), (name, sealed_args)
    daily = ast.parse((PACKAGE / "daily.py").read_text())
    made = [
        node
        for node in ast.walk(daily)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DayValues"
    ]
    assert len(made) == 1  # only in pay_day's Sealed(lambda: DayValues(...))
    assert "Sealed(lambda: DayValues(" in (PACKAGE / "daily.py").read_text()
    assert "commit_then_reveal(ledger, spend, Sealed(draw))" in bounds.read_text()


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Record every commit_then_reveal the service makes: (data version, payment?)."""
    calls: list[tuple[str, bool]] = []
    real = commit_module.commit_then_reveal

    def spy(ledger: ReleaseLedger, spend: Spend, sealed: Sealed[Any], *args: Any, **kw: Any) -> Any:
        calls.append((spend.key.partition("|def=")[0], bool(args)))
        return real(ledger, spend, sealed, *args, **kw)

    monkeypatch.setattr(service_module, "commit_then_reveal", spy)
    return calls


def test_every_kind_of_release_commits_through_the_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window, a continual running total, a daily value, a daily mean and an event-level
    release each commit their entries (payments and values) through commit_then_reveal,
    the returned answer is the committed row, and each is a valid ReleaseBody."""
    from tests.dashboards_api import test_api
    from tests.dashboards_api.releases import test_daily, test_events, test_running

    calls = _spy(monkeypatch)
    window = test_api.make_service(SqliteLedger(tmp_path / "w.db"), {1_795_427_040: 500})
    body = window.release(test_api.CLASS)
    assert calls == [("window:1795427040", False)]
    assert window.ledger.entries()[0].answer["value"] == body["value"]

    calls.clear()
    clock = test_running.Clock(test_running.START + 15)
    (tmp_path / "r").mkdir()
    running = test_running.make(tmp_path / "r", clock)
    total = running.release(test_running.RUNNING.id)
    start = test_running.START
    assert calls == [(f"horizon:{start}", True), (f"running:{start}:1", False)]
    assert total["horizon_epsilon"]["paid_by_ledger_entry"] < total["ledger_entry"]

    calls.clear()
    day = test_daily.DAY
    (tmp_path / "d").mkdir()
    service = test_daily.make(
        tmp_path / "d",
        test_daily.Clock(day + 5 * 3_600 + 15),
        test_daily.window_rows(day),
    )
    value = service.release(test_daily.COUNT, resolution="1h")
    assert calls[0] == (f"day:{day}", True) and calls[-1][1] is False
    assert calls[-1][0].startswith(f"day:{day}:1h:")
    assert value["daily_epsilon"]["paid_by_ledger_entry"] < value["ledger_entry"]

    calls.clear()
    mean = service.release(test_daily.MEAN, resolution="today")
    payments = [version for version, payment in calls if payment]
    assert payments == [f"day:{day}", f"day:{day}"]  # its revenue and order count days
    assert calls[-1] == (f"day:{day}:today:{day + 5 * 3_600 + 10}", False)
    assert mean["epsilon_charged"] == "0"

    calls.clear()
    events = test_events.make(tmp_path)
    histogram = events.release(test_events.HISTOGRAM)
    assert calls == [(histogram["data_version"], False)]
    # Every kind's answer is a ReleaseBody (what the route's OpenAPI 200 declares).
    for answer in (body, total, value, mean, histogram):
        parsed = ReleaseBody.model_validate(answer)
        assert parsed.user_level is not None and parsed.ledger_entry == answer["ledger_entry"]
        assert parsed.model_dump() == answer
