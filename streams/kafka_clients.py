"""Kafka client configuration, built in one place from ``KafkaSettings``.

Every Kafka client privmesh builds (the processors' aiokafka consumers and producer,
the CLI's kafka-python producer, the demo generator's librdkafka producer, the admin
client creating topics, the readers of ``tail`` and the catalog lint, the Faust app, the
benchmarks) takes its connection arguments from one of these functions, one per client
family, so the security settings (TLS, mTLS, SASL PLAIN/SCRAM; docs/kafka-security.md)
reach all of them. ``tests/streams/test_kafka_clients.py`` fails when a client is constructed
anywhere else without them.

The one exception is the embedded broker's journal (``infra.journal``): it talks to the
private, loopback-only Tansu port inside the broker component, which never has TLS.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from streams.settings import KafkaSettings, get_kafka_settings


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The client TLS context of ``kafka`` (None for PLAINTEXT and SASL_PLAINTEXT):
    verifies the broker against ``ssl_cafile`` (the system CAs when unset), presents
    ``ssl_certfile`` for mTLS, checks host names unless ``ssl_check_hostname`` is off."""
    if not kafka.security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if kafka.ssl_certfile is not None:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    context.check_hostname = kafka.ssl_check_hostname
    return context


def _sasl(kafka: KafkaSettings) -> dict[str, Any]:
    if not kafka.security_protocol.startswith("SASL_"):
        return {}
    assert kafka.sasl_password is not None  # the settings refuse SASL without it
    return {
        "sasl_mechanism": kafka.sasl_mechanism or "PLAIN",
        "sasl_plain_username": kafka.sasl_username,
        "sasl_plain_password": kafka.sasl_password.get_secret_value(),
    }


def aiokafka_config(
    kafka: KafkaSettings | None = None, bootstrap: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaClient``:
    the bootstrap servers (``bootstrap`` or the settings') and the security settings
    (``kafka`` or the process-wide ones)."""
    kafka = kafka or get_kafka_settings()
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap or kafka.bootstrap,
        "security_protocol": kafka.security_protocol,
        **_sasl(kafka),
    }
    context = ssl_context(kafka)
    if context is not None:
        config["ssl_context"] = context
    return config


def kafka_python_config(
    kafka: KafkaSettings | None = None, bootstrap: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of kafka-python's ``KafkaProducer``/``KafkaAdminClient``."""
    kafka = kafka or get_kafka_settings()
    servers = bootstrap or kafka.bootstrap
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in servers.split(",") if s.strip()],
        "security_protocol": kafka.security_protocol,
        **_sasl(kafka),
    }
    context = ssl_context(kafka)
    if context is not None:
        config["ssl_context"] = context
        config["ssl_check_hostname"] = kafka.ssl_check_hostname
    return config


def faust_broker_url(bootstrap: str) -> list[str]:
    """Faust broker URLs for a ``host:port[,host:port]`` bootstrap string (the scheme is
    ``kafka://`` whatever the security: Faust takes that from ``broker_credentials``)."""
    return [f"kafka://{hostport.strip()}" for hostport in bootstrap.split(",") if hostport.strip()]


def faust_config(kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """Keyword arguments of ``faust.App``: ``broker`` and ``broker_credentials``
    (``faust.SSLCredentials`` for SSL, ``faust.SASLCredentials`` for SASL_*, with the TLS
    context for SASL_SSL)."""
    kafka = kafka or get_kafka_settings()
    context = ssl_context(kafka)
    credentials: faust.types.auth.CredentialsT | None = None
    if kafka.security_protocol.startswith("SASL_"):
        sasl = _sasl(kafka)
        credentials = faust.SASLCredentials(
            username=sasl["sasl_plain_username"],
            password=sasl["sasl_plain_password"],
            ssl_context=context,
            mechanism=sasl["sasl_mechanism"],
        )
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    return {"broker": faust_broker_url(kafka.bootstrap), "broker_credentials": credentials}


def librdkafka_config(
    kafka: KafkaSettings | None = None, bootstrap: str | None = None
) -> dict[str, str]:
    """Configuration of confluent-kafka's (librdkafka's) clients, in librdkafka's property
    names: the bootstrap servers and the security settings as :func:`ssl_context` and
    :func:`_sasl` read them (CA bundle, client certificate and key, host name check, SASL
    mechanism and credentials). librdkafka builds its own TLS context from these paths
    (it takes no ``ssl.SSLContext``); without ``ssl_cafile`` it probes the system's CAs."""
    kafka = kafka or get_kafka_settings()
    servers = bootstrap or kafka.bootstrap
    config = {
        "bootstrap.servers": ",".join(s.strip() for s in servers.split(",") if s.strip()),
        "security.protocol": kafka.security_protocol.lower(),
    }
    sasl = _sasl(kafka)
    if sasl:
        config["sasl.mechanism"] = sasl["sasl_mechanism"]
        config["sasl.username"] = sasl["sasl_plain_username"]
        config["sasl.password"] = sasl["sasl_plain_password"]
    if kafka.security_protocol.endswith("SSL"):
        config["ssl.ca.location"] = str(kafka.ssl_cafile) if kafka.ssl_cafile else "probe"
        if kafka.ssl_certfile is not None:
            config["ssl.certificate.location"] = str(kafka.ssl_certfile)
            # A certificate file that holds its key too needs no separate key path.
            config["ssl.key.location"] = str(kafka.ssl_keyfile or kafka.ssl_certfile)
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if kafka.ssl_check_hostname else "none"
        )
    return config
