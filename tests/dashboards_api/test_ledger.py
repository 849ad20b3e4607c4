"""The ledger commits before release, reuses answers and never overspends."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from dashboards_api.errors import BudgetExhausted
from dashboards_api.ledger import Ledger, PostgresLedger, SqliteLedger, open_ledger

ANSWER = {"value": 3}


def _spend_many(path: str, versions: list[str], out: mp.Queue) -> None:  # type: ignore[type-arg]
    ledger = SqliteLedger(Path(path))
    ok = 0
    for version in versions:
        try:
            ledger.commit_release("c", "2026-11-23", version, 100_000, 1_000_000, {"value": 1})
            ok += 1
        except BudgetExhausted:
            pass
    ledger.close()
    out.put(ok)


def exercise(ledger: Ledger) -> None:
    """Shared behaviour of every backend."""
    first = ledger.commit_release("cls", "2026-11-23", "w:1", 100_000, 500_000, ANSWER)
    assert not first.reused and first.spent_micro == 100_000
    again = ledger.commit_release("cls", "2026-11-23", "w:1", 100_000, 500_000, {"value": 99})
    assert again.reused and again.entry.answer == ANSWER and again.spent_micro == 100_000
    for i in range(2, 6):
        ledger.commit_release("cls", "2026-11-23", f"w:{i}", 100_000, 500_000, ANSWER)
    assert ledger.spent("cls", "2026-11-23") == 500_000
    with pytest.raises(BudgetExhausted) as refused:
        ledger.commit_release("cls", "2026-11-23", "w:6", 100_000, 500_000, ANSWER)
    assert refused.value.extra["spent_micro"] == 500_000
    # A refused request does not close the budget for a smaller one elsewhere or a new period.
    assert not ledger.commit_release("cls", "2026-11-24", "w:7", 100_000, 500_000, ANSWER).reused
    assert [e.data_version for e in ledger.entries(limit=2, class_id="cls")] == ["w:7", "w:5"]


def test_sqlite_ledger_behaviour(tmp_path: Path) -> None:
    """sqlite: reuse is free, five 0.1 releases fit 0.5 exactly, the sixth is refused."""
    exercise(SqliteLedger(tmp_path / "l.db"))


def test_sqlite_ledger_is_append_only(tmp_path: Path) -> None:
    """Entries can be neither updated nor deleted."""
    ledger = SqliteLedger(tmp_path / "l.db")
    ledger.commit_release("c", "p", "v", 1, 10, ANSWER)
    conn = sqlite3.connect(tmp_path / "l.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE releases SET cost_micro = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM releases")


def test_sqlite_ledger_never_overspends_across_processes(tmp_path: Path) -> None:
    """Four processes racing for 40 releases against a budget of 10 commit exactly 10."""
    path = tmp_path / "race.db"
    SqliteLedger(path).close()
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=_spend_many, args=(str(path), [f"p{p}v{i}" for i in range(10)], out))
        for p in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert sum(out.get(timeout=5) for _ in procs) == 10
    assert SqliteLedger(path).spent("c", "2026-11-23") == 1_000_000


def test_open_ledger_refuses_unknown_url(tmp_path: Path) -> None:
    """An unsupported ledger URL names the setting and the supported values."""
    with pytest.raises(ValueError, match="PRIVMESH_API_LEDGER_URL"):
        open_ledger("mysql://x", tmp_path)


@pytest.mark.integration
def test_postgres_ledger_behaviour(postgres_url: str) -> None:
    """Postgres ledger behaves like the sqlite one (fresh class id per run)."""
    import uuid

    import psycopg

    ledger = PostgresLedger(postgres_url)
    cls = f"cls-{uuid.uuid4()}"
    first = ledger.commit_release(cls, "2026-11-23", "w:1", 100_000, 200_000, ANSWER)
    assert not first.reused
    assert ledger.commit_release(cls, "2026-11-23", "w:1", 100_000, 200_000, {"value": 0}).reused
    ledger.commit_release(cls, "2026-11-23", "w:2", 100_000, 200_000, ANSWER)
    with pytest.raises(BudgetExhausted):
        ledger.commit_release(cls, "2026-11-23", "w:3", 100_000, 200_000, ANSWER)
    assert ledger.spent(cls, "2026-11-23") == 200_000
    with psycopg.connect(postgres_url, autocommit=True) as conn, pytest.raises(psycopg.Error):
        conn.execute("DELETE FROM releases WHERE class_id = %s", (cls,))
    ledger.close()


def _methods(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_the_ledger_protocol_is_three_narrow_ones_and_sql_backends_implement_each() -> None:
    """Releases, class/policy versions and tree nodes are separate protocols that share no
    method; the whole Ledger is their union (plus close) and both SQL backends have every
    method of each."""
    from dashboards_api.ledger import NodeStore, ReleaseLedger, VersionLedger

    parts = [_methods(ReleaseLedger), _methods(VersionLedger), _methods(NodeStore)]
    assert parts[0] == {
        "commit_release",
        "find",
        "spent",
        "spent_after",
        "product_spent",
        "entries",
    }
    assert parts[1] == {"save_class_version", "class_versions", "save_policy", "policy_versions"}
    assert parts[2] == {"get", "put"}
    assert sum(len(p) for p in parts) == len(set().union(*parts))
    assert {ReleaseLedger, VersionLedger, NodeStore} <= set(Ledger.__mro__)
    for backend in (SqliteLedger, PostgresLedger):
        assert all(callable(getattr(backend, name, None)) for p in parts for name in p)
