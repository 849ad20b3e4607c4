"""A new team onboards two domains of its own, no demo domain loaded: init, lint, `up`,
`produce --file`, a DP answer from its own class, federated training across both, `down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from infra.broker import tansu_binary
from infra.errors import BrokerBinaryMissing
from tests.conftest import free_port
from tests.infra.test_cli import run_cli

NORTH, SOUTH = "clinic_north", "clinic_south"
KINDS = ("routine", "urgent", "follow_up")


def visits(path: Path, prefix: str, count: int) -> Path:
    """``count`` valid visits of now, as JSON lines, in ``path``."""
    now = datetime.now(UTC).isoformat()
    lines = [
        json.dumps(
            {
                "subject_id": f"{prefix}-{i % 40}",
                "kind": KINDS[i % 3],
                "duration_min": (i * 7) % 120,
                "occurred_at": now,
            }
        )
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_for(check: object, timeout: float, what: str, log: Path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check() if callable(check) else None
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"{what} did not happen in {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.mark.integration
def test_a_new_team_onboards_its_own_domains(tmp_path: Path) -> None:
    """From an empty folder: two scaffolded domains lint clean, `up` serves them alone,
    their checked events reach a DP answer of their own class, a task trains across both,
    and `down` stops everything."""
    try:
        tansu_binary()
    except BrokerBinaryMissing as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    mesh = tmp_path / "my-domains"
    ports = {
        "PRIVMESH_KAFKA_EMBEDDED_PORT": free_port(),
        "PRIVMESH_API_PORT": free_port(),
        "PRIVMESH_STREAMS_WORKER_WEB_PORT": free_port(),
    }
    env = {
        **{k: str(v) for k, v in ports.items()},
        "PRIVMESH_DOMAIN_DIRS": str(mesh),
        "PRIVMESH_DATA_DIR": str(tmp_path / "data"),
        "PRIVMESH_STREAMS_WINDOW_SECONDS": "4",
        "PRIVMESH_STREAMS_GRACE_SECONDS": "1",
    }
    began = time.monotonic()
    assert run_cli("domains", "init", NORTH, "--dir", str(mesh)).returncode == 0
    made = run_cli("domains", "init", SOUTH, "--dir", str(mesh), "--train-with", NORTH)
    assert made.returncode == 0, made.stderr
    lint = run_cli("domains", "lint", env=env)
    assert lint.returncode == 0 and "0 error(s)" in lint.stderr, lint.stdout + lint.stderr

    log = tmp_path / "up.log"
    up = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up"],
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{ports['PRIVMESH_API_PORT']}"
    try:
        wait_for(lambda: "privmesh is running" in log.read_text(), 120, "up", log)
        classes = httpx.get(f"{api}/v1/queries", timeout=10).json()["classes"]
        assert {c["id"] for c in classes} == {
            f"{NORTH}.visits.visit_count",
            f"{SOUTH}.visits.visit_count",
        }
        for domain, count in ((NORTH, 200), (SOUTH, 200)):
            events = visits(tmp_path / f"{domain}.jsonl", domain, count)
            sent = run_cli("produce", "-d", domain, "-f", str(events), env=env, timeout=60)
            assert sent.returncode == 0, sent.stderr
            assert f"sent {count} event(s) to {domain}.visits.ingest" in sent.stderr

        def answer() -> dict[str, object] | None:
            response = httpx.get(f"{api}/v1/queries/{NORTH}.visits.visit_count", timeout=10)
            return response.json() if response.status_code == 200 else None

        found = wait_for(answer, 90, "a DP answer", log)
        assert isinstance(found, dict)
        assert found["privacy_unit"] == "subject_day" and isinstance(found["value"], int)
        assert found["daily_epsilon"]["epsilon"] == "0.5"
        print(f"empty folder to first DP answer: {time.monotonic() - began:.1f} s")

        def trained() -> subprocess.CompletedProcess[str] | None:
            result = run_cli("train", "--task", f"{SOUTH}_long_visits", env=env, timeout=300)
            return result if result.returncode == 0 else None

        result = wait_for(trained, 200, "training across both domains", log)
        assert isinstance(result, subprocess.CompletedProcess)
        assert f"registered {SOUTH}_long_visits-v1" in result.stdout + result.stderr
    finally:
        down = run_cli("down", env=env, timeout=120)
        up.wait(timeout=60)
    assert down.returncode == 0, down.stderr
    assert up.returncode is not None
