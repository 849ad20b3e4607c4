"""The durable, append-only privacy ledger.

A release is returned only after its ledger entry is committed. The entry and the
budget check happen in one serialised transaction (sqlite ``BEGIN IMMEDIATE``;
Postgres transaction-scoped advisory lock per class), so concurrent requests in
any number of processes never overspend. The released answer is stored with the
entry: the same class and data version return the stored answer and spend nothing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from dashboards_api.errors import BudgetExhausted

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS releases (
        id {pk},
        class_id TEXT NOT NULL,
        period TEXT NOT NULL,
        data_version TEXT NOT NULL,
        cost_micro BIGINT NOT NULL CHECK (cost_micro >= 0),
        budget_micro BIGINT NOT NULL,
        answer TEXT NOT NULL,
        created_at TEXT NOT NULL,
        product TEXT NOT NULL DEFAULT '',
        UNIQUE (class_id, data_version)
    )""",
    "CREATE INDEX IF NOT EXISTS releases_by_period ON releases (class_id, period)",
    # Query classes changed at run time by domain owners: every version kept, newest wins.
    """CREATE TABLE IF NOT EXISTS class_versions (
        seq {pk},
        class_id TEXT NOT NULL,
        domain TEXT NOT NULL,
        definition TEXT NOT NULL,
        active BOOLEAN NOT NULL,
        changed_at TEXT NOT NULL,
        changed_by TEXT NOT NULL
    )""",
    # The governance policy: every version kept, newest applies.
    """CREATE TABLE IF NOT EXISTS policy_versions (
        seq {pk},
        definition TEXT NOT NULL,
        changed_at TEXT NOT NULL,
        changed_by TEXT NOT NULL
    )""",
    # Continual release: each tree node's noisy sum, drawn once and never changed.
    """CREATE TABLE IF NOT EXISTS continual_nodes (
        stream_id TEXT NOT NULL,
        level INTEGER NOT NULL,
        idx BIGINT NOT NULL,
        value BIGINT NOT NULL,
        PRIMARY KEY (stream_id, level, idx)
    )""",
]
_APPEND_ONLY = ("releases", "class_versions", "policy_versions", "continual_nodes")
# Ledgers created before per-product totals lack the column (dev data only).
_MIGRATIONS = [("product", "ALTER TABLE releases ADD COLUMN product TEXT NOT NULL DEFAULT ''")]
_INDEXES = [
    "CREATE INDEX IF NOT EXISTS releases_by_product ON releases (product, period)",
    # A class's spend read from the entries after a known id, from the index alone
    # (``spent_after``: what an API replica's cache reads on each answer).
    "CREATE INDEX IF NOT EXISTS releases_spend ON releases (class_id, period, id, cost_micro)",
]


@dataclass(frozen=True)
class LedgerEntry:
    """One committed release."""

    id: int
    class_id: str
    period: str
    data_version: str
    cost_micro: int
    budget_micro: int
    answer: dict[str, Any]
    created_at: str
    product: str = ""


@dataclass(frozen=True)
class ClassVersion:
    """One change of a run-time query class (``active`` False: withdrawn)."""

    seq: int
    class_id: str
    domain: str
    definition: str
    active: bool
    changed_at: str
    changed_by: str


@dataclass(frozen=True)
class PolicyVersion:
    """One version of the governance policy (``definition``: its JSON)."""

    seq: int
    definition: str
    changed_at: str
    changed_by: str


@dataclass(frozen=True)
class Commit:
    """Outcome of a release request: the entry, and whether it was a reuse."""

    entry: LedgerEntry
    reused: bool
    spent_micro: int


class ReleaseLedger(Protocol):
    """The releases of a ledger: commits under the budget, and what was spent and released
    (what the release path, the cache, the bounds advisor and the catalog read)."""

    def commit_release(
        self,
        class_id: str,
        period: str,
        data_version: str,
        cost_micro: int,
        budget_micro: int,
        answer: dict[str, Any],
        *,
        product: str = "",
        product_budget_micro: int | None = None,
    ) -> Commit:
        """Commit ``answer`` for (class, version) unless one exists; refuse overspend.

        ``cost_micro`` must fit the class's ``budget_micro`` for ``period`` and, when
        ``product_budget_micro`` is given, the total of every class of ``product``
        (``domain.product``) in the period.
        """
        ...

    def find(self, class_id: str, data_version: str) -> LedgerEntry | None:
        """The committed release of (class, version), if any."""
        ...

    def spent(self, class_id: str, period: str) -> int:
        """Micro-epsilon spent by ``class_id`` in ``period``."""
        ...

    def spent_after(self, class_id: str, period: str, after_id: int) -> tuple[int, int]:
        """Micro-epsilon spent by ``class_id`` in ``period`` in entries with an id above
        ``after_id``, and the largest id among them (``after_id`` when none).

        A class's entries become visible in id order (its commits are serialised and each
        draws its id inside), so adding these to the spend up to ``after_id`` gives the
        spend now, reading only the entries committed since.
        """
        ...

    def product_spent(self, product: str, period: str) -> int:
        """Micro-epsilon spent by every class of ``product`` in ``period``."""
        ...

    def entries(
        self,
        limit: int = 100,
        class_id: str | None = None,
        product: str | None = None,
        period: str | None = None,
    ) -> list[LedgerEntry]:
        """Most recent entries first, optionally of one class, data product or period."""
        ...


