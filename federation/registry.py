"""The model registry: every trained version with its weights and its lineage.

A version is named ``<task>-v<n>`` (n counts per task) and holds the final global
weights (``.npz`` bytes) and a lineage document: task and encoding, participating
domains with their example counts and metrics, rounds completed and lost, SecAgg+ and
DP parameters with the privacy spent, global metrics, code version (privmesh, Flower,
the FAB's hash, git commit) and timestamps. Versions are append-only. The registry is a
SQLite file under the data directory, or a Postgres database several hosts share
(``PRIVMESH_FEDERATION_REGISTRY_URL``); the catalog reads it.
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from federation.errors import UnknownModelVersion

_SCHEMA = """CREATE TABLE IF NOT EXISTS model_versions (
    version TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    lineage TEXT NOT NULL,
    weights {blob} NOT NULL,
    UNIQUE (task, seq)
)"""
_SERVING = """CREATE TABLE IF NOT EXISTS model_serving (
    task TEXT NOT NULL,
    domain TEXT NOT NULL,
    at TEXT NOT NULL,
    version TEXT NOT NULL REFERENCES model_versions (version),
    action TEXT NOT NULL,
    changed_by TEXT NOT NULL,
    metrics TEXT NOT NULL
)"""
_AUDITS = """CREATE TABLE IF NOT EXISTS model_audits (
    version TEXT NOT NULL REFERENCES model_versions (version),
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    result TEXT NOT NULL
)"""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model: its name, lineage and (loaded on demand) weights."""

    version: str
    task: str
    status: str
    created_at: str
    lineage: dict[str, Any]


def weights_to_bytes(weights: list[NDArray[np.float32]]) -> bytes:
    """Arrays as ``.npz`` bytes (``arr_0``, ``arr_1``, ... in ``state_dict`` order)."""
    buffer = io.BytesIO()
    np.savez(buffer, *weights)
    return buffer.getvalue()


