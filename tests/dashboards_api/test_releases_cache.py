"""A replica's memory of committed releases: an answer is served only once its ledger entry
is committed, and replicas sharing one ledger serve the same release and the same spend."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dashboards_api.cache import CommittedReleases
from dashboards_api.errors import BudgetExhausted
from dashboards_api.ledger import Commit, Ledger, PostgresLedger, SqliteLedger
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases import ReleaseService
from domains.registry import load_contracts
from tests.dashboards_api.per_window import raised_policy, window_classes
from tests.fakes import FakeWindowSource

CLASS = "shop.orders.distinct_customers"  # epsilon 1 a release
NOW = 1_795_427_055.0  # 5 s into a 10 s window; the last closed window starts at ...040
WINDOWS = {1_795_427_040 - 10 * i: 500 + i for i in range(20)}
NEWEST, OLDER, OLDEST = 1_795_427_040, 1_795_427_030, 1_795_427_020
PERIOD = "2026-11-23"


def replica(ledger: Ledger, budget_per_day: str | None = None) -> ReleaseService:
    """One API replica's release service over ``ledger`` (its own memory); ``CLASS`` with
    ``budget_per_day`` when given."""
    classes = window_classes()
    if budget_per_day is not None:
        qc = QueryClass.model_validate(
            {**classes[CLASS].model_dump(), "budget_per_day": budget_per_day}
        )
        classes[CLASS] = qc
    return ReleaseService(
        classes=classes,
        policy=raised_policy(),
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(WINDOWS)},
        ledger=ledger,
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=lambda: NOW,
        history_windows=100,
    )


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """A fresh database of this test alone (the ledger is append-only), dropped after."""
    import psycopg

    name = f"privmesh_cache_{uuid.uuid4().hex[:12]}"
    base, _, _ = postgres_url.rpartition("/")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def open_shared(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Ledger]:
    """Opens one more connection to a ledger shared by replicas (sqlite file or Postgres)."""
    if request.param == "sqlite":
        return lambda: SqliteLedger(tmp_path / "ledger.db")
    url: str = request.getfixturevalue("postgres_db")
    return lambda: PostgresLedger(url)


def same_release(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two answers are the same committed release (entry, value, interval, version)."""
    keys = ("ledger_entry", "value", "ci95", "data_version", "window", "released_at")
    return all(a[k] == b[k] for k in keys)


def test_two_replicas_over_one_ledger_answer_the_same_committed_release(
    open_shared: Callable[[], Ledger],
) -> None:
    """A release committed by one replica is what the other serves (reused, free), each
    replica's remembered release stays the ledger's, and both show the exact spend after
    either one commits."""
    ledger_a, ledger_b = open_shared(), open_shared()
    a, b = replica(ledger_a), replica(ledger_b)
    assert a.cached(CLASS, NEWEST) is None and b.cached(CLASS, NEWEST) is None
    first = a.release(CLASS, NEWEST)
    assert first["reused"] is False and first["epsilon_charged"] == "1"
    seen_by_b = b.cached(CLASS, NEWEST)
    assert seen_by_b is not None and seen_by_b["reused"] is True
    assert same_release(seen_by_b, first)
    again = b.release(CLASS, NEWEST)  # b asks it as a fresh request would: nothing spent
    assert same_release(again, first) and again["epsilon_charged"] == "0"
    # b commits another window; a sees it, and the spend both show counts both releases.
    second = b.release(CLASS, OLDER)
    assert second["reused"] is False
    seen_by_a = a.cached(CLASS, OLDER)
    assert seen_by_a is not None and same_release(seen_by_a, second)
    for service in (a, b):
        remembered = service.cached(CLASS, NEWEST)
        assert remembered is not None and same_release(remembered, first)
        assert remembered["budget"]["epsilon_spent"] == "2"
        assert service.budget(service.classes[CLASS])["epsilon_spent"] == "2"
    assert ledger_a.spent(CLASS, PERIOD) == ledger_b.spent(CLASS, PERIOD) == 2_000_000
    stored = ledger_a.find(CLASS, a.ledger_key(a.classes[CLASS], f"window:{NEWEST}"))
    assert stored is not None and stored.answer["value"] == first["value"]
    assert stored.id == first["ledger_entry"]


