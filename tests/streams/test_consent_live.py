"""Consent in running processors: opt-in, opt-out, withdrawal erasure, consent DLQ, restarts."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from domains.contract import FieldType
from domains.registry import get_contract
from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from streams.consent import ConsentStatus, consent_key, consent_value
from streams.erasure import read_erasure_log
from streams.generator import BUILDERS, make_people
from streams.keyring import load_domain_tokens
from streams.producing import RawProducer
from streams.pseudonymise import normalise
from streams.settings import KafkaSettings, StreamSettings
from streams.topics import (
    DETAIL_HEADER,
    REASON_HEADER,
    ProductTopics,
    consent_dlq_topic,
    consent_topic,
)
from tests.conftest import FreshBroker
from tests.infra.test_cli import run_cli
from tests.streams.test_processor_live import (
    Worker,
    create_topics,
    read_topics,
    running_workers,
    wait_for_consent,
)

SHOP, WEB = get_contract("shop"), get_contract("web")
ORDERS, VIEWS = SHOP.products[0], WEB.products[0]
PEOPLE = make_people(6, 77)
SETTINGS = {
    "PRIVMESH_STREAMS_WINDOW_SECONDS": "3600",
    "PRIVMESH_STREAMS_FEATURE_FLUSH_SECONDS": "0.05",
}


def send(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    with RawProducer(KafkaSettings(bootstrap_servers=bootstrap), "test-consent") as producer:
        for key, value in records:
            producer.send(topic, value, key=key)


def decision(subject: str, purpose: str, status: ConsentStatus, at: float) -> tuple[bytes, bytes]:
    return consent_key(purpose, subject), consent_value(subject, purpose, status, at)


def events(domain: str, indexes: list[int], seq: int) -> list[tuple[bytes | None, bytes]]:
    product = SHOP.products[0] if domain == "shop" else VIEWS
    unit = product.field(product.privacy_unit)
    assert unit is not None
    at = datetime.now(UTC).isoformat()
    out: list[tuple[bytes | None, bytes]] = []
    for i in indexes:
        event = BUILDERS[(domain, product.name)](PEOPLE[i], random.Random(seq + i), seq + i, at)
        key = normalise(str(event[unit.name]), unit.type).encode()
        out.append((key, json.dumps(event).encode()))
    return out


def product_counts(worker: Worker, product: str) -> dict[str, int]:
    report = worker.health() or {}
    return dict(report.get("products", {}).get(product, {}))


def wait_counts(worker: Worker, product: str, want: dict[str, int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = product_counts(worker, product)
        if all(counts.get(k, 0) >= v for k, v in want.items()):
            return
        time.sleep(0.3)
    raise AssertionError(f"{worker.domain}: {product_counts(worker, product)} after {timeout} s")


@pytest.mark.integration
def test_consent_is_enforced_and_a_withdrawal_erases(
    fresh_broker: FreshBroker, isolated_env: Path, tmp_path: Path
) -> None:
    """web (opt-in) processes only granted visitors; shop (opt-out) drops an objecting
    customer's later events and erases their features; malformed consent records are
    dead-lettered once, even across a restart, and a withdrawal is erased once."""
    bootstrap = fresh_broker.bootstrap
    create_topics(bootstrap, [SHOP, WEB])
    now = time.time()
    cookie = [str(json.loads(v)["visitor_id"]) for _, v in events("web", list(range(6)), 0)]
    email = [p.email for p in PEOPLE]
    # Written before the workers start: the index is caught up before the first event.
    send(
        bootstrap,
        consent_topic("web"),
        [
            decision(cookie[0], "product_analytics", ConsentStatus.GRANTED, now),
            decision(cookie[1], "product_analytics", ConsentStatus.GRANTED, now),
            decision(cookie[1], "product_analytics", ConsentStatus.WITHDRAWN, now + 1),
        ],
    )
    bad = [
        (b"k", b"not json"),
        (
            b"k",
            json.dumps(
                {"subject": email[0], "purpose": "ads", "status": "granted", "timestamp": now}
            ).encode(),
        ),
    ]
    send(bootstrap, consent_topic("shop"), bad)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    runtime = RuntimeSettings()
    tokens = load_domain_tokens("shop", runtime, StreamSettings())
    token0 = tokens.at(now).token(email[0], FieldType.EMAIL)
    store = DomainFeatureStore(SHOP, runtime.data_dir, FeatureStoreSettings())

    with running_workers(["shop", "web"], bootstrap, isolated_env, log_dir, SETTINGS) as workers:
        shop, web = workers["shop"], workers["web"]
        for worker in (shop, web):
            worker.wait_ready(90)
        wait_for_consent(web, "product_analytics", granted=0, withdrawn=1)
        # opt-in: visitor 0 granted, 1 withdrew, 2-5 never asked
        send(bootstrap, ProductTopics.of("web", VIEWS).ingest, events("web", list(range(6)), 0))
        wait_counts(web, "page_views", {"accepted": 1, "consent_dropped": 5})
        counts = product_counts(web, "page_views")
        assert counts["consent_dropped.consent_missing"] == 4
        assert counts["consent_dropped.consent_withdrawn"] == 1
        # opt-out: everyone processed until an objection
        send(bootstrap, ProductTopics.of("shop", ORDERS).ingest, events("shop", [0, 1], 10))
        wait_counts(shop, "orders", {"accepted": 2, "subject_rows_pushed": 2})
        assert store.subject_features("orders", [token0])[0]["events"] is not None
        send(
            bootstrap,
            consent_topic("shop"),
            [decision(email[0].upper(), "sales_analytics", ConsentStatus.WITHDRAWN, time.time())],
        )
        wait_for_consent(shop, "sales_analytics", withdrawn=1)
        deadline = time.monotonic() + 20
        while store.subject_features("orders", [token0])[0]["events"] is not None:
            assert time.monotonic() < deadline, "the withdrawn customer's online row stayed"
            time.sleep(0.3)
        send(bootstrap, ProductTopics.of("shop", ORDERS).ingest, events("shop", [0, 1], 20))
        wait_counts(shop, "orders", {"accepted": 3, "consent_dropped": 1})
        first = (shop.health() or {})["consent"]
        assert first["dead_lettered"] == 2 and first["malformed.unknown_purpose"] == 1
        # The same numbers on the worker's Prometheus endpoint.
        text = httpx.get(f"http://127.0.0.1:{shop.web_port}/metrics", timeout=5).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        shop_labels = (("domain", "shop"), ("product", "orders"))
        key = (
            "privmesh_stream_consent_dropped_events_total",
            (*shop_labels, ("reason", "consent_withdrawn")),
        )
        assert samples[key] == 1
        assert (
            samples[
                ("privmesh_consent_records_total", (("domain", "shop"), ("result", "malformed")))
            ]
            == 2
        )
        erased = (
            "privmesh_stream_erasures_applied_total",
            (("domain", "shop"), ("source", "consent_withdrawal")),
        )
        assert samples[erased] == 1
        active = (("domain", "shop"), ("state", "active"), ("version", "1"))
        assert samples[("privmesh_pseudonymisation_key_version", active)] == 1
        assert email[0] not in text and token0 not in text
        shop.stop()

    withdrawals = [
        r
        for r in read_erasure_log(isolated_env / "erasures" / "shop.jsonl")
        if r.requested_by == "consent-withdrawal:sales_analytics"
    ]
    assert len(withdrawals) == 1 and token0 in withdrawals[0].tokens
    assert withdrawals[0].online_rows >= 1

    # A restarted worker re-reads the topic: no second erasure, no second dead letter.
    with running_workers(["shop"], bootstrap, isolated_env, log_dir, SETTINGS) as workers:
        workers["shop"].wait_ready(90)
        again = wait_for_consent(workers["shop"], "sales_analytics", withdrawn=1)["consent"]
        assert again.get("dead_lettered", 0) == 0 and again.get("withdrawal_erasures", 0) == 0
    assert len(read_erasure_log(isolated_env / "erasures" / "shop.jsonl")) == 1
    dead = read_topics(bootstrap, [consent_dlq_topic("shop")])[consent_dlq_topic("shop")]
    assert sorted(r.header(REASON_HEADER) or "" for r in dead) == [
        "malformed_json",
        "unknown_purpose",
    ]
    assert all(email[0] not in (r.header(DETAIL_HEADER) or "") for r in dead)
    product = read_topics(bootstrap, [ProductTopics.of("web", VIEWS).product])
    assert len(next(iter(product.values()))) == 1
    # The workers' logs are JSON lines, none naming a subject.
    for path in sorted(log_dir.glob("*.log")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        assert lines, path
        parsed = [json.loads(line) for line in lines]
        assert {"ts", "level", "logger", "component", "msg"} <= set(parsed[0])
        text = path.read_text().lower()
        assert not any(e.lower() in text for e in email) and not any(c in text for c in cookie)


@pytest.mark.integration
def test_consent_cli_validates_before_sending(broker: str, isolated_env: Path) -> None:
    env = {"PRIVMESH_KAFKA_BOOTSTRAP_SERVERS": broker}
    ok = run_cli("consent", "grant", "--domain", "web", "--subject", "ck_1", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    unknown = run_cli(
        "consent", "withdraw", "--domain", "web", "--subject", "ck_1", "--purpose", "ads", env=env
    )
    # an option value: refused as every CLI value is, naming the domain's purposes
    assert unknown.returncode == 2 and "[invalid_cli_value]" in unknown.stderr
    assert "is not one of product_analytics" in unknown.stderr
    assert "ck_1" not in unknown.stderr
    lines = isolated_env.parent / "consent.jsonl"
    lines.write_text(
        json.dumps(
            {
                "subject": "ck_2",
                "purpose": "product_analytics",
                "status": "granted",
                "timestamp": time.time(),
            }
        )
        + "\n"
        + "{broken\n"
    )
    refused = run_cli("consent", "load", "--domain", "web", "--file", str(lines), env=env)
    assert (
        refused.returncode == 2
        and "record 2" in refused.stderr
        and "nothing was sent" in refused.stderr
    )
    sent = read_topics(broker, [consent_topic("web")])[consent_topic("web")]
    subjects = [json.loads(r.value or b"{}").get("subject") for r in sent]
    assert "ck_2" not in subjects  # all or nothing
