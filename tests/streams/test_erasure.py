"""``privmesh erase``: stores emptied, erasure request and tombstones sent, record kept."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from domains.contract import FieldType
from domains.registry import get_contract
from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from infra.broker import ensure_topics
from streams.erasure import read_erasure_log
from streams.keyring import load_domain_tokens
from streams.reading import read_records
from streams.settings import StreamSettings
from streams.topics import ProductTopics, erasures_topic
from tests.infra.test_cli import run_cli


@pytest.mark.integration
def test_erase_subject_end_to_end(broker: str, isolated_env: Path) -> None:
    contract = get_contract("support")
    product = contract.products[0]
    topics = ProductTopics.of("support", product)
    ensure_topics(broker, [*topics.all(), erasures_topic("support")], 2, 1)
    runtime = RuntimeSettings()
    tokens = load_domain_tokens("support", runtime, StreamSettings())
    email = "grace.hopper@example.org"
    token = tokens.at(0).token(email, FieldType.EMAIL)
    other = tokens.at(0).token("someone.else@example.org", FieldType.EMAIL)
    store = DomainFeatureStore(contract, runtime.data_dir, FeatureStoreSettings())
    store.apply()
    features = store.product_features(product)
    frame = pd.DataFrame(
        [
            {
                "subject": s,
                "window_start": 1_795_000_000,
                "events": 1,
                "satisfaction_sum": 4.0,
                "handle_minutes_sum": 12.0,
                "event_timestamp": datetime.now(UTC),
            }
            for s in (token, other)
        ]
    )
    store.push(features.subject_push.name, frame)
    store.append_offline(features.subject_view.name, frame)

    result = run_cli(
        "erase",
        "--domain",
        "support",
        "--subject",
        " Grace.Hopper@example.org",
        "--requested-by",
        "dpo@example.org",
        env={"PRIVMESH_KAFKA_BOOTSTRAP_SERVERS": broker},
    )

    assert result.returncode == 0, result.stderr
    assert "1 online row(s), 1 offline row(s), 1 tombstone(s)" in result.stdout
    rows = store.subject_features(product.name, [token, other])
    assert rows[0]["events"] is None and rows[1]["events"] == 1
    [record] = read_erasure_log(runtime.data_dir / "erasures" / "support.jsonl")
    assert record.tokens == [token] and record.requested_by == "dpo@example.org"
    log_text = (runtime.data_dir / "erasures" / "support.jsonl").read_text()
    assert "grace" not in log_text.lower() and "grace" not in result.stdout.lower()

    async def last(topic: str) -> list[tuple[bytes | None, bytes | None]]:
        return [(r.key, r.value) async for r in read_records(broker, topic, idle_timeout=1.0)]

    assert (token.encode(), None) in asyncio.run(last(topics.profiles))
    requests = [json.loads(v or b"{}") for _, v in asyncio.run(last(erasures_topic("support")))]
    assert any(r["tokens"] == [token] for r in requests)


def test_erase_unknown_domain_is_one_line() -> None:
    result = run_cli("erase", "--domain", "nope", "--subject", "x@y.z")
    assert result.returncode == 2
    assert "unknown domain 'nope'" in result.stderr and "Traceback" not in result.stderr
