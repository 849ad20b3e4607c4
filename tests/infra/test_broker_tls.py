"""Kafka over TLS end to end: the embedded broker's TLS listener (the ack gate terminates
TLS, with client certificates required for mTLS), and every client family privmesh
builds (kafka-python admin and producer, aiokafka consumer and producer, the Faust app's
producer, a real ``privmesh worker``) connecting through it with security_protocol=SSL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from federation.engine.pki import server_pki
from infra.broker import ensure_topics
from streams.generator import make_people
from streams.kafka_clients import aiokafka_config
from streams.processor import make_app
from streams.producing import RawProducer
from streams.settings import KafkaSettings, StreamSettings, get_kafka_settings
from streams.topics import domain_topics
from tests.infra.test_durability import Broker
from tests.streams.test_processor_live import (
    ORDER_TOPICS,
    SHOP,
    encode,
    order_event,
    running_workers,
    unit_key,
    wait_for_records,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4


@dataclass(frozen=True)
class Pki:
    """A throwaway CA, the broker's certificate for 127.0.0.1, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def client_certificate(directory: Path) -> tuple[Path, Path]:
    """A client certificate signed by the CA that ``server_pki`` left in ``directory``."""
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privmesh-test")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "client.pem", directory / "client.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Certificates of this test only."""
    server = server_pki(tmp_path / "pki", ["127.0.0.1", "localhost"])
    cert, key = client_certificate(tmp_path / "pki")
    return Pki(server.ca_certificate, server.certificate, server.key, cert, key)


def client_env(pki: Pki, bootstrap: str, *, mtls: bool = True) -> dict[str, str]:
    """The PRIVMESH_KAFKA_* settings of a client of the TLS broker."""
    env = {
        "PRIVMESH_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PRIVMESH_KAFKA_SECURITY_PROTOCOL": "SSL",
        "PRIVMESH_KAFKA_SSL_CAFILE": str(pki.ca),
    }
    if mtls:
        env["PRIVMESH_KAFKA_SSL_CERTFILE"] = str(pki.client_cert)
        env["PRIVMESH_KAFKA_SSL_KEYFILE"] = str(pki.client_key)
    return env


def tls_broker(tmp_path: Path, pki: Pki, *, mtls: bool, ack_after_journal: bool) -> Broker:
    """A journaled embedded broker whose public port speaks only TLS."""
    env = {
        "PRIVMESH_KAFKA_EMBEDDED_TLS_CERTFILE": str(pki.server_cert),
        "PRIVMESH_KAFKA_EMBEDDED_TLS_KEYFILE": str(pki.server_key),
        "PRIVMESH_KAFKA_SECURITY_PROTOCOL": "SSL",
        "PRIVMESH_KAFKA_SSL_CAFILE": str(pki.ca),
        "PRIVMESH_KAFKA_EMBEDDED_ACK_AFTER_JOURNAL": str(ack_after_journal).lower(),
        "PRIVMESH_KAFKA_PARTITIONS": str(PARTITIONS),
    }
    if mtls:
        env["PRIVMESH_KAFKA_EMBEDDED_TLS_CAFILE"] = str(pki.ca)
    broker = Broker(tmp_path / "broker-data", env)
    try:
        broker.start()
    except Exception as exc:  # the binary missing, or no port
        pytest.skip(f"journaled broker unavailable: {exc}")
    return broker


@pytest.fixture
def process_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The process-wide Kafka settings, re-read after the test sets its environment."""
    get_kafka_settings.cache_clear()
    yield monkeypatch
    get_kafka_settings.cache_clear()


async def _faust_send(kafka: KafkaSettings, data_dir: Path, topic: str, value: bytes) -> None:
    """Send one record with the Faust app's own (aiokafka) producer."""
    app = make_app("shop", kafka, StreamSettings(), data_dir)
    producer = app.producer
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"faust", value, None, None, None)
    finally:
        await producer.stop()


async def _read_all(kafka: KafkaSettings, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, **aiokafka_config(kafka), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=5000)
        return [r.value or b"" for records in batches.values() for r in records]
    finally:
        await consumer.stop()