def weights_from_bytes(blob: bytes) -> list[NDArray[np.float32]]:
    """The inverse of :func:`weights_to_bytes`."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def _pooled_auc(lineage: dict[str, Any]) -> float | None:
    auc = lineage.get("metrics", {}).get("global", {}).get("pooled_auc")
    return float(auc) if isinstance(auc, int | float) and math.isfinite(auc) else None


def dp_utility(
    lineage: dict[str, Any], earlier: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """A DP version's utility loss: its pooled AUC against the newest non-DP version of
    the same task in ``earlier`` (newest first), with the epsilon it was bought for."""
    auc = _pooled_auc(lineage)
    epsilon = lineage.get("dp", {}).get("epsilon_total")
    for version, baseline in earlier:
        base_auc = _pooled_auc(baseline)
        if baseline.get("dp", {}).get("enabled") or base_auc is None:
            continue
        return {
            "epsilon": epsilon,
            "baseline_version": version,
            "baseline_pooled_auc": base_auc,
            "pooled_auc": auc,
            "auc_loss": None if auc is None else base_auc - auc,
        }
    return {
        "epsilon": epsilon,
        "baseline_version": None,
        "pooled_auc": auc,
        "auc_loss": None,
        "reason": "no non-DP version of this task is registered: train one with --dp-noise 0 "
        "to measure what DP costs",
    }


class ModelRegistry:
    """Append-only model versions in SQLite or Postgres."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        if url == "sqlite":
            path = data_dir / "federation" / "registry.db"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._path: Path | None = path
            self._mark = "?"
            schema = _SCHEMA.format(blob="BLOB")
        elif url.startswith(("postgresql://", "postgres://")):
            self._path = None
            self._mark = "%s"
            schema = _SCHEMA.format(blob="BYTEA")
        else:
            raise ValueError(
                f"PRIVMESH_FEDERATION_REGISTRY_URL={url!r} is not supported; use 'sqlite' or "
                "'postgresql://...'"
            )
        with self._connect() as conn:
            conn.execute(schema)
            conn.execute(_AUDITS)
            conn.execute(_SERVING)

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        if self._path is not None:
            conn: Any = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.close()
            return
        import psycopg

        with psycopg.connect(self.url) as pg:
            pg.execute("SELECT pg_advisory_xact_lock(hashtext('privmesh.model_versions'))")
            yield pg

    def register(
        self, task: str, weights: list[NDArray[np.float32]], lineage: dict[str, Any], status: str
    ) -> str:
        """Store a new version of ``task``; returns its name."""
        m = self._mark
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT COALESCE(MAX(seq), 0) FROM model_versions WHERE task = {m}",
                (task,),
            ).fetchone()
            seq = int(row[0]) + 1
            version = f"{task}-v{seq}"
            created = datetime.now(UTC).isoformat(timespec="seconds")
            document = {**lineage, "version": version, "registered_at": created}
            if document.get("dp", {}).get("enabled"):
                earlier = conn.execute(
                    f"SELECT version, lineage FROM model_versions WHERE task = {m} "
                    "ORDER BY seq DESC",
                    (task,),
                ).fetchall()
                baselines = [(v, json.loads(doc)) for v, doc in earlier]
                document["dp"] = {**document["dp"], "utility": dp_utility(document, baselines)}
            conn.execute(
                "INSERT INTO model_versions (version, task, seq, status, created_at, lineage, "
                f"weights) VALUES ({m}, {m}, {m}, {m}, {m}, {m}, {m})",
                (
                    version,
                    task,
                    seq,
                    status,
                    created,
                    json.dumps(document),
                    weights_to_bytes(weights),
                ),
            )
        return version

    def versions(self, task: str | None = None) -> list[ModelVersion]:
        """Every version (of ``task``), newest first."""
        m = self._mark
        where, args = (f"WHERE task = {m}", (task,)) if task else ("", ())
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT version, task, status, created_at, lineage FROM model_versions "
                f"{where} ORDER BY created_at DESC, seq DESC",
                args,
            ).fetchall()
        return [ModelVersion(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def get(self, version: str) -> ModelVersion:
        """One version, or UnknownModelVersion listing what exists."""
        m = self._mark
        with self._connect() as conn:
            row = conn.execute(
                "SELECT version, task, status, created_at, lineage FROM model_versions "
                f"WHERE version = {m}",
                (version,),
            ).fetchone()
        if row is None:
            known = ", ".join(v.version for v in self.versions()[:10]) or "none yet"
            raise UnknownModelVersion(f"no model version {version!r} (recent: {known})")
        return ModelVersion(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def weights(self, version: str) -> list[NDArray[np.float32]]:
        """The weights of ``version``."""
        self.get(version)
        m = self._mark
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT weights FROM model_versions WHERE version = {m}",
                (version,),
            ).fetchone()
        return weights_from_bytes(bytes(row[0]))

    def record_audit(self, version: str, kind: str, result: dict[str, Any]) -> str:
        """Keep an audit of ``version`` (e.g. a membership-inference attack); returns its
        timestamp. Audits are appended: re-auditing keeps the history."""
        self.get(version)
        m = self._mark
        created = datetime.now(UTC).isoformat(timespec="seconds")
        with self._connect() as conn:
            conn.execute(
                f"INSERT INTO model_audits (version, kind, created_at, result) VALUES "
                f"({m}, {m}, {m}, {m})",
                (version, kind, created, json.dumps(result)),
            )
        return created

    def audits(self, version: str) -> list[dict[str, Any]]:
        """Every audit of ``version``, oldest first."""
        m = self._mark
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT kind, created_at, result FROM model_audits WHERE version = {m} "
                "ORDER BY created_at",
                (version,),
            ).fetchall()
        return [{"kind": r[0], "created_at": r[1], **json.loads(r[2])} for r in rows]

    def record_serving(
        self,
        task: str,
        domain: str,
        version: str,
        action: str,
        changed_by: str,
        metrics: dict[str, Any],
    ) -> str:
        """Append a serving change: from now on ``domain`` is served ``version`` of
        ``task``; returns its timestamp."""
        self.get(version)
        m = self._mark
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO model_serving (task, domain, at, version, action, changed_by, "
                f"metrics) VALUES ({m}, {m}, {m}, {m}, {m}, {m}, {m})",
                (task, domain, at, version, action, changed_by, json.dumps(metrics)),
            )
        return at

    def serving_history(self, task: str, domain: str | None = None) -> list[dict[str, Any]]:
        """Every serving change of ``task`` (for ``domain``), oldest first."""
        m = self._mark
        where, args = (f" AND domain = {m}", (task, domain)) if domain else ("", (task,))
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT domain, at, version, action, changed_by, metrics FROM model_serving "
                f"WHERE task = {m}{where} ORDER BY at",
                args,
            ).fetchall()
        return [
            {"domain": r[0], "at": r[1], "version": r[2], "action": r[3], "changed_by": r[4],
             "metrics": json.loads(r[5])}
            for r in rows
        ]  # fmt: skip

    def served(self, task: str, domain: str) -> str | None:
        """The version of ``task`` that ``domain`` is served now (None: none promoted)."""
        history = self.serving_history(task, domain)
        return history[-1]["version"] if history else None


def privmesh_version() -> str:
    """The installed privmesh package version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("privmesh")
    except PackageNotFoundError:
        return "unknown"


def open_registry(url: str | None = None, data_dir: Path | None = None) -> ModelRegistry:
    """The registry of the configured URL and data directory."""
    from domains.runtime import get_runtime_settings
    from federation.settings import get_federation_settings

    return ModelRegistry(
        url or get_federation_settings().registry_url,
        (data_dir or get_runtime_settings().data_dir).resolve(),
    )
