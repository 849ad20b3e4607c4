"""Expected CLI failures print one line, exit non-zero and show no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    text = " ".join(lines)
    assert text.startswith("privmesh: error:"), result.stderr
    for needle in needles:
        assert needle in text, text


def test_invalid_setting_value() -> None:
    """A malformed setting names the variable to fix."""
    result = run_cli("up", env={"PRIVMESH_KAFKA_EMBEDDED_PORT": "not-a-port"})
    assert_one_line_error(result, "embedded_port", "PRIVMESH_")


def test_occupied_port() -> None:
    """An occupied API port is reported with the setting that moves it; nothing starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli(
            "up",
            env={"PRIVMESH_API_PORT": str(port), "PRIVMESH_KAFKA_EMBEDDED_PORT": str(free_port())},
        )
    assert_one_line_error(result, str(port), "PRIVMESH_API_PORT")


def test_missing_broker_binary(tmp_path: Path) -> None:
    """A missing Tansu binary says how to fix it (reinstall, CALF_TANSU_BIN or external Kafka)."""
    result = run_cli(
        "up",
        env={
            "CALF_TANSU_BIN": str(tmp_path / "no-such-tansu"),
            "PRIVMESH_KAFKA_EMBEDDED_PORT": str(free_port()),
            "PRIVMESH_API_PORT": str(free_port()),
            "PRIVMESH_STREAMS_WORKER_WEB_PORT": str(free_port()),
        },
    )
    assert_one_line_error(result, "PRIVMESH_KAFKA_BOOTSTRAP_SERVERS")


def test_unknown_domain() -> None:
    """An unknown domain lists the known ones."""
    result = run_cli("up", "--domain", "nope")
    assert_one_line_error(result, "nope", "shop")


def test_status_and_down_without_stack() -> None:
    """status without a stack exits non-zero with a hint; down is a no-op that says so."""
    status = run_cli("status")
    assert_one_line_error(status, "privmesh up")
    down = run_cli("down")
    assert down.returncode == 0 and "nothing to stop" in down.stdout