class FailingCommit(SqliteLedger):
    """A real sqlite ledger whose transactions fail at commit (as on a full disk): the row
    is written, then rolled back. Before any commit it asks ``probe`` what is served."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail = True
        self.probe: Callable[[], None] = lambda: None

    def commit_release(self, *args: Any, **kwargs: Any) -> Commit:
        self.probe()
        return super().commit_release(*args, **kwargs)

    @contextmanager
    def _serialised(self, key: str) -> Iterator[sqlite3.Connection]:
        with super()._serialised(key) as conn:
            yield conn
            if self.fail:
                raise sqlite3.OperationalError("database or disk is full")


def test_no_replica_serves_a_release_before_its_ledger_commit(tmp_path: Path) -> None:
    """While a release is being committed no replica serves it; a commit that fails after its
    row was written leaves nothing served or remembered anywhere, and the retry that commits
    is the one every replica serves from then on."""
    ledger = FailingCommit(tmp_path / "ledger.db")
    writer, other = replica(ledger), replica(SqliteLedger(tmp_path / "ledger.db"))
    probes: list[bool] = []

    def probe() -> None:  # inside the release path, just before the ledger commit
        probes.append(writer.cached(CLASS, NEWEST) is None and other.cached(CLASS, NEWEST) is None)

    ledger.probe = probe
    with pytest.raises(sqlite3.OperationalError):
        writer.release(CLASS, NEWEST)
    assert probes == [True]
    assert writer.cached(CLASS, NEWEST) is None and other.cached(CLASS, NEWEST) is None
    assert len(writer.committed) == 0 and len(other.committed) == 0
    assert ledger.entries(class_id=CLASS) == [] and ledger.spent(CLASS, PERIOD) == 0
    ledger.fail = False
    committed = writer.release(CLASS, NEWEST)
    assert probes == [True, True]
    served = other.cached(CLASS, NEWEST)
    assert served is not None and same_release(served, committed)
    assert [e.id for e in ledger.entries(class_id=CLASS)] == [committed["ledger_entry"]]


def test_a_refused_release_is_never_remembered(tmp_path: Path) -> None:
    """When the budget refuses a commit nothing is served for its window, by this replica or
    another, and the spend stays the budget."""
    path = tmp_path / "ledger.db"
    a, b = replica(SqliteLedger(path), "3"), replica(SqliteLedger(path), "3")
    budget = a.class_budget(a.classes[CLASS]) // 1_000_000
    assert budget == 3
    windows = sorted(WINDOWS, reverse=True)
    for window in windows[:budget]:
        a.release(CLASS, window)
    refused = windows[budget]
    with pytest.raises(BudgetExhausted):
        b.release(CLASS, refused)
    assert a.cached(CLASS, refused) is None and b.cached(CLASS, refused) is None
    spent = f"{budget}"
    assert a.budget(a.classes[CLASS])["epsilon_spent"] == spent
    assert b.budget(b.classes[CLASS])["epsilon_spent"] == spent


def test_a_forgotten_release_is_read_back_from_the_ledger(tmp_path: Path) -> None:
    """With room for one release, the older one is dropped and then read back from the
    ledger unchanged; a version never committed is looked up again each time (a miss is not
    remembered), so a commit elsewhere is found at once."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    elsewhere = SqliteLedger(tmp_path / "ledger.db")
    memory = CommittedReleases(ledger, capacity=1)
    first = ledger.commit_release("c", PERIOD, "w:1", 1, 10, {"value": 1}).entry
    second = ledger.commit_release("c", PERIOD, "w:2", 1, 10, {"value": 2}).entry
    memory.committed(first)
    memory.committed(second)
    assert len(memory) == 1
    assert memory.find("c", "w:1") == first and memory.find("c", "w:2") == second
    assert memory.find("c", "w:3") is None
    third = elsewhere.commit_release("c", PERIOD, "w:3", 1, 10, {"value": 3}).entry
    assert memory.find("c", "w:3") == third


def test_spend_counts_every_replicas_commits_and_is_recounted(tmp_path: Path) -> None:
    """The remembered spend adds commits made through any connection as they happen, per
    class and period, and equals a full count of the ledger after each commit."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    elsewhere = SqliteLedger(tmp_path / "ledger.db")
    now = [0.0]
    memory = CommittedReleases(ledger, recount_seconds=10, clock=lambda: now[0])
    assert memory.spent("c", PERIOD) == 0
    for i, (book, cost) in enumerate([(ledger, 3), (elsewhere, 5), (elsewhere, 7)]):
        book.commit_release("c", PERIOD, f"w:{i}", cost, 100, {"value": i})
        book.commit_release("other", PERIOD, f"w:{i}", 11, 100, {"value": i})
        now[0] += 4  # crosses a recount once
        assert memory.spent("c", PERIOD) == ledger.spent("c", PERIOD)
    assert memory.spent("c", PERIOD) == 15 and memory.spent("other", PERIOD) == 33
    assert memory.spent("c", "2026-11-24") == 0


def test_memory_refuses_nonsense_sizes(tmp_path: Path) -> None:
    """A capacity under one release or a recount interval of zero is refused, saying which."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    with pytest.raises(ValueError, match="capacity"):
        CommittedReleases(ledger, capacity=0)
    with pytest.raises(ValueError, match="recount_seconds"):
        CommittedReleases(ledger, recount_seconds=0)
