"""The Kafka client configuration: every client built in the source tree takes it, and the
SASL and TLS settings reach each client family's own configuration."""

from __future__ import annotations

import ast
import asyncio
import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient

from federation.engine.pki import server_pki
from streams.kafka_clients import (
    aiokafka_config,
    faust_config,
    kafka_python_config,
    librdkafka_config,
    ssl_context,
)
from streams.processor import make_app
from streams.settings import KafkaSettings, StreamSettings, get_kafka_settings

REPO = Path(__file__).resolve().parents[2]
# The packages whose code builds Kafka clients (tests build their own on purpose).
SOURCE_PACKAGES = (
    "bench",
    "catalog",
    "dashboards_api",
    "domains",
    "feature_repo",
    "federation",
    "infra",
    "streams",
)
# Constructors of Kafka clients, by the name they are called with.
CLIENTS = {
    "AIOKafkaProducer",
    "AIOKafkaConsumer",
    "AIOKafkaClient",
    "AIOKafkaAdminClient",
    "KafkaProducer",
    "KafkaConsumer",
    "KafkaAdminClient",
    "KafkaClient",
    "App",
    "ProcessorApp",
    "Producer",  # confluent-kafka's (librdkafka's): one configuration dict, not keywords
}
CONFIG_FUNCTIONS = {"aiokafka_config", "kafka_python_config", "faust_config", "librdkafka_config"}
# Construction sites that legitimately take no shared configuration, with the reason.
EXEMPT = {
    "infra/journal.py": "the journal talks to the embedded broker's private loopback Tansu "
    "port inside the broker component, never to the configured listener",
    "streams/batch_send.py": "its keyword arguments are kept in self._config, built from "
    "aiokafka_config(kafka) (checked below)",
}


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _is_config_call(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Call) and _called_name(node) in CONFIG_FUNCTIONS


def _takes_shared_config(call: ast.Call) -> bool:
    """``Client(**family_config(...))``, or for confluent-kafka's ``Producer(config)``:
    ``Producer(librdkafka_config(...))`` or ``Producer({**librdkafka_config(...), ...})``."""
    if any(kw.arg is None and _is_config_call(kw.value) for kw in call.keywords):
        return True
    first = call.args[0] if call.args else None
    if _is_config_call(first):
        return True
    return isinstance(first, ast.Dict) and any(
        key is None and _is_config_call(value)
        for key, value in zip(first.keys, first.values, strict=True)
    )


def construction_sites() -> list[tuple[str, int, str, bool]]:
    """Every Kafka client construction in the source packages: (path, line, class, whether
    it takes ``**<family>_config(...)``)."""
    sites = []
    for package in SOURCE_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _called_name(node) in CLIENTS:
                    rel = str(path.relative_to(REPO))
                    sites.append(
                        (rel, node.lineno, str(_called_name(node)), _takes_shared_config(node))
                    )
    return sites


def test_every_client_construction_takes_the_shared_configuration() -> None:
    """A Kafka client (aiokafka, kafka-python, Faust, confluent-kafka) built anywhere in
    the source tree takes its connection arguments from streams.kafka_clients, so the TLS
    and SASL settings reach it; a new client that bypasses them fails here."""
    sites = construction_sites()
    assert len(sites) >= 15, sites  # the scan sees the known clients
    assert ("streams/rdkafka_producer.py", "Producer") in {(s[0], s[2]) for s in sites}
    bypassing = [s for s in sites if not s[3] and s[0] not in EXEMPT]
    assert not bypassing, f"Kafka clients built without streams.kafka_clients: {bypassing}"
    batch_send = (REPO / "streams/batch_send.py").read_text(encoding="utf-8")
    assert (
        "**aiokafka_config(kafka)" in batch_send
        and "AIOKafkaProducer(**self._config)" in batch_send
    )


