"""Helpers every benchmark uses."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class BrokerComponent:
    """A journaled broker component (``python -m infra.broker``) a benchmark started."""

    bootstrap: str
    data_dir: Path
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def journaled_broker(prefix: str, env: dict[str, str] | None = None) -> Iterator[BrokerComponent]:
    """Run ``python -m infra.broker`` on a free port with a fresh data dir (under a new
    temporary folder named ``prefix``, its log beside it) and this process's environment less
    ``PRIVMESH_*``, plus ``env``; stopped (SIGTERM, then SIGKILL after 30 s) on exit."""
    from infra.ports import wait_for_port

    root = Path(tempfile.mkdtemp(prefix=prefix))
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVMESH_")}
    child_env.update(env or {}, PRIVMESH_DATA_DIR=str(data_dir))
    with (root / "broker.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra.broker", "--port", str(port)],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        if not wait_for_port(port, 30):
            raise SystemExit(f"the journaled broker did not start (log: {root / 'broker.log'})")
        yield BrokerComponent(f"127.0.0.1:{port}", data_dir, process)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
