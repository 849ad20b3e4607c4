"""Time from a fresh `privmesh up` to the first DP answer on embedded defaults.

Baseline, measured in the same run: the cold-start floor of the heaviest child
process (a fresh interpreter importing feast, faust and fastapi), which no
launcher can beat. Writes bench/results/skeleton.json; last line ``RESULT {json}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import free_port

CLASS = "shop.orders.distinct_customers"
RESULTS = Path(__file__).with_name("results") / "skeleton.json"


def import_floor() -> float:
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", "import feast, faust, fastapi, opendp"], check=True)
    return time.monotonic() - began


def one_run(window_seconds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="privmesh-bench-") as tmp:
        api_port = free_port()
        env = {
            **os.environ,
            "PRIVMESH_DATA_DIR": str(Path(tmp) / "data"),
            "PRIVMESH_KAFKA_EMBEDDED_PORT": str(free_port()),
            "PRIVMESH_API_PORT": str(api_port),
            "PRIVMESH_STREAMS_WORKER_WEB_PORT": str(free_port()),
            "PRIVMESH_STREAMS_WINDOW_SECONDS": str(window_seconds),
        }
        log_path = Path(tmp) / "up.log"
        log = log_path.open("w")
        began = time.monotonic()
        up = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "up"], env=env, stdout=log, stderr=log
        )
        ready = None
        answer = None
        try:
            while time.monotonic() - began < 180 and up.poll() is None:
                if ready is None and "privmesh is running" in log_path.read_text():
                    ready = time.monotonic() - began
                try:
                    r = httpx.get(f"http://127.0.0.1:{api_port}/v1/queries/{CLASS}", timeout=2)
                    if r.status_code == 200:
                        answer = time.monotonic() - began
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        finally:
            subprocess.run(
                [sys.executable, "-m", "infra.cli", "down"],
                env=env,
                check=False,
                capture_output=True,
                timeout=60,
            )
            up.wait(60)
            log.close()
        if answer is None:
            raise SystemExit("no DP answer within 180 s")
        return {"ready_s": round(ready or answer, 2), "first_answer_s": round(answer, 2)}


def main() -> None:
    floor = import_floor()
    default = one_run(window_seconds=10)
    short = one_run(window_seconds=2)
    result = {
        "benchmark": "skeleton",
        "baseline_import_floor_s": round(floor, 2),
        "default_window_10s": default,
        "window_2s": short,
        "note": "first answer waits for the first event-time window to close plus grace (2 s)",
        "cores": os.cpu_count(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
