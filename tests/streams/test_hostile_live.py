"""The records of issue 18 through a real broker and a running worker: the worker stays
up, each hostile record is dead-lettered with its reason, valid records keep flowing and
every accepted event reaches the offline files; no canary in the worker's log."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from domains.contract import FieldType
from domains.registry import get_contract
from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.consent import ConsentStatus
from streams.pseudonymise import normalise
from streams.reading import Record
from streams.topics import (
    REASON_HEADER,
    ProductTopics,
    consent_dlq_topic,
    consent_topic,
    erasures_dlq_topic,
    erasures_topic,
)
from tests.conftest import FreshBroker
from tests.streams.test_consent_live import decision, send
from tests.streams.test_processor_live import (
    PEOPLE,
    create_topics,
    order_event,
    read_topics,
    running_workers,
    wait_for_consent,
    wait_for_records,
)

SHOP = get_contract("shop")
TOPICS = ProductTopics.of("shop", SHOP.products[0])
SETTINGS = {
    "PRIVMESH_STREAMS_FEATURE_FLUSH_SECONDS": "0.2",
    "PRIVMESH_STREAMS_OFFLINE_FLUSH_SECONDS": "1",
}
CANARY_NAME = "Zebulon Quixote-Marchetti"
CANARY_EMAIL = "zebulon.canary@example.org"
CANARY_PHONE = "+44 20 7946 0999"


def keyed(event: dict[str, object]) -> tuple[bytes | None, bytes]:
    """An order keyed as `privmesh produce` keys it (None when it has no usable e-mail)."""
    email = event.get("customer_email")
    key = normalise(email, FieldType.EMAIL).encode() if isinstance(email, str) else None
    return key, json.dumps(event).encode()


def reasons_of(records: list[Record]) -> list[str]:
    """The sorted reason headers of dead-lettered ``records``."""
    return sorted(r.header(REASON_HEADER) or "" for r in records)


@pytest.mark.integration
def test_hostile_records_cost_only_themselves(
    fresh_broker: FreshBroker, isolated_env: Path, tmp_path: Path
) -> None:
    """The consent record that stopped the mesh, the events that were lost offline or
    leaked identifiers, decoy keys and malformed erasure requests are dead-lettered with
    their reasons; the worker keeps running and every valid order reaches the product
    topic and the offline files."""
    bootstrap = fresh_broker.bootstrap
    create_topics(bootstrap, [SHOP])
    now = time.time()
    stamp = datetime.fromtimestamp(now, tz=UTC).isoformat()
    surrogate = (
        b'{"subject": "\\ud800", "purpose": "sales_analytics", "status": "withdrawn", '
        + f'"timestamp": "{stamp}"}}'.encode()
    )
    named_field = json.dumps(
        {"subject": CANARY_EMAIL, "purpose": "sales_analytics", "status": "granted",
         "timestamp": stamp, CANARY_NAME: CANARY_PHONE}
    ).encode()  # fmt: skip
    send(bootstrap, consent_topic("shop"), [(b"sales_analytics/x", surrogate)])
    send(bootstrap, consent_topic("shop"), [(b"sales_analytics/y", named_field)])
    valid = [order_event(p, 1000 + i, now) for i, p in enumerate(PEOPLE[:12])]
    hostile: list[tuple[tuple[bytes | None, bytes], str]] = []
    for n, change in enumerate(
        [
            {"order_id": "o-\ud800"},
            {"occurred_at": "2026-11-23T14:43:20+05:30:15"},
            {"order_id": CANARY_EMAIL},
            {"occurred_at": "0001-01-01T00:00:00+00:00"},
            {"occurred_at": "9999-12-31T23:59:59+00:00"},
        ]
    ):
        hostile.append((keyed({**order_event(PEOPLE[20 + n], 2000 + n, now), **change}), ""))
    expected = [
        "invalid_value",
        "invalid_value",
        "personal_value",
        "out_of_window",
        "out_of_window",
    ]
    hostile = [(record, reason) for (record, _), reason in zip(hostile, expected, strict=True)]
    decoy = keyed(order_event(PEOPLE[30], 3000, now))
    hostile.append(((b"decoy", decoy[1]), "wrong_key"))

    with running_workers(["shop"], bootstrap, isolated_env, tmp_path, SETTINGS) as workers:
        worker = workers["shop"]
        worker.wait_ready(90)
        send(bootstrap, TOPICS.ingest, [record for record, _ in hostile])
        send(bootstrap, TOPICS.ingest, [keyed(e) for e in valid])
        send(
            bootstrap,
            erasures_topic("shop"),
            [(None, b"\xff\xfe not json"), (None, json.dumps({"tokens": [CANARY_EMAIL]}).encode())],
        )
        # A valid decision after the poison: the consent listener is still applying.
        later = decision(PEOPLE[0].email, "sales_analytics", ConsentStatus.GRANTED, time.time())
        send(bootstrap, consent_topic("shop"), [later])
        wait_for_consent(worker, "sales_analytics", granted=1)
        found = wait_for_records(
            bootstrap,
            {
                TOPICS.product: len(valid),
                TOPICS.dlq: len(hostile),
                consent_dlq_topic("shop"): 2,
                erasures_dlq_topic("shop"): 2,
            },
            [worker],
        )
        reasons = sorted(r.header(REASON_HEADER) or "" for r in found[TOPICS.dlq])
        assert reasons == sorted(reason for _, reason in hostile)
        consent_reasons = sorted(
            r.header(REASON_HEADER) or "" for r in found[consent_dlq_topic("shop")]
        )
        assert consent_reasons == ["invalid_value", "unknown_field"]
        erasure_reasons = sorted(
            r.header(REASON_HEADER) or "" for r in found[erasures_dlq_topic("shop")]
        )
        assert erasure_reasons == ["invalid_value", "malformed_json"]
        product_ids = sorted(json.loads(r.value or b"")["order_id"] for r in found[TOPICS.product])
        assert product_ids == sorted(str(e["order_id"]) for e in valid)
        # every accepted event reaches the offline files
        store = DomainFeatureStore(SHOP, RuntimeSettings().data_dir, FeatureStoreSettings())
        folder = store.events_folder("orders")
        deadline = time.monotonic() + 30
        stored: list[str] = []
        while time.monotonic() < deadline:
            if list(folder.glob("*.parquet")):
                stored = pl.scan_parquet(folder / "*.parquet").collect()["order_id"].to_list()
                if len(stored) >= len(valid):
                    break
            time.sleep(0.5)
        assert sorted(stored) == product_ids
        worker.assert_alive()
        report = worker.health() or {}
        assert report["consent"].get("processing_errors", 0) == 0
    everything = read_topics(bootstrap, [TOPICS.product])[TOPICS.product]
    assert not any(CANARY_EMAIL.encode() in (r.value or b"") for r in everything)
    log_text = "\n".join(p.read_text() for p in tmp_path.glob("*.log")).lower()
    for canary in (CANARY_NAME, CANARY_EMAIL, CANARY_PHONE):
        assert canary.lower() not in log_text
