"""Data-subject requests across domains: access exports what each domain holds about a
subject (events, features, models trained after it appeared), erase removes it from every
domain; each request is logged with its completion time and never the identifier."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from domains.registry import load_contracts
from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from federation.registry import ModelRegistry
from governance.dsr import read_requests, subject_access, subject_erase
from streams.keyring import load_domain_tokens
from streams.settings import KafkaSettings, StreamSettings
from streams.transform import Accepted, ProductTransform

EMAIL = "ana.ruiz@example.org"
DOMAINS = ("shop", "support")


def order(seq: int, email: str) -> bytes:
    """A raw shop order of ``email`` (as the shop's systems send it)."""
    return json.dumps(
        {
            "order_id": f"ord-{seq}",
            "customer_name": "Ana Ruiz",
            "customer_email": email,
            "ip_address": "203.0.113.7",
            "birth_date": "1984-03-09",
            "zip_code": "94110",
            "payment_method": "card",
            "amount_cents": 1999,
            "occurred_at": f"2026-11-2{seq}T10:00:00+00:00",
        }
    ).encode()


@pytest.fixture
def system(isolated_env: Path) -> dict[str, object]:
    """Shop and support stores, the shop holding two orders of the subject and one of
    someone else; a model trained on shop after the subject's orders."""
    runtime, streams = RuntimeSettings(), StreamSettings()
    all_contracts = load_contracts()
    contracts = {d: all_contracts[d] for d in DOMAINS}
    tokens = {d: load_domain_tokens(d, runtime, streams) for d in DOMAINS}
    stores = {
        d: DomainFeatureStore(contracts[d], runtime.data_dir, FeatureStoreSettings())
        for d in DOMAINS
    }
    for store in stores.values():
        store.apply()
    transform = ProductTransform(contracts["shop"].products[0], tokens["shop"])
    events = []
    for seq, email in ((1, EMAIL), (2, EMAIL), (3, "someone@example.org")):
        accepted = transform.apply(order(seq, email))
        assert isinstance(accepted, Accepted)
        events.append(accepted.event)
    stores["shop"].append_events("orders", events)
    registry = ModelRegistry("sqlite", runtime.data_dir)
    lineage = {"domains": {"shop": {}}, "started_at": datetime.now(UTC).isoformat()}
    registry.register("shop_model", [np.zeros(2, np.float32)], lineage, "completed")
    return {
        "contracts": contracts, "tokens": tokens, "stores": stores, "registry": registry,
        "log": runtime.data_dir / "dsr",
    }  # fmt: skip


def test_access_exports_the_subjects_data_and_logs_no_identifier(system: dict) -> None:
    """The export holds the subject's two orders (pseudonymised), their purpose and
    retention, and the model trained after; the log has counts and tokens only."""
    export = subject_access(
        system["contracts"], system["tokens"], system["stores"], system["registry"],
        EMAIL, system["log"], "dpo",
    )  # fmt: skip
    shop = export["domains"]["shop"]
    orders = shop["products"]["orders"]
    assert [e["order_id"] for e in orders["events"]] == ["ord-1", "ord-2"]
    assert orders["purpose"] == "sales_analytics" and orders["retention_days"] == 90
    assert shop["models"] == ["shop_model-v1"]
    assert "support" not in export["domains"]
    text = json.dumps(export)
    assert EMAIL not in text and "Ana Ruiz" not in text and "someone" not in text
    [logged] = read_requests(system["log"])
    assert logged["kind"] == "access" and logged["completed_at"] >= logged["requested_at"]
    assert logged["domains"]["shop"]["events"] == 2
    assert EMAIL not in json.dumps(logged)


def test_an_empty_subject_is_refused(system: dict) -> None:
    """A blank subject: a clear error, nothing logged."""
    with pytest.raises(ValueError, match="subject is empty"):
        subject_access(
            system["contracts"], system["tokens"], system["stores"], system["registry"],
            "  ", system["log"], "dpo",
        )  # fmt: skip
    assert read_requests(system["log"]) == []


@pytest.mark.integration
def test_erase_removes_the_subject_from_every_domain(system: dict, broker: str) -> None:
    """Erase runs each domain's erasure path: the subject's orders are gone, the other
    customer's stays, access then finds nothing; both requests are logged."""
    from infra.broker import ensure_topics
    from streams.producing import RawProducer
    from streams.topics import domain_topics

    topics = [t for d in DOMAINS for t in domain_topics(system["contracts"][d])]
    ensure_topics(broker, topics, 1, 1)
    with RawProducer(KafkaSettings(bootstrap_servers=broker), "test-dsr") as producer:
        record = subject_erase(
            system["contracts"], system["tokens"], system["stores"], producer, EMAIL,
            system["log"], "dpo",
        )  # fmt: skip
    assert record.domains["shop"]["offline_rows"] == 2
    assert set(record.domains) == set(DOMAINS)
    after = subject_access(
        system["contracts"], system["tokens"], system["stores"], system["registry"],
        EMAIL, system["log"], "dpo",
    )  # fmt: skip
    assert after["domains"] == {}
    kinds = [r["kind"] for r in read_requests(system["log"])]
    assert kinds == ["erase", "access"]


def test_cli_access_and_bad_input(tmp_path: Path) -> None:
    """`privmesh dsr access` of an unknown subject exports nothing and logs the request;
    a blank subject is refused before anything runs."""
    from tests.infra.test_cli import run_cli

    out = tmp_path / "export.json"
    done = run_cli("dsr", "access", "--subject", "nobody@example.org", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["domains"] == {}
    blank = run_cli("dsr", "erase", "--subject", " ")
    assert blank.returncode == 2 and "--subject: the subject is empty" in blank.stderr
