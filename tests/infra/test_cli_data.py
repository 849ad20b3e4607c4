"""``privmesh produce`` / ``privmesh tail`` against the real embedded broker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from infra.broker import ensure_topics
from tests.infra.test_cli import run_cli


def env_for(broker: str) -> dict[str, str]:
    return {"PRIVMESH_KAFKA_BOOTSTRAP_SERVERS": broker}


@pytest.mark.integration
def test_produce_file_then_tail_ingest_keys(broker: str, tmp_path: Path) -> None:
    """Events from a file land on the ingest topic keyed by their normalised privacy unit."""
    # A fresh domain name per test keeps topics apart on the session broker.
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    domain = f"t{uuid.uuid4().hex[:8]}"
    shop = (Path("domains/contracts/shop.yaml")).read_text(encoding="utf-8")
    (contracts / f"{domain}.yaml").write_text(
        shop.replace("domain: shop", f"domain: {domain}"), encoding="utf-8"
    )
    topic = f"{domain}.orders.ingest"
    ensure_topics(broker, [topic, f"{domain}.orders.v1", f"{domain}.orders.dlq"], 2, 1)
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps({"customer_email": "Ada@Example.org", "order_id": "1"})
        + "\n\n"
        + "not json at all\n",
        encoding="utf-8",
    )
    env = {**env_for(broker), "PRIVMESH_CONTRACTS_DIR": str(contracts)}
    result = run_cli("produce", "--domain", domain, "--file", str(events), env=env)
    assert result.returncode == 0, result.stderr
    assert f"sent 2 event(s) to {topic}" in result.stderr

    import asyncio

    from streams.reading import read_records

    async def read() -> list[tuple[bytes | None, bytes | None]]:
        return [(r.key, r.value) async for r in read_records(broker, topic, limit=2)]

    records = asyncio.run(read())
    assert sorted(records, key=lambda r: r[0] or b"") == [
        (None, b"not json at all"),
        (b"ada@example.org", b'{"customer_email": "Ada@Example.org", "order_id": "1"}'),
    ]


@pytest.mark.integration
def test_tail_shows_dlq_reasons_without_raw_values(broker: str) -> None:
    from streams.producing import RawProducer
    from streams.settings import KafkaSettings
    from streams.topics import DETAIL_HEADER, REASON_HEADER

    ensure_topics(broker, ["web.page_views.dlq", "web.page_views.v1"], 2, 1)
    kafka = KafkaSettings(bootstrap_servers=broker)
    with RawProducer(kafka, client_id="test") as producer:
        producer.send(
            "web.page_views.dlq",
            b'{"visitor_id": "ck_secret_cookie"}',
            headers=[(REASON_HEADER, b"missing_field"), (DETAIL_HEADER, b"required field x")],
        )
    result = run_cli("tail", "--domain", "web", "--dlq", "--limit", "1", env=env_for(broker))
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["reason"] == "missing_field" and row["detail"] == "required field x"
    assert "ck_secret_cookie" not in result.stdout
    raw = run_cli(
        "tail", "--domain", "web", "--dlq", "--limit", "1", "--show-raw", env=env_for(broker)
    )
    assert "ck_secret_cookie" in json.loads(raw.stdout)["raw"]


def test_produce_needs_exactly_one_source() -> None:
    result = run_cli("produce", "--domain", "shop")
    assert result.returncode == 2
    assert "exactly one of --file or --generate" in result.stderr


def test_produce_unknown_domain() -> None:
    result = run_cli("produce", "--domain", "nope", "--generate", "1")
    assert result.returncode == 2
    assert "unknown domain 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_tail_several_products_needs_a_choice(tmp_path: Path) -> None:
    result = run_cli("tail", "--domain", "shop", "--product", "refunds")
    assert result.returncode == 2
    assert "no product 'refunds'" in result.stderr
