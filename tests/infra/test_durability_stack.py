"""`privmesh down` then `up` on a real stack: every topic is back and nothing is processed twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.chaos import stack_env
from domains.registry import get_contract
from infra.broker import tansu_binary
from infra.errors import BrokerBinaryMissing
from streams.consent import ConsentStatus, consent_key, consent_value
from streams.generator import EventGenerator, make_people
from streams.topics import ProductTopics, domain_topics
from tests.conftest import free_port
from tests.infra.test_cli import run_cli
from tests.infra.topic_snapshots import compacted, read_topics

EVENTS = 400


async def _send_events(bootstrap: str, topic: str, count: int) -> None:
    contract = get_contract("shop")
    product = next(p for p in contract.products if p.name == "orders")
    gen = EventGenerator("shop", product, make_people(200, 3), 0.1, 5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = []
        for _ in range(count):
            key, value = gen.next_event()
            futures.append(await producer.send(topic, value, key))
        for future in futures:
            await future
    finally:
        await producer.stop()


async def _send_consent(bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(5):
            subject = f"person{i}@example.org"
            value = consent_value(subject, "sales_analytics", ConsentStatus.WITHDRAWN, time.time())
            await producer.send_and_wait(
                "shop.consent", value, consent_key("sales_analytics", subject)
            )
    finally:
        await producer.stop()


async def _committed(bootstrap: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="privmesh-shop-processor")
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(4)}
    finally:
        await consumer.stop()


def _health(port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/privmesh/health", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _wait(predicate: Any, timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.mark.integration
def test_down_then_up_keeps_the_stream_and_resumes_from_committed_offsets(
    tmp_path: Path,
) -> None:
    """After events, dead letters, consent records and an erasure request, `privmesh down`
    then `up`: every topic holds the same records at the same offsets (compacted topics
    compacted), the processor's committed offsets are back and it processes nothing again."""
    try:
        tansu_binary()
    except BrokerBinaryMissing as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    web_port = free_port()
    env = stack_env(
        tmp_path,
        {
            "PRIVMESH_STREAMS_WORKER_WEB_PORT": str(web_port),
            "PRIVMESH_STACK_DOMAINS": '["shop"]',
        },
    )
    bootstrap = f"127.0.0.1:{env['PRIVMESH_KAFKA_EMBEDDED_PORT']}"
    topics = domain_topics(get_contract("shop"))
    product = next(p for p in get_contract("shop").products if p.name == "orders")
    names = ProductTopics.of("shop", product)
    log = tmp_path / "up.log"

    def up() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "up"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    first = up()
    try:
        _wait(lambda: _health(web_port), 240, "the shop worker", log)
        asyncio.run(_send_events(bootstrap, names.ingest, EVENTS))
        asyncio.run(_send_consent(bootstrap))

        def consumed() -> bool:
            health = _health(web_port) or {}
            return int(health.get("ingest", {}).get("consumed", 0)) >= EVENTS

        _wait(consumed, 120, "the events processed", log)
        erased = run_cli(
            "erase", "--domain", "shop", "--subject", "someone@example.org", env=env, timeout=120
        )
        assert erased.returncode == 0, erased.stdout + erased.stderr
        time.sleep(3)  # a consistent snapshot of the committed offsets is taken every 0.5 s
        before = asyncio.run(read_topics(bootstrap, topics))
        committed = asyncio.run(_committed(bootstrap, names.ingest))
        assert before.get((names.product, 0)) or before.get((names.product, 1))
        assert any(t == names.dlq for t, _ in before), "no dead letters"
        assert any(t == "shop.erasures" for t, _ in before), "no erasure request"
        assert any(t == "shop.consent" for t, _ in before), "no consent record"
        down = run_cli("down", env=env, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        first.wait(60)
    finally:
        if first.poll() is None:
            first.kill()
    second = up()
    try:
        _wait(lambda: _health(web_port), 240, "the shop worker after up", log)
        after = asyncio.run(read_topics(bootstrap, topics))
        expected = compacted(before)
        assert set(after) == set(expected)
        for tp, records in expected.items():
            assert after[tp][: len(records)] == records, tp
            # only the consent listener's start-up sync marker (a tombstone) is new
            extra = after[tp][len(records) :]
            assert all((r[1] or b"").startswith(b"privmesh-sync/") and r[2] is None for r in extra)
        assert asyncio.run(_committed(bootstrap, names.ingest)) == committed
        time.sleep(5)
        health = _health(web_port) or {}
        assert int(health.get("ingest", {}).get("consumed", 0)) == 0, health
    finally:
        run_cli("down", env=env, timeout=120)
        if second.poll() is None:
            second.kill()