def test_the_scan_catches_a_bypassing_client(tmp_path: Path) -> None:
    """The check recognises a client built with bare bootstrap servers."""
    tree = ast.parse(
        "AIOKafkaConsumer(bootstrap_servers='x:1')\nKafkaProducer(**kafka_python_config(k))\n"
        "Producer({'bootstrap.servers': 'x:1'})\nProducer({**librdkafka_config(k), 'acks': 1})\n"
        "Producer(librdkafka_config(k))"
    )
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _called_name(n) in CLIENTS]
    assert [_takes_shared_config(c) for c in calls] == [False, True, False, True, True]


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A CA, and a certificate with its key (used as a client certificate here)."""
    pki = server_pki(tmp_path / "pki", ["127.0.0.1"])
    return {"ca": pki.ca_certificate, "cert": pki.certificate, "key": pki.key}


def test_plaintext_by_default() -> None:
    """Without security settings every family gets PLAINTEXT and no TLS context."""
    kafka = KafkaSettings()
    assert aiokafka_config(kafka) == {
        "bootstrap_servers": "127.0.0.1:19092",
        "security_protocol": "PLAINTEXT",
    }
    assert kafka_python_config(kafka, "a:1, b:2") == {
        "bootstrap_servers": ["a:1", "b:2"],
        "security_protocol": "PLAINTEXT",
    }
    assert faust_config(kafka) == {
        "broker": ["kafka://127.0.0.1:19092"],
        "broker_credentials": None,
    }
    assert librdkafka_config(kafka, "a:1, b:2") == {
        "bootstrap.servers": "a:1,b:2",
        "security.protocol": "plaintext",
    }


def librdkafka_accepts(config: dict[str, str]) -> None:
    """librdkafka builds a producer from ``config``: every property name and value is one it
    knows, and the TLS files it names load (a bad path or key fails construction)."""
    Producer(config).close()


def sasl_settings(protocol: str, mechanism: str | None, files: dict[str, Path]) -> KafkaSettings:
    tls: dict[str, Any] = {"ssl_cafile": files["ca"]} if protocol == "SASL_SSL" else {}
    return KafkaSettings(
        bootstrap_servers="kafka-1:9093,kafka-2:9093",
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username="privmesh",
        sasl_password="s3cret-pw",
        **tls,
    )


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", [None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_reaches_every_client_family(
    protocol: str, mechanism: str | None, tls_files: dict[str, Path]
) -> None:
    """SASL settings end up in aiokafka's clients, kafka-python's producer and admin, and
    the Faust app's credentials (and so its aiokafka clients), as each library reads them."""
    kafka = sasl_settings(protocol, mechanism, tls_files)
    expected_mechanism = mechanism or "PLAIN"

    async def aiokafka_clients() -> list[Any]:
        producer = AIOKafkaProducer(**aiokafka_config(kafka))
        consumer = AIOKafkaConsumer(**aiokafka_config(kafka))
        return [producer.client, consumer._client]

    for client in asyncio.run(aiokafka_clients()):
        assert client._security_protocol == protocol
        assert client._sasl_mechanism == expected_mechanism
        assert client._sasl_plain_username == "privmesh"
        assert client._sasl_plain_password == "s3cret-pw"
        assert (client._ssl_context is not None) == (protocol == "SASL_SSL")

    python_config = kafka_python_config(kafka)
    for cls in (KafkaProducer, KafkaAdminClient):  # each key is one the library knows
        assert set(python_config) <= set(cls.DEFAULT_CONFIG), cls
    assert python_config["sasl_mechanism"] == expected_mechanism
    assert python_config["sasl_plain_password"] == "s3cret-pw"
    assert python_config["bootstrap_servers"] == ["kafka-1:9093", "kafka-2:9093"]

    conf = faust.App("t", **faust_config(kafka)).conf
    assert isinstance(conf.broker_credentials, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(conf.broker_credentials)
    assert auth["security_protocol"] == protocol
    assert auth["sasl_mechanism"] == expected_mechanism
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("privmesh", "s3cret-pw")
    assert [str(u) for u in conf.broker] == ["kafka://kafka-1:9093", "kafka://kafka-2:9093"]

    rd = librdkafka_config(kafka)
    assert rd["security.protocol"] == protocol.lower()
    assert rd["sasl.mechanism"] == expected_mechanism
    assert (rd["sasl.username"], rd["sasl.password"]) == ("privmesh", "s3cret-pw")
    assert rd["bootstrap.servers"] == "kafka-1:9093,kafka-2:9093"
    assert ("ssl.ca.location" in rd) == (protocol == "SASL_SSL")
    librdkafka_accepts(rd)


def test_tls_reaches_every_client_family(tls_files: dict[str, Path], tmp_path: Path) -> None:
    """SSL with a client certificate: one verifying context (CA loaded, hostname checked,
    TLS 1.2+) for aiokafka, kafka-python and the processor's Faust app."""
    kafka = KafkaSettings(
        bootstrap_servers="kafka:9093",
        security_protocol="SSL",
        ssl_cafile=tls_files["ca"],
        ssl_certfile=tls_files["cert"],
        ssl_keyfile=tls_files["key"],
    )
    context = aiokafka_config(kafka)["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1
    assert kafka_python_config(kafka)["ssl_check_hostname"] is True
    app = make_app("shop", kafka, StreamSettings(), tmp_path)
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"
    unchecked = kafka.model_copy(update={"ssl_check_hostname": False})
    assert ssl_context(unchecked) is not None and not ssl_context(unchecked).check_hostname  # type: ignore[union-attr]
    rd = librdkafka_config(kafka)
    assert rd["security.protocol"] == "ssl"
    assert rd["ssl.ca.location"] == str(tls_files["ca"])
    assert rd["ssl.certificate.location"] == str(tls_files["cert"])
    assert rd["ssl.key.location"] == str(tls_files["key"])
    assert rd["ssl.endpoint.identification.algorithm"] == "https"
    assert librdkafka_config(unchecked)["ssl.endpoint.identification.algorithm"] == "none"
    librdkafka_accepts(rd)
    system_cas = kafka.model_copy(update={"ssl_cafile": None, "ssl_certfile": None})
    assert librdkafka_config(system_cas)["ssl.ca.location"] == "probe"
    assert "ssl.certificate.location" not in librdkafka_config(system_cas)
    librdkafka_accepts(librdkafka_config(system_cas))


def test_process_settings_are_the_default(
    monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, Path]
) -> None:
    """Call sites that only know a bootstrap address get the process-wide security settings."""
    monkeypatch.setenv("PRIVMESH_KAFKA_BOOTSTRAP_SERVERS", "kafka:9093")
    monkeypatch.setenv("PRIVMESH_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("PRIVMESH_KAFKA_SSL_CAFILE", str(tls_files["ca"]))
    get_kafka_settings.cache_clear()
    try:
        config = aiokafka_config(bootstrap="other:9093")
        assert config["bootstrap_servers"] == "other:9093"
        assert config["security_protocol"] == "SSL" and "ssl_context" in config
    finally:
        get_kafka_settings.cache_clear()


def test_password_is_never_shown() -> None:
    """The SASL password appears in no repr of the settings nor of Faust's credentials."""
    kafka = KafkaSettings(
        bootstrap_servers="k:1",
        security_protocol="SASL_PLAINTEXT",
        sasl_username="u",
        sasl_password="s3cret-pw",
    )
    assert "s3cret-pw" not in repr(kafka) and "s3cret-pw" not in str(kafka.model_dump())
    assert "s3cret-pw" not in repr(faust_config(kafka)["broker_credentials"])
