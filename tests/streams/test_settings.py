"""Stream and Kafka settings: the worker's web bind address, the Kafka security settings."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import ValidationError

from federation.engine.pki import server_pki
from streams.processor import make_app
from streams.settings import KafkaSettings, StreamSettings
from tests.conftest import free_port


def other_address() -> str:
    """An address of this machine other than 127.0.0.1: a non-loopback IPv4 address, or
    127.0.0.2 (a socket bound to 127.0.0.1 does not accept connections to it either)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    return "127.0.0.2"


@pytest.mark.parametrize(
    "bind", ["127.0.0.1", "0.0.0.0", "::", "::1", "worker-0.shop", "localhost"]
)
def test_bind_accepts_addresses_and_host_names(bind: str) -> None:
    """An IP address or a DNS host name is a valid worker bind address."""
    assert StreamSettings(worker_web_bind=bind).worker_web_bind == bind


@pytest.mark.parametrize(
    "bind",
    ["", " ", "0.0.0.0\x00", "host\ud800", "a" * 300, "-bad.host", "http://0.0.0.0", "1.2.3.4:80"],
)
def test_bind_refuses_garbage(bind: str) -> None:
    """Anything but an address or a host name is refused with the code bad_bind_address."""
    with pytest.raises(ValidationError) as caught:
        StreamSettings(worker_web_bind=bind)
    assert caught.value.errors()[0]["type"] == "bad_bind_address"


def test_bind_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """PRIVMESH_STREAMS_WORKER_WEB_BIND sets it; local probes use loopback for a wildcard."""
    monkeypatch.setenv("PRIVMESH_STREAMS_WORKER_WEB_BIND", "0.0.0.0")
    settings = StreamSettings()
    assert settings.worker_web_bind == "0.0.0.0"
    assert settings.worker_web_host == "127.0.0.1"
    assert StreamSettings(worker_web_bind="10.1.2.3").worker_web_host == "10.1.2.3"
    assert StreamSettings.model_fields["worker_web_bind"].default == "127.0.0.1"


async def _get(host: str, port: int) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    writer.write(b"GET /probe HTTP/1.0\r\n\r\n")
    await writer.drain()
    body = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return body


@pytest.mark.parametrize("bind", ["0.0.0.0", "127.0.0.1"])
def test_worker_pages_listen_on_the_bind_address(bind: str, tmp_path: Path) -> None:
    """The Faust app's web server binds where the setting says: 0.0.0.0 answers on an
    address other than 127.0.0.1, the loopback default does not."""
    port = free_port()
    settings = StreamSettings(worker_web_bind=bind, worker_web_port=port)
    app = make_app("shop", KafkaSettings(), settings, tmp_path)

    @app.page("/probe")
    async def probe(web: Any, request: Any) -> Any:
        return web.json({"ok": True})

    async def scenario() -> tuple[bytes, bytes | None]:
        await app.web.start()
        try:
            local = await _get("127.0.0.1", port)
            try:
                remote: bytes | None = await _get(other_address(), port)
            except OSError:
                remote = None
            return local, remote
        finally:
            await app.web.stop()

    local, remote = asyncio.run(scenario())
    assert local.startswith(b"HTTP/1.0 200") and local.endswith(b'{"ok":true}')
    if bind == "0.0.0.0":
        assert remote is not None and remote.endswith(b'{"ok":true}')
    else:
        assert remote is None


# ---------------------------------------------------------------- Kafka security settings
@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    """A CA certificate, a certificate and its key (PEM files)."""
    pki = server_pki(tmp_path / "pki", ["127.0.0.1"])
    return {"ca": pki.ca_certificate, "cert": pki.certificate, "key": pki.key}


def refused_code(**settings: Any) -> str:
    """The code of the first error KafkaSettings gives for ``settings``."""
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(**settings)
    return str(caught.value.errors()[0]["type"])


