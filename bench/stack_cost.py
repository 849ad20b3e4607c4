"""Cost at rest of the whole demo stack: CPU cores per 1,000 events/s (issue #22 item 5).

One run (``python -m bench.stack_cost``): for each generator rate in ``RATES`` (the demo's
default first), ``privmesh up`` starts the full stack on embedded defaults in a fresh data
directory (broker, six domain workers, API, retention, generator), and once every component
is healthy and ``WARM_SECONDS`` have passed, the CPU time (user + system) of the launcher
and every process under it is read from ``/proc`` (psutil) at the start and the end of a
``WINDOW_SECONDS`` window, per component; the events the workers took in over the same
window come from their health pages (accepted + rejected per product, summed over the
domains). Result: cores used, events/s in, and cores per 1,000 events/s, for the whole stack
and per component kind. Target: <= 0.25 core per 1,000 events/s. The idle cost (a stack with
no traffic has a floor: health checks, pollers, the broker) weighs more at a low rate, which
is why two rates are measured.

Writes bench/results/stack_cost.json; the last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.streams import load_average

RATES = [float(r) for r in os.environ.get("BENCH_STACK_RATES", "200,1000").split(",")]
WARM_SECONDS = float(os.environ.get("BENCH_STACK_WARM_SECONDS", "20"))
WINDOW_SECONDS = float(os.environ.get("BENCH_STACK_WINDOW_SECONDS", "60"))
TARGET_CORES_PER_1K = 0.25
RESULTS = Path(__file__).with_name("results") / "stack_cost.json"


def status(env: dict[str, str]) -> dict[str, Any]:
    """``privmesh status --json`` of the stack in ``env``'s data directory ({} if none)."""
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "status", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        return {}


def kind_of(name: str) -> str:
    """A component's kind: ``worker-shop`` -> ``worker``."""
    return name.split("-", 1)[0]


def cpu_by_kind(launcher: psutil.Process, pids: dict[int, str]) -> dict[str, float]:
    """CPU seconds so far per component kind: each process under the launcher counts for
    the component it descends from (the launcher itself and anything else as ``launcher``)."""
    totals: dict[str, float] = {}
    for proc in [launcher, *launcher.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            owner: psutil.Process | None = proc
            kind = "launcher"
            while owner is not None and owner.pid != launcher.pid:
                if owner.pid in pids:
                    kind = kind_of(pids[owner.pid])
                    break
                owner = owner.parent()
        except psutil.Error:
            continue
        totals[kind] = totals.get(kind, 0.0) + times.user + times.system
    return totals


def events_in(endpoints: list[str]) -> int:
    """Events the workers took in so far: accepted + rejected over every product."""
    total = 0
    for url in endpoints:
        try:
            page = httpx.get(url, timeout=5).json()
        except (httpx.HTTPError, ValueError):
            continue
        for counters in page.get("products", {}).values():
            total += int(counters.get("accepted", 0)) + int(counters.get("rejected", 0))
    return total


def measure(rate: float) -> dict[str, Any]:
    """One stack at generator ``rate``: cores, events/s and cores per 1k events/s."""
    with tempfile.TemporaryDirectory(prefix="privmesh-bench-stack-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVMESH_")}
        env |= {"PRIVMESH_DATA_DIR": str(Path(tmp) / "data"), "PRIVMESH_GENERATOR_RATE": str(rate)}
        log = (Path(tmp) / "up.log").open("wb")
        up = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "up"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            state: dict[str, Any] = {}
            while time.monotonic() < deadline:
                state = status(env)
                if state.get("healthy"):
                    break
                if up.poll() is not None:
                    raise SystemExit(f"privmesh up exited with {up.returncode}")
                time.sleep(2)
            else:
                raise SystemExit(f"the stack was not healthy in 240 s: {state}")
            time.sleep(WARM_SECONDS)
            rows = status(env).get("components", [])
            pids = {int(r["pid"]): str(r["name"]) for r in rows if r.get("pid")}
            endpoints = [
                str(r["endpoint"])
                for r in rows
                if str(r["name"]).startswith("worker-") and str(r["endpoint"]).startswith("http")
            ]
            launcher = psutil.Process(up.pid)
            cpu0, events0, t0 = cpu_by_kind(launcher, pids), events_in(endpoints), time.monotonic()
            time.sleep(WINDOW_SECONDS)
            cpu1, events1, t1 = cpu_by_kind(launcher, pids), events_in(endpoints), time.monotonic()
        finally:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(10)
    seconds = t1 - t0
    cores = {k: round((cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / seconds, 3) for k in cpu1}
    total = round(sum(cores.values()), 3)
    events_per_s = (events1 - events0) / seconds
    per_1k = total / (events_per_s / 1000) if events_per_s > 0 else float("inf")
    return {
        "generator_rate": rate,
        "events_per_s_in": round(events_per_s, 1),
        "workers_read": len(endpoints),
        "cores": total,
        "cores_by_kind": dict(sorted(cores.items(), key=lambda kv: -kv[1])),
        "cores_per_1k_events_per_s": round(per_1k, 3),
        "window_seconds": round(seconds, 1),
    }


def main() -> None:
    load_before = load_average()
    runs = []
    for rate in RATES:
        run = measure(rate)
        print(
            f"rate {rate:g}: {run['events_per_s_in']:,.0f} events/s in, {run['cores']} cores, "
            f"{run['cores_per_1k_events_per_s']} cores per 1k events/s",
            flush=True,
        )
        runs.append(run)
    best = min(r["cores_per_1k_events_per_s"] for r in runs)
    result = {
        "benchmark": "stack_cost",
        "cores_available": os.cpu_count(),
        "runs": runs,
        "warm_seconds": WARM_SECONDS,
        "load_average": {"before": load_before, "after": load_average()},
        "targets": {"cores_per_1k_events_per_s_max": TARGET_CORES_PER_1K},
        "met": {"at_every_rate": all(
            r["cores_per_1k_events_per_s"] <= TARGET_CORES_PER_1K for r in runs
        ), "at_best_rate": best <= TARGET_CORES_PER_1K},
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
