"""Bind addresses: ``privmesh api`` listens where PRIVMESH_API_HOST says (the posture page
with it), and the stack probes workers and the API where their bind addresses put them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from dashboards_api.settings import ApiSettings
from infra.stack import build_components
from streams.settings import StreamSettings, connect_host
from tests.conftest import free_port
from tests.streams.test_settings import other_address

REPO = Path(__file__).resolve().parents[2]


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_api_listens_on_its_host_setting(host: str, isolated_env: Path, tmp_path: Path) -> None:
    """`privmesh api` with PRIVMESH_API_HOST=0.0.0.0 answers /healthz and the posture page
    on an address other than 127.0.0.1; with the loopback default only on 127.0.0.1."""
    port = free_port()
    env = {**os.environ, "PRIVMESH_API_HOST": host, "PRIVMESH_API_PORT": str(port)}
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "api"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        local = None
        while local is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            local = _get(f"http://127.0.0.1:{port}/healthz")
            time.sleep(0.3)
        assert local is not None and local.status_code == 200, log.read_text()[-3000:]
        remote = _get(f"http://{other_address()}:{port}/posture")
        if host == "0.0.0.0":
            assert remote is not None and remote.status_code == 200
            assert "text/html" in remote.headers["content-type"]
        else:
            assert remote is None
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize("host", ["", "0.0.0.0 ", "a\x00b", "\ud800", "x" * 300, "http://h"])
def test_api_host_refuses_garbage(host: str) -> None:
    """PRIVMESH_API_HOST must be an IP address or a host name (code bad_bind_address)."""
    with pytest.raises(ValidationError) as caught:
        ApiSettings(host=host)
    assert caught.value.errors()[0]["type"] == "bad_bind_address"


def test_stack_probes_where_the_components_listen() -> None:
    """The health URLs the stack probes (and the posture page reads) follow the bind
    addresses: loopback for a wildcard, the address itself otherwise, brackets for IPv6."""
    assert connect_host("0.0.0.0") == "127.0.0.1"
    assert connect_host("::") == "[::1]"
    assert connect_host("10.0.0.7") == "10.0.0.7"
    components = build_components(
        domains={"shop": 6066},
        generated=[],
        embedded_broker=False,
        broker_port=19092,
        bootstrap="kafka:9092",
        topics=[],
        partitions=1,
        replication=1,
        api_port=8000,
        start_timeout=10,
        web_host=StreamSettings(worker_web_bind="10.0.0.7").worker_web_host,
        api_host=connect_host(ApiSettings(host="::").host),
    )
    urls = {c.name: c.health_url for c in components}
    assert urls["worker-shop"] == "http://10.0.0.7:6066/privmesh/health"
    assert urls["api"] == "http://[::1]:8000/healthz"