class VersionLedger(Protocol):
    """The run-time versions of query classes and of the governance policy (what the class
    registry reads and appends)."""

    def save_class_version(
        self, class_id: str, domain: str, definition: str, active: bool, changed_by: str
    ) -> int:
        """Append a version of a run-time query class; returns its sequence number."""
        ...

    def class_versions(self, after: int = 0, class_id: str | None = None) -> list[ClassVersion]:
        """Class versions with a sequence number above ``after``, oldest first."""
        ...

    def save_policy(self, definition: str, changed_by: str) -> int:
        """Append a version of the governance policy; returns its sequence number."""
        ...

    def policy_versions(self, after: int = 0) -> list[PolicyVersion]:
        """Governance policy versions with a sequence number above ``after``, oldest first."""
        ...


class NodeStore(Protocol):
    """Write-once storage of released node values, keyed by (stream, level, index).

    The value of a node is its noisy sum (true sum + noise, drawn once). ``put`` must never
    overwrite: when a value is already there it returns that one, so replicas that race to
    release the same node all publish the first value written. A SQL table
    ``(stream_id TEXT, level INT, idx BIGINT, noise BIGINT, PRIMARY KEY (stream_id, level,
    idx))`` with ``INSERT ... ON CONFLICT DO NOTHING`` followed by ``SELECT`` implements it.
    """

    def get(self, stream_id: str, level: int, index: int) -> int | None:
        """The stored value of a node, or None when the node was never released."""
        ...

    def put(self, stream_id: str, level: int, index: int, value: int) -> int:
        """Store ``value`` unless the node already has one; return the value now stored."""
        ...


class Ledger(ReleaseLedger, VersionLedger, NodeStore, Protocol):
    """A whole ledger backend: releases, class and policy versions, and the continual
    releases' tree nodes (:class:`NodeStore`) in one database.
    What is built from settings; each consumer types against the narrowest part it uses."""

    def close(self) -> None:
        """Release connections."""
        ...


def period_of(moment: datetime) -> str:
    """Budget period (UTC day) containing ``moment``."""
    return moment.astimezone(UTC).date().isoformat()


def _entry(row: tuple[Any, ...]) -> LedgerEntry:
    return LedgerEntry(
        id=int(row[0]),
        class_id=row[1],
        period=row[2],
        data_version=row[3],
        cost_micro=int(row[4]),
        budget_micro=int(row[5]),
        answer=json.loads(row[6]),
        created_at=row[7],
        product=row[8],
    )


_COLUMNS = (
    "id, class_id, period, data_version, cost_micro, budget_micro, answer, created_at, product"
)


