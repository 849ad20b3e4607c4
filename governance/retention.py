"""Retention: purge what every domain keeps past its contracts' ``retention_days``.

One pass (``privmesh retention run``; ``--every S`` repeats it, as ``privmesh up`` does
hourly) asks each domain's store to purge expired product events, window history and
statistics and the online rows of subjects not seen within retention
(``DomainFeatureStore.purge_expired``), then writes a tombstone for each expired subject
to the product's compacted profiles topic, so the broker compacts its key away. Every
pass is appended to ``<data_dir>/retention/runs.jsonl`` with what it removed. Ledger
entries are not touched: a released answer and its spend are the audit trail, and hold
no per-subject data. Product and dead-letter topics expire by their own retention.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domains.contract import DomainContract
from feature_repo.preaggregate import preaggregate_folder
from feature_repo.preaggregate import purge_before as purge_preaggregates
from feature_repo.store import DomainFeatureStore
from streams.producing import RawProducer
from streams.records import append_record, read_records
from streams.topics import ProductTopics


def run_retention(
    contracts: dict[str, DomainContract],
    stores: dict[str, DomainFeatureStore],
    producer: RawProducer | None,
    log_dir: Path,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One retention pass over ``contracts``' domains; the record it appended."""
    moment = now or datetime.now(UTC)
    began = time.monotonic()
    record: dict[str, Any] = {
        "run_id": f"retention-{moment.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
        "at": moment.isoformat(),
        "domains": {},
    }
    for domain, contract in sorted(contracts.items()):
        purged = stores[domain].purge_expired(moment)
        for rows in purged:  # the events' pre-aggregates (feature_repo.preaggregate) go too
            folder = preaggregate_folder(stores[domain].events_folder(rows.product))
            purge_preaggregates(folder, datetime.fromisoformat(rows.cutoff).timestamp())
        tombstones = 0
        for rows in purged:
            product = contract.product(rows.product)
            assert product is not None
            if producer is not None:
                topic = ProductTopics.of(domain, product).profiles
                for token in rows.expired_tokens:
                    producer.send(topic, None, key=token.encode())
                    tombstones += 1
        if producer is not None:
            producer.flush()
        record["domains"][domain] = {
            "products": [
                {k: v for k, v in asdict(rows).items() if k != "expired_tokens"}
                | {"expired_subjects": len(rows.expired_tokens)}
                for rows in purged
            ],
            "tombstones": tombstones,
        }
    record["seconds"] = round(time.monotonic() - began, 3)
    append_record(log_dir / "runs.jsonl", record)
    return record


def read_runs(log_dir: Path) -> list[dict[str, Any]]:
    """Every recorded retention pass, oldest first."""
    return read_records(log_dir / "runs.jsonl")