def test_every_client_family_works_over_mutual_tls(
    tmp_path: Path, isolated_env: Path, pki: Pki, process_settings: pytest.MonkeyPatch
) -> None:
    """With security_protocol=SSL and a client certificate, the admin client creates the
    topics, the raw producer's events go through a real worker to the product topic, the
    readers read them back, and the Faust app's producer sends a record."""
    broker = tls_broker(tmp_path, pki, mtls=True, ack_after_journal=True)
    try:
        for name, value in client_env(pki, broker.bootstrap).items():
            process_settings.setenv(name, value)
        kafka = get_kafka_settings()
        assert kafka.security_protocol == "SSL" and kafka.ssl_certfile == pki.client_cert

        created = ensure_topics(broker.bootstrap, domain_topics(SHOP), PARTITIONS, 1)
        assert ORDER_TOPICS.ingest in created

        people = make_people(50, 7)
        ids = set()
        with running_workers(["shop"], broker.bootstrap, isolated_env, tmp_path) as workers:
            worker = workers["shop"]
            worker.wait_ready()
            with RawProducer(kafka, "test-tls") as producer:
                for i in range(60):
                    event = order_event(people[i % len(people)], i)
                    event["order_id"] = f"tls-{i:04d}"
                    ids.add(event["order_id"])
                    producer.send(ORDER_TOPICS.ingest, encode(event), key=unit_key(event))
            found = wait_for_records(broker.bootstrap, {ORDER_TOPICS.product: 60}, [worker])
        products = {json.loads(r.value or b"{}")["order_id"] for r in found[ORDER_TOPICS.product]}
        assert products == ids

        asyncio.run(_faust_send(kafka, isolated_env, ORDER_TOPICS.dlq, b"from-faust"))
        assert b"from-faust" in asyncio.run(_read_all(kafka, ORDER_TOPICS.dlq))
        assert broker.status()["gate_protocol_errors"] == 0
    finally:
        broker.close()


async def _start_fails(config: dict[str, object]) -> BaseException | None:
    producer = AIOKafkaProducer(**config, request_timeout_ms=3000, metadata_max_age_ms=3000)
    try:
        await asyncio.wait_for(producer.start(), 30)
    except (KafkaError, OSError, TimeoutError) as exc:
        return exc
    finally:
        await producer.stop()
    return None


def test_tls_port_refuses_plaintext_and_certificateless_clients(tmp_path: Path, pki: Pki) -> None:
    """A plaintext client cannot talk to the TLS port, nor a TLS client without a client
    certificate when mTLS is on; the same client with its certificate can (so the
    refusals are the listener's doing)."""
    broker = tls_broker(tmp_path, pki, mtls=True, ack_after_journal=False)
    try:
        plaintext = KafkaSettings(bootstrap_servers=broker.bootstrap)
        no_cert = KafkaSettings(**_lower(client_env(pki, broker.bootstrap, mtls=False)))
        with_cert = KafkaSettings(**_lower(client_env(pki, broker.bootstrap)))
        refused = asyncio.run(_start_fails(aiokafka_config(plaintext)))
        assert isinstance(refused, KafkaConnectionError)
        assert asyncio.run(_start_fails(aiokafka_config(no_cert))) is not None
        assert asyncio.run(_start_fails(aiokafka_config(with_cert))) is None
    finally:
        broker.close()


def test_tls_without_the_journal_hold(tmp_path: Path, pki: Pki) -> None:
    """TLS alone (no client certificate, acknowledgements not held for the journal):
    a record produced over TLS is read back over TLS."""
    broker = tls_broker(tmp_path, pki, mtls=False, ack_after_journal=False)
    try:
        kafka = KafkaSettings(**_lower(client_env(pki, broker.bootstrap, mtls=False)))

        async def roundtrip() -> list[bytes]:
            producer = AIOKafkaProducer(**aiokafka_config(kafka), acks="all")
            await producer.start()
            try:
                await producer.send_and_wait("tls.check", b"over-tls")
            finally:
                await producer.stop()
            return await _read_all(kafka, "tls.check")

        assert asyncio.run(roundtrip()) == [b"over-tls"]
        assert broker.status()["acks_held"] == 0
    finally:
        broker.close()


def _lower(env: dict[str, str]) -> dict[str, Any]:
    """PRIVMESH_KAFKA_* variables as KafkaSettings keyword arguments."""
    return {k.removeprefix("PRIVMESH_KAFKA_").lower(): v for k, v in env.items()}
