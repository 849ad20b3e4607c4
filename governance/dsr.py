"""Data-subject requests across every domain: access (what privmesh holds) and erasure.

A subject is named by the raw value of a privacy unit (an e-mail, a visitor id, a tail
number). The raw value is used only to derive the subject's tokens in each domain (every
product's unit type, every key version), never stored or logged. Access reads each
domain's online features and pseudonymised product events for those tokens, and lists
the model versions trained on a domain after the subject's first event there. Erasure
runs each domain's own erasure path (``streams.erasure.erase_subject``). Each request is
appended to ``<data_dir>/dsr/requests.jsonl`` with its completion time and per-domain
counts (tokens, not the identifier).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from domains.contract import DataProduct, DomainContract
from governance.subjects import check_subject
from streams.erasure import erase_subject, subject_tokens
from streams.keyring import DomainTokens
from streams.records import append_record, read_records

if TYPE_CHECKING:
    from feature_repo.store import DomainFeatureStore
    from federation.registry import ModelRegistry
    from streams.producing import RawProducer


class SubjectStore(Protocol):
    """What an access request reads of a domain's store: ``DomainFeatureStore``, or
    ``feature_repo.subject_reads.SqliteSubjectReader`` (the sqlite store, without Feast)."""

    def events_folder(self, product: DataProduct | str) -> Path:
        """Folder of ``product``'s pseudonymised event part files."""
        ...

    def subject_features(self, product: str, subjects: list[str]) -> list[dict[str, Any]]:
        """Online per-subject features (None values for unknown subjects)."""
        ...


@dataclass
class DsrRecord:
    """One request as logged: kind, timing, per-domain counts; never the identifier."""

    request_id: str
    kind: Literal["access", "erase"]
    requested_at: str
    completed_at: str = ""
    seconds: float = 0.0
    requested_by: str = ""
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)


def subject_access(
    contracts: dict[str, DomainContract],
    tokens: dict[str, DomainTokens],
    stores: Mapping[str, SubjectStore],
    registry: ModelRegistry,
    subject: str,
    log_dir: Path,
    requested_by: str,
) -> dict[str, Any]:
    """What privmesh holds about ``subject`` in every domain, as a readable export."""
    check_subject(subject)
    began, record = time.monotonic(), _start("access", requested_by)
    export: dict[str, Any] = {"request_id": record.request_id, "domains": {}}
    versions = registry.versions()
    for domain, contract in sorted(contracts.items()):
        token_set = subject_tokens(contract, tokens[domain], subject)
        found: dict[str, Any] = {"products": {}, "models": []}
        first_seen: float | None = None
        for product in contract.products:
            events = _events(
                stores[domain].events_folder(product), product.subject_field, token_set
            )
            online = _online(stores[domain], product.name, token_set)
            if events or online:
                found["products"][product.name] = {
                    "purpose": product.purpose,
                    "retention_days": product.retention_days,
                    "events": events,
                    "online_features": online,
                }
                times = [e[product.event_time] for e in events if e.get(product.event_time)]
                if times:
                    earliest = min(t.timestamp() for t in times)
                    first_seen = earliest if first_seen is None else min(first_seen, earliest)
        if first_seen is not None:
            found["models"] = [
                v.version
                for v in versions
                if domain in v.lineage.get("domains", {})
                and _started(v.lineage) is not None
                and first_seen <= _started(v.lineage)  # type: ignore[operator]
            ]
        if found["products"]:
            export["domains"][domain] = found
        record.domains[domain] = {
            "tokens": sorted(token_set),
            "events": sum(len(p["events"]) for p in found["products"].values()),
            "models": len(found["models"]),
        }
    _finish(record, began, log_dir)
    export["completed_at"] = record.completed_at
    return json.loads(json.dumps(export, default=_jsonable))


def subject_erase(
    contracts: dict[str, DomainContract],
    tokens: dict[str, DomainTokens],
    stores: dict[str, DomainFeatureStore],
    producer: RawProducer,
    subject: str,
    log_dir: Path,
    requested_by: str,
) -> DsrRecord:
    """Erase ``subject`` from every domain through each domain's erasure path."""
    check_subject(subject)
    began, record = time.monotonic(), _start("erase", requested_by)
    for domain, contract in sorted(contracts.items()):
        erased = erase_subject(
            contract, tokens[domain], stores[domain], producer, log_dir.parent / "erasures",
            subject, requested_by,
        )  # fmt: skip
        record.domains[domain] = {
            "erasure_id": erased.erasure_id,
            "online_rows": erased.online_rows,
            "offline_rows": erased.offline_rows,
            "tombstones": erased.tombstones,
        }
    _finish(record, began, log_dir)
    return record


def read_requests(log_dir: Path) -> list[dict[str, Any]]:
    """Every logged request, oldest first."""
    return read_records(log_dir / "requests.jsonl")


def _online(store: SubjectStore, product: str, token_set: set[str]) -> list[dict[str, Any]]:
    try:
        rows = store.subject_features(product, sorted(token_set))
    except Exception as exc:  # a Feast store's, whose module is then loaded
        feast_errors = sys.modules.get("feast.errors")
        if feast_errors is None or not isinstance(exc, feast_errors.FeatureViewNotFoundException):
            raise
        return []  # the domain's processor never registered its views
    return [row for row in rows if any(v is not None for k, v in row.items() if k != "subject")]


def _events(folder: Path, subject_field: str, token_set: set[str]) -> list[dict[str, Any]]:
    if not folder.is_dir():
        return []
    import pyarrow.dataset as ds

    from feature_repo.offline import part_files

    files = part_files(folder)
    if not files or not token_set:
        return []
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    table = dataset.to_table(filter=ds.field(subject_field).isin(sorted(token_set)))
    return table.to_pylist()


def _started(lineage: dict[str, Any]) -> float | None:
    text = lineage.get("started_at")
    return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else None


def _start(kind: Literal["access", "erase"], requested_by: str) -> DsrRecord:
    now = datetime.now(UTC)
    request_id = f"dsr-{kind}-{now.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    return DsrRecord(request_id, kind, now.isoformat(), requested_by=requested_by)


def _finish(record: DsrRecord, began: float, log_dir: Path) -> None:
    record.completed_at = datetime.now(UTC).isoformat()
    record.seconds = round(time.monotonic() - began, 3)
    append_record(log_dir / "requests.jsonl", asdict(record))


def _jsonable(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
