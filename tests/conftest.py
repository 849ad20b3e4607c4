"""Shared fixtures: isolated settings, and real services for integration tests.

Integration tests use the real embedded broker (started per test session), and the
Postgres/Redis servers of the machine. Absent services skip with a reason, unless
``PRIVMESH_REQUIRE_INTEGRATION=1`` (set by ``.ci/run``), where a skip is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

REQUIRE_INTEGRATION = os.environ.get("PRIVMESH_REQUIRE_INTEGRATION") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Turn a skipped integration test into a failure when integration is required."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_INTEGRATION and report.skipped and item.get_closest_marker("integration"):
        report.outcome = "failed"
        report.longrepr = (
            f"integration test skipped while PRIVMESH_REQUIRE_INTEGRATION=1: {report.longrepr}"
        )


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets its own data directory, no stray PRIVMESH_* settings, and reads the
    runtime settings afresh: the cached ``get_runtime_settings`` is emptied whenever the
    test sets or removes a variable through ``monkeypatch``, and again after it ends."""
    from domains.runtime import get_runtime_settings

    setenv, delenv = monkeypatch.setenv, monkeypatch.delenv

    def setenv_fresh(name: str, value: str, prepend: str | None = None) -> None:
        setenv(name, value, prepend)
        get_runtime_settings.cache_clear()

    def delenv_fresh(name: str, raising: bool = True) -> None:
        delenv(name, raising)
        get_runtime_settings.cache_clear()

    monkeypatch.setenv = setenv_fresh  # type: ignore[method-assign]
    monkeypatch.delenv = delenv_fresh  # type: ignore[method-assign]
    for name in list(os.environ):
        if name.startswith("PRIVMESH_") and name != "PRIVMESH_REQUIRE_INTEGRATION":
            monkeypatch.delenv(name)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("PRIVMESH_DATA_DIR", str(data_dir))
    yield data_dir
    get_runtime_settings.cache_clear()


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A real embedded Tansu broker on a free loopback port; yields its bootstrap address."""
    from infra.broker import tansu_command
    from infra.errors import BrokerBinaryMissing
    from infra.ports import wait_for_port

    try:
        port = free_port()
        command = tansu_command(port)
    except BrokerBinaryMissing as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_for_port(port, 10):
            pytest.skip("embedded broker did not start within 10 s")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class FreshBroker(NamedTuple):
    """A broker of one test: its bootstrap address, and ``restart(down_seconds)``."""

    bootstrap: str
    restart: Callable[..., None]


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[FreshBroker]:
    """An embedded Tansu broker of this test alone (empty, in memory, on a free port).

    ``restart(down_seconds=3.0)`` kills it (SIGKILL), waits, and starts an empty one on the
    same port, as a crashed broker that the supervisor restarts: topics and committed
    offsets are gone. Its output goes to ``tmp_path / "broker.log"``.
    """
    from infra.broker import tansu_command
    from infra.errors import BrokerBinaryMissing
    from infra.ports import wait_for_port

    try:
        port = free_port()
        command = tansu_command(port)
    except BrokerBinaryMissing as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    log = (tmp_path / "broker.log").open("ab")
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        if not wait_for_port(port, 10):
            raise RuntimeError(f"embedded broker did not start on port {port} within 10 s")

    def restart(down_seconds: float = 3.0) -> None:
        procs[-1].kill()
        procs[-1].wait(10)
        time.sleep(down_seconds)
        start()

    try:
        try:
            start()
        except RuntimeError as exc:
            pytest.skip(str(exc))
        yield FreshBroker(f"127.0.0.1:{port}", restart)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        log.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the machine's Postgres (trust auth, database ``test``); skips when absent."""
    url = os.environ.get("PRIVMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if not reachable(5432):
        pytest.skip("Postgres is not running on 127.0.0.1:5432")
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the machine's Redis; skips when absent."""
    if not reachable(6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"
