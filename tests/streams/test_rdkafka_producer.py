"""The demo generator's librdkafka producer against real brokers: every record arrives once
on its key's (murmur2) partition, through the journaled broker's ack gate and over mutual
TLS too; a record that is not delivered is counted and logged without its contents; an
unreachable broker fails at construction; ``privmesh generate`` sends through it."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from infra.broker import ensure_topics
from streams.errors import BrokerUnavailable
from streams.generator import EventGenerator, make_people
from streams.pipeline import partition_for
from streams.rdkafka_producer import MAX_RECORD_BYTES, RdKafkaProducer
from streams.reading import Record, read_records
from streams.settings import KafkaSettings, get_kafka_settings
from tests.conftest import FreshBroker, free_port, reachable
from tests.infra.test_broker_tls import Pki, client_env, pki, tls_broker  # noqa: F401
from tests.infra.test_cli import run_cli
from tests.infra.test_durability import Broker

pytestmark = pytest.mark.integration

PARTITIONS = 4
SECRET_KEY, SECRET_VALUE = b"alice@example.org", b"SECRET-PAYLOAD"


def read_all(bootstrap: str, topic: str, limit: int | None = None) -> list[Record]:
    async def collect() -> list[Record]:
        return [r async for r in read_records(bootstrap, topic, limit=limit, idle_timeout=3.0)]

    return asyncio.run(collect())


def shop_events(count: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    from domains.registry import load_contracts

    product = load_contracts()["shop"].products[0]
    gen = EventGenerator("shop", product, make_people(50, seed), 0.0, seed)
    return list(gen.stream(count))


def test_keyed_records_land_on_their_murmur2_partition(broker: str) -> None:
    """Every record arrives once, on the partition the processors expect for its key
    (librdkafka's default CRC32 partitioner would fail the processors' check), with its
    headers; a tombstone and hostile bytes in key and value go through unchanged."""
    topic = "rdk-partitions.ingest"
    ensure_topics(broker, [topic], PARTITIONS, 1)
    events = shop_events(300, 3)
    hostile = [(b"\x00\xff key \n", b"\xfe\x00 {not json"), (b"tomb", None)]
    with RdKafkaProducer(KafkaSettings(bootstrap_servers=broker), "test-rdk") as producer:
        for key, value in [*events, *hostile]:
            producer.send(topic, value, key=key, headers=[("origin", b"test")])
    assert producer.sent == producer.delivered == len(events) + 2 and producer.failed == 0
    records = read_all(broker, topic)
    assert Counter((r.key, r.value) for r in records) == Counter([*events, *hostile])
    for record in records:
        assert record.key is not None
        assert record.partition == partition_for(record.key, PARTITIONS)
        assert record.header("origin") == "test"


def test_delivers_through_the_journaled_ack_gate(tmp_path: Path) -> None:
    """Idempotent, acks=all producing through the embedded broker component as `privmesh up`
    runs it (the ack gate answers once the journal holds the records): none fails, none is
    duplicated."""
    component = Broker(tmp_path / "broker-data", {"PRIVMESH_KAFKA_PARTITIONS": str(PARTITIONS)})
    try:
        component.start()
    except Exception as exc:  # the binary missing, or no port
        pytest.skip(f"journaled broker unavailable: {exc}")
    try:
        topic = "rdk-gate.ingest"
        ensure_topics(component.bootstrap, [topic], PARTITIONS, 1)
        events = shop_events(2000, 5)
        kafka = KafkaSettings(bootstrap_servers=component.bootstrap)
        with RdKafkaProducer(kafka, "test-rdk-gate") as producer:
            for key, value in events:
                producer.send(topic, value, key=key)
        assert producer.failed == 0
        records = read_all(component.bootstrap, topic)
        assert sorted(r.value or b"" for r in records) == sorted(v for _, v in events)
    finally:
        component.stop()


def test_a_refused_record_is_counted_and_logged_without_contents(
    broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A record over the size limit is counted as failed, not raised (the generator's loop
    goes on), and the log names the reason, never the key or the value; the records after
    it are delivered."""
    caplog.set_level(logging.WARNING, logger="streams.rdkafka_producer")
    kafka = KafkaSettings(bootstrap_servers=broker)
    with RdKafkaProducer(kafka, "test-rdk-refused") as producer:
        producer.send("rdk-refused.ingest", SECRET_VALUE * (MAX_RECORD_BYTES // 10), key=SECRET_KEY)
        assert (producer.sent, producer.failed) == (0, 1)
        for _ in range(20):
            producer.send("rdk-refused.ingest", SECRET_VALUE, key=SECRET_KEY)
    assert (producer.sent, producer.delivered, producer.failed) == (20, 20, 1)
    assert producer.failures == {"MSG_SIZE_TOO_LARGE": 1}
    assert "MSG_SIZE_TOO_LARGE" in caplog.text
    assert "alice" not in caplog.text and "SECRET" not in caplog.text


def test_unreachable_broker_fails_at_construction() -> None:
    """Nothing listening: BrokerUnavailable (its stable code) within the connect timeout,
    rather than records piling up and failing later."""
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable) as caught:
        RdKafkaProducer(kafka, "test-rdk-down", connect_timeout=2.0)
    assert caught.value.code == "broker_unavailable"
    assert "cannot reach Kafka" in str(caught.value)


def test_flush_raises_while_the_broker_is_down(
    fresh_broker: FreshBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A record queued while the broker is gone is neither acknowledged nor silently
    dropped: flush says it is outstanding, and close counts it as failed (purged) and logs
    that without its contents."""
    caplog.set_level(logging.WARNING, logger="streams.rdkafka_producer")
    kafka = KafkaSettings(bootstrap_servers=fresh_broker.bootstrap)
    port = int(fresh_broker.bootstrap.rsplit(":", 1)[1])
    producer = RdKafkaProducer(kafka, "test-rdk-outage", linger_ms=0)
    outage = threading.Thread(target=fresh_broker.restart, kwargs={"down_seconds": 8.0})
    try:
        producer.send("rdk-outage.ingest", b"first", key=b"k")
        producer.flush(10)
        assert producer.failed == 0
        outage.start()
        deadline = time.monotonic() + 5
        while reachable(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not reachable(port)
        producer.send("rdk-outage.ingest", SECRET_VALUE, key=SECRET_KEY)
        with pytest.raises(BrokerUnavailable, match="1 record"):
            producer.flush(1.0)
    finally:
        producer.close(timeout=0)
        if outage.is_alive():
            outage.join()
    assert (producer.sent, producer.delivered, producer.failed) == (2, 1, 1)
    assert producer.failures == {"_PURGE_QUEUE": 1}
    assert "_PURGE_QUEUE" in caplog.text
    assert "alice" not in caplog.text and "SECRET" not in caplog.text


def test_mutual_tls(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """With security_protocol=SSL and a client certificate (librdkafka_config's paths), the
    producer delivers through the embedded broker's TLS listener that requires one."""
    component = tls_broker(tmp_path, pki, mtls=True, ack_after_journal=True)
    get_kafka_settings.cache_clear()
    try:
        for name, value in client_env(pki, component.bootstrap).items():
            monkeypatch.setenv(name, value)
        kafka = get_kafka_settings()
        topic = "rdk-tls.ingest"
        ensure_topics(component.bootstrap, [topic], PARTITIONS, 1)
        with RdKafkaProducer(kafka, "test-rdk-tls") as producer:
            for i in range(50):
                producer.send(topic, f"tls-{i}".encode(), key=f"k{i}".encode())
        assert producer.failed == 0
        values = {r.value for r in read_all(component.bootstrap, topic)}
        assert values == {f"tls-{i}".encode() for i in range(50)}
    finally:
        component.close()
        get_kafka_settings.cache_clear()


def test_privmesh_generate_sends_through_librdkafka(fresh_broker: FreshBroker) -> None:
    """`privmesh generate --count` sends the consent records and exactly that many events,
    every keyed event on its key's partition, and reports none undelivered."""
    from domains.registry import load_contracts
    from streams.topics import ProductTopics, consent_topic, domain_topics

    broker = fresh_broker.bootstrap
    shop = load_contracts()["shop"]
    ensure_topics(broker, domain_topics(shop), PARTITIONS, 1)
    env = {
        "PRIVMESH_KAFKA_BOOTSTRAP_SERVERS": broker,
        "PRIVMESH_GENERATOR_PEOPLE": "200",
        "PRIVMESH_GENERATOR_BAD_RATIO": "0.05",
    }
    done = run_cli("generate", "--domain", "shop", "--count", "400", env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generator: sent 400 events" in done.stderr and "not delivered" not in done.stderr
    records = read_all(broker, ProductTopics.of("shop", shop.products[0]).ingest)
    assert len(records) == 400
    keyed = [r for r in records if r.key is not None]
    assert 0 < len(keyed) < 400  # malformed events go unkeyed
    assert all(r.partition == partition_for(r.key or b"", PARTITIONS) for r in keyed)
    consent = read_all(broker, consent_topic("shop"))
    assert consent and all(json.loads(r.value or b"{}") for r in consent)