class _SqlLedger(ABC):
    """The ledger logic both backends share; they differ in how they serialise a commit.

    SQL is written with ``?`` placeholders; a backend whose driver uses ``%s`` converts.
    """

    _placeholder = "?"
    _lock: threading.Lock
    _conn: Any  # sqlite3.Connection | psycopg.Connection: both have .execute(sql, params)

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self._placeholder)

    @abstractmethod
    def _serialised(self, key: str) -> AbstractContextManager[Any]:
        """A transaction in which no other commit under ``key`` can interleave.

        Commits are serialised per data product (every class of a product shares its
        total), so the class and product sums read inside are current.
        """

    def commit_release(
        self,
        class_id: str,
        period: str,
        data_version: str,
        cost_micro: int,
        budget_micro: int,
        answer: dict[str, Any],
        *,
        product: str = "",
        product_budget_micro: int | None = None,
    ) -> Commit:
        """See :class:`Ledger`."""
        with self._serialised(product or class_id) as conn:
            existing = conn.execute(
                self._sql(
                    f"SELECT {_COLUMNS} FROM releases WHERE class_id = ? AND data_version = ?"
                ),
                (class_id, data_version),
            ).fetchone()
            row = conn.execute(self._sql(_SPENT), (class_id, period)).fetchone()
            spent = int(row[0]) if row else 0
            if existing is not None:
                return Commit(_entry(existing), reused=True, spent_micro=spent)
            if spent + cost_micro > budget_micro:
                raise BudgetExhausted(
                    f"class {class_id!r} has spent {spent} of {budget_micro} "
                    f"micro-epsilon in period {period}; a release costs {cost_micro}",
                    spent_micro=spent,
                    budget_micro=budget_micro,
                    period=period,
                )
            if product_budget_micro is not None:
                row = conn.execute(self._sql(_PRODUCT_SPENT), (product, period)).fetchone()
                total = int(row[0]) if row else 0
                if total + cost_micro > product_budget_micro:
                    raise BudgetExhausted(
                        f"data product {product!r} has spent {total} of its total "
                        f"{product_budget_micro} micro-epsilon in period {period} over "
                        f"all its classes; a release of {class_id!r} costs {cost_micro}",
                        spent_micro=spent,
                        budget_micro=budget_micro,
                        product_spent_micro=total,
                        product_budget_micro=product_budget_micro,
                        period=period,
                    )
            created = datetime.now(UTC).isoformat()
            values = (class_id, period, data_version, cost_micro, budget_micro)
            inserted = conn.execute(
                self._sql(
                    "INSERT INTO releases (class_id, period, data_version, cost_micro, "
                    "budget_micro, answer, created_at, product) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
                ),
                (*values, json.dumps(answer, sort_keys=True), created, product),
            ).fetchone()
        entry = LedgerEntry(int(inserted[0]) if inserted else 0, *values, answer, created, product)
        return Commit(entry, reused=False, spent_micro=spent + cost_micro)

    def find(self, class_id: str, data_version: str) -> LedgerEntry | None:
        """See :class:`Ledger`."""
        rows = self._read(
            self._sql(f"SELECT {_COLUMNS} FROM releases WHERE class_id = ? AND data_version = ?"),
            (class_id, data_version),
        )
        return _entry(rows[0]) if rows else None

    def spent(self, class_id: str, period: str) -> int:
        """See :class:`Ledger`."""
        rows = self._read(self._sql(_SPENT), (class_id, period))
        return int(rows[0][0]) if rows else 0

    def spent_after(self, class_id: str, period: str, after_id: int) -> tuple[int, int]:
        """See :class:`Ledger`."""
        rows = self._read(self._sql(_SPENT_AFTER), (after_id, class_id, period, after_id))
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, after_id)

    def product_spent(self, product: str, period: str) -> int:
        """See :class:`Ledger`."""
        rows = self._read(self._sql(_PRODUCT_SPENT), (product, period))
        return int(rows[0][0]) if rows else 0

    def entries(
        self,
        limit: int = 100,
        class_id: str | None = None,
        product: str | None = None,
        period: str | None = None,
    ) -> list[LedgerEntry]:
        """See :class:`Ledger`."""
        filters = {"class_id": class_id, "product": product, "period": period}
        where = [f"{column} = ?" for column, value in filters.items() if value is not None]
        params = tuple(value for value in filters.values() if value is not None)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            self._sql(f"SELECT {_COLUMNS} FROM releases{clause} ORDER BY id DESC LIMIT ?"),
            (*params, limit),
        )
        return [_entry(r) for r in rows]

    def save_class_version(
        self, class_id: str, domain: str, definition: str, active: bool, changed_by: str
    ) -> int:
        """See :class:`Ledger`."""
        created = datetime.now(UTC).isoformat()
        with self._serialised(f"class:{class_id}") as conn:
            row = conn.execute(
                self._sql(
                    "INSERT INTO class_versions (class_id, domain, definition, active, "
                    "changed_at, changed_by) VALUES (?, ?, ?, ?, ?, ?) RETURNING seq"
                ),
                (class_id, domain, definition, active, created, changed_by),
            ).fetchone()
        return int(row[0])

    def class_versions(self, after: int = 0, class_id: str | None = None) -> list[ClassVersion]:
        """See :class:`Ledger`."""
        sql = (
            "SELECT seq, class_id, domain, definition, active, changed_at, changed_by "
            "FROM class_versions WHERE seq > ?"
        )
        params: tuple[Any, ...] = (after,)
        if class_id is not None:
            sql, params = sql + " AND class_id = ?", (after, class_id)
        rows = self._read(self._sql(sql + " ORDER BY seq"), params)
        return [ClassVersion(int(r[0]), r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows]

    def save_policy(self, definition: str, changed_by: str) -> int:
        """See :class:`Ledger`."""
        created = datetime.now(UTC).isoformat()
        with self._serialised("policy") as conn:
            row = conn.execute(
                self._sql(
                    "INSERT INTO policy_versions (definition, changed_at, changed_by) "
                    "VALUES (?, ?, ?) RETURNING seq"
                ),
                (definition, created, changed_by),
            ).fetchone()
        return int(row[0])

    def policy_versions(self, after: int = 0) -> list[PolicyVersion]:
        """See :class:`Ledger`."""
        rows = self._read(
            self._sql(
                "SELECT seq, definition, changed_at, changed_by FROM policy_versions "
                "WHERE seq > ? ORDER BY seq"
            ),
            (after,),
        )
        return [PolicyVersion(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def get(self, stream_id: str, level: int, index: int) -> int | None:
        """See :class:`NodeStore`."""
        rows = self._read(self._sql(_NODE), (stream_id, level, index))
        return int(rows[0][0]) if rows else None

    def put(self, stream_id: str, level: int, index: int, value: int) -> int:
        """See :class:`NodeStore`."""
        key = (stream_id, level, index)
        with self._lock:
            self._conn.execute(
                self._sql(
                    "INSERT INTO continual_nodes (stream_id, level, idx, value) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
                ),
                (*key, int(value)),
            )
            row = self._conn.execute(self._sql(_NODE), key).fetchone()
        return int(row[0])

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def close(self) -> None:
        """See :class:`Ledger`."""
        self._conn.close()


_SPENT = "SELECT COALESCE(SUM(cost_micro), 0) FROM releases WHERE class_id = ? AND period = ?"
_SPENT_AFTER = (
    "SELECT COALESCE(SUM(cost_micro), 0), COALESCE(MAX(id), ?) FROM releases "
    "WHERE class_id = ? AND period = ? AND id > ?"
)
_NODE = "SELECT value FROM continual_nodes WHERE stream_id = ? AND level = ? AND idx = ?"
_PRODUCT_SPENT = (
    "SELECT COALESCE(SUM(cost_micro), 0) FROM releases WHERE product = ? AND period = ?"
)


class SqliteLedger(_SqlLedger):
    """Ledger in a local sqlite file (one host; any number of processes on it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()  # one connection, used by the server's threads in turn
        self._conn = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._conn.execute(statement.format(pk="INTEGER PRIMARY KEY AUTOINCREMENT"))
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(releases)")}
        for column, statement in _MIGRATIONS:
            if column not in columns:
                self._conn.execute(statement)
        for statement in _INDEXES:
            self._conn.execute(statement)
        # Append-only: entries can be neither changed nor removed.
        for table in _APPEND_ONLY:
            for action in ("UPDATE", "DELETE"):
                self._conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action.lower()} BEFORE {action} "
                    f"ON {table} BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END"
                )

    @contextmanager
    def _serialised(self, key: str) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the database write lock: every process on the host waits.
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")


class PostgresLedger(_SqlLedger):
    """Ledger in Postgres, shared by several API replicas."""

    _placeholder = "%s"

    def __init__(self, url: str) -> None:
        import psycopg

        self._lock = threading.Lock()
        self._conn = psycopg.connect(url, autocommit=True)
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('privmesh.ledger.schema'))")
            for statement in _SCHEMA:
                self._conn.execute(statement.format(pk="BIGSERIAL PRIMARY KEY"))
            for _, statement in _MIGRATIONS:
                self._conn.execute(statement.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS"))
            for statement in _INDEXES:
                self._conn.execute(statement)
            self._conn.execute(
                "CREATE OR REPLACE FUNCTION privmesh_ledger_append_only() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'ledger is append-only'; END $$"
            )
            for table in _APPEND_ONLY:
                self._conn.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
                self._conn.execute(
                    f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION privmesh_ledger_append_only()"
                )

    @contextmanager
    def _serialised(self, key: str) -> Iterator[Any]:
        # A transaction-scoped advisory lock per product serialises every replica's commits.
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
            yield self._conn


def open_ledger(url: str, data_dir: Path) -> Ledger:
    """The ledger named by ``url`` (``sqlite`` or ``postgresql://...``)."""
    if url == "sqlite":
        return SqliteLedger(data_dir / "ledger" / "ledger.db")
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(url)
    raise ValueError(
        f"PRIVMESH_API_LEDGER_URL={url!r} is not supported; use 'sqlite' or 'postgresql://...'"
    )
