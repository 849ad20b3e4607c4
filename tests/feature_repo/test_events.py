"""Product-event files of the offline store: typed by the contract, one dataset, erasable."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from domains.contract import DomainContract
from domains.registry import load_contracts
from feature_repo.events import EVENT_TIME_TYPE, event_schema
from feature_repo.offline import part_files
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.keys import derive_domain_key
from streams.pseudonymise import Tokeniser
from streams.transform import Accepted, ProductTransform

# Every column kind: a generalised event time, a kept date and float, an optional int.
CLINIC = DomainContract.model_validate(
    {
        "domain": "clinic",
        "description": "Test domain.",
        "owner": "test@example.com",
        "products": [
            {
                "name": "visits",
                "description": "One event per visit.",
                "owner": "test@example.com",
                "purpose": "testing",
                "retention_days": 1,
                "privacy_unit": "patient",
                "event_time": "seen_at",
                "fields": [
                    {
                        "name": "patient",
                        "type": "string",
                        "description": "Patient id.",
                        "tag": "direct_identifier",
                        "protection": "tokenise",
                    },
                    {
                        "name": "seen_at",
                        "type": "timestamp",
                        "description": "When.",
                        "tag": "quasi_identifier",
                        "protection": "generalise",
                        "generalise": {"method": "truncate_time", "seconds": 3600},
                    },
                    {
                        "name": "booked_on",
                        "type": "date",
                        "description": "Booking day.",
                        "tag": "non_personal",
                    },
                    {
                        "name": "weight_kg",
                        "type": "float",
                        "description": "Weight.",
                        "tag": "sensitive",
                        "bounds": {"min": 0, "max": 300},
                    },
                    {
                        "name": "pain",
                        "type": "int",
                        "description": "Pain score.",
                        "tag": "sensitive",
                        "bounds": {"min": 0, "max": 10},
                        "required": False,
                    },
                    {
                        "name": "doctor",
                        "type": "string",
                        "description": "Doctor's name.",
                        "tag": "direct_identifier",
                        "protection": "drop",
                    },
                ],
            }
        ],
    }
)
[VISITS] = CLINIC.products
TRANSFORM = ProductTransform(VISITS, Tokeniser(derive_domain_key(b"c" * 32, "clinic", 1), 1))


def visit(patient: str, seen_at: str, pain: int | None = None) -> Accepted:
    """The accepted (pseudonymised) form of one raw visit."""
    raw: dict[str, object] = {
        "patient": patient,
        "seen_at": seen_at,
        "booked_on": "2026-10-30",
        "weight_kg": 71.5,
        "doctor": "Dr. Who",
    }
    if pain is not None:
        raw["pain"] = pain
    outcome = TRANSFORM.apply(json.dumps(raw).encode())
    assert isinstance(outcome, Accepted)
    return outcome


def test_schema_follows_the_published_fields_of_every_demo_product() -> None:
    """Each demo product's event columns are its published fields: dropped ones absent, the
    privacy unit as its token column, the event time a UTC timestamp, measures int64."""
    for contract in load_contracts().values():
        for product in contract.products:
            schema = event_schema(product)
            assert product.subject_field in schema.names
            assert schema.field(product.event_time).type == EVENT_TIME_TYPE
            for spec in product.fields:
                if spec.protection.value == "drop":
                    assert spec.name not in schema.names
                if spec.bounds is not None:
                    assert schema.field(spec.name).type == pa.int64()
            tags = {f.name: f.metadata[b"privacy_tag"].decode() for f in schema}
            assert tags[product.subject_field] == "direct_identifier"


def test_events_are_typed_and_read_back_as_one_dataset(tmp_path: Path) -> None:
    """Published dicts become typed columns (a generalised time as its coarse instant, dates,
    floats, nulls for an absent optional field) and part files of different batches scan as
    one polars dataset."""
    store = DomainFeatureStore(CLINIC, tmp_path, FeatureStoreSettings())
    first = [visit("ann", "2026-11-01T10:42:10+02:00", 3), visit("bob", "2026-11-01T09:05:00Z")]
    second = [visit("cid", "2026-11-01T11:59:59Z")]  # pain absent in the whole batch
    store.append_events("visits", [a.event for a in first])
    store.append_events(VISITS, [a.event for a in second])
    assert store.append_events("visits", []) is None  # an empty batch writes nothing

    folder = store.events_folder("visits")
    assert folder.name == "visits_events" and len(part_files(folder)) == 2
    frame = pl.scan_parquet(folder / "*.parquet").collect()
    assert frame.columns == ["patient_token", "seen_at", "booked_on", "weight_kg", "pain"]
    assert frame["seen_at"].to_list() == [
        datetime(2026, 11, 1, 8, tzinfo=UTC),
        datetime(2026, 11, 1, 9, tzinfo=UTC),
        datetime(2026, 11, 1, 11, tzinfo=UTC),
    ]
    assert frame["booked_on"].to_list() == [date(2026, 10, 30)] * 3
    assert frame["weight_kg"].to_list() == [71.5] * 3
    assert frame["pain"].to_list() == [3, None, None]
    assert frame["patient_token"].to_list() == [a.subject for a in first + second]
    assert "ann" not in frame.write_csv() and "Who" not in frame.write_csv()


def test_erasure_removes_the_subjects_events(tmp_path: Path) -> None:
    """Erasing a subject deletes its event rows from every part file (an emptied file goes),
    counts them as offline rows, and keeps other subjects' events."""
    store = DomainFeatureStore(CLINIC, tmp_path, FeatureStoreSettings())
    ann, bob = visit("ann", "2026-11-01T10:00:00Z"), visit("bob", "2026-11-01T10:00:00Z")
    store.append_events("visits", [ann.event, bob.event, ann.event])
    store.append_events("visits", [ann.event])

    erased = store.erase_subjects({ann.subject})

    assert erased.offline == 3
    [part] = part_files(store.events_folder("visits"))
    table = pq.read_table(part)
    assert table.column("patient_token").to_pylist() == [bob.subject]
    assert table.schema.equals(event_schema(VISITS), check_metadata=True)  # tags kept
    assert store.erase_subjects({ann.subject}).offline == 0


@pytest.mark.parametrize("domain", ["shop", "web", "support"])
def test_erasure_without_event_files_is_a_no_op(tmp_path: Path, domain: str) -> None:
    """A domain that never wrote events erases nothing offline and raises nothing."""
    store = DomainFeatureStore(load_contracts()[domain], tmp_path, FeatureStoreSettings())
    assert store.erase_subjects({"k1.nobody"}).offline == 0
