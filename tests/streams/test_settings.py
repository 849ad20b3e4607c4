"""Stream settings: the worker's web bind address."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import ValidationError

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