EXTERNAL: dict[str, Any] = {"bootstrap_servers": "kafka:9093"}
SASL: dict[str, Any] = {
    **EXTERNAL,
    "security_protocol": "SASL_SSL",
    "sasl_username": "u",
    "sasl_password": "p",
}


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({**EXTERNAL, "security_protocol": "TLS"}, "literal_error"),
        ({**SASL, "sasl_mechanism": "GSSAPI"}, "literal_error"),
        ({**EXTERNAL, "security_protocol": "SASL_SSL"}, "kafka_sasl_credentials_missing"),
        ({**SASL, "sasl_password": None}, "kafka_sasl_credentials_missing"),
        ({**EXTERNAL, "sasl_mechanism": "PLAIN"}, "kafka_sasl_unused"),
        ({**EXTERNAL, "security_protocol": "SSL", "sasl_username": "u"}, "kafka_sasl_unused"),
        ({**SASL, "sasl_username": ""}, "kafka_sasl_bad_credential"),
        ({**SASL, "sasl_username": "a\x00b"}, "kafka_sasl_bad_credential"),
        ({**SASL, "sasl_password": "p\ud800"}, "kafka_sasl_bad_credential"),
        ({**SASL, "sasl_password": "p" * 5000}, "kafka_sasl_bad_credential"),
        ({**SASL, "sasl_username": "line\nbreak"}, "kafka_sasl_bad_credential"),
        ({"security_protocol": "SSL"}, "kafka_embedded_plaintext"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": "p"},
         "kafka_embedded_plaintext"),
    ],
)  # fmt: skip
def test_kafka_security_refuses_nonsense(settings: dict[str, Any], code: str) -> None:
    """Protocol, mechanism and credentials that cannot work together are refused by code."""
    assert refused_code(**settings) == code


def test_kafka_tls_files_are_checked(pem: dict[str, Path], tmp_path: Path) -> None:
    """Missing, unreadable, non-PEM or mismatched TLS files are refused by code."""
    ssl_on: dict[str, Any] = {**EXTERNAL, "security_protocol": "SSL"}
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\n\xff\x00\n")
    other = server_pki(tmp_path / "other", ["127.0.0.1"])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ssl_cafile": tmp_path / "missing.pem"}, "kafka_tls_file_unreadable"),
        ({"ssl_cafile": "/tmp/nul\x00.pem"}, "kafka_tls_file_unreadable"),
        ({"ssl_cafile": tmp_path}, "kafka_tls_file_unreadable"),
        ({"ssl_cafile": garbage}, "kafka_tls_file_invalid"),
        ({"ssl_certfile": pem["cert"], "ssl_keyfile": other.key}, "kafka_tls_file_invalid"),
        ({"ssl_keyfile": pem["key"]}, "kafka_tls_key_without_cert"),
    ]
    for extra, code in cases:
        assert refused_code(**ssl_on, **extra) == code, extra
    assert refused_code(**EXTERNAL, ssl_cafile=pem["ca"]) == "kafka_tls_unused"
    fine = KafkaSettings(
        **ssl_on, ssl_cafile=pem["ca"], ssl_certfile=pem["cert"], ssl_keyfile=pem["key"]
    )
    assert fine.ssl_certfile == pem["cert"]


def test_embedded_tls_settings(pem: dict[str, Path]) -> None:
    """The embedded broker's TLS needs a certificate and its key, the journaled broker, and
    clients set to SSL; then it is accepted."""
    server: dict[str, Any] = {
        "embedded_tls_certfile": pem["cert"],
        "embedded_tls_keyfile": pem["key"],
    }
    clients: dict[str, Any] = {"security_protocol": "SSL", "ssl_cafile": pem["ca"]}
    assert (
        refused_code(embedded_tls_certfile=pem["cert"], **clients)
        == "kafka_embedded_tls_incomplete"
    )
    assert (
        refused_code(**server, **clients, embedded_journal=False)
        == "kafka_embedded_tls_unjournaled"
    )
    assert refused_code(**server) == "kafka_embedded_tls_mismatch"
    assert (
        refused_code(**server, **clients, embedded_tls_cafile=pem["key"])
        == "kafka_tls_file_invalid"
    )
    kafka = KafkaSettings(**server, **clients, embedded_tls_cafile=pem["ca"])
    assert kafka.embedded and kafka.embedded_tls_cafile == pem["ca"]


def test_kafka_security_from_environment(
    monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path]
) -> None:
    """The settings read PRIVMESH_KAFKA_* variables; the password stays a secret."""
    for name, value in {
        "BOOTSTRAP_SERVERS": "kafka:9093",
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_MECHANISM": "SCRAM-SHA-512",
        "SASL_USERNAME": "privmesh",
        "SASL_PASSWORD": "s3cret-pw",
        "SSL_CAFILE": str(pem["ca"]),
        "SSL_CHECK_HOSTNAME": "false",
    }.items():
        monkeypatch.setenv(f"PRIVMESH_KAFKA_{name}", value)
    kafka = KafkaSettings()
    assert kafka.sasl_mechanism == "SCRAM-SHA-512" and not kafka.ssl_check_hostname
    assert kafka.sasl_password is not None and kafka.sasl_password.get_secret_value() == "s3cret-pw"
    assert "s3cret-pw" not in repr(kafka)
