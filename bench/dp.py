"""The DP dashboards API's speed and the continual release's error, in one run.

Measured against the real app (``uvicorn infra.api_app:app_from_settings``) over a
real Feast store holding window aggregates and a sqlite ledger, with API keys on:

* cached release p50/p99: the same closed window asked again (the replica's memory of
  committed releases, no noise), each request alternating with a ``/healthz`` one so both
  meet the same machine (the framework's floor in the same moments);
* fresh release p99: a not-yet-released window each time (Feast online read, OpenDP
  noise, ledger commit before the answer);
* requests/s of cached releases with 2 uvicorn workers, against ``/healthz`` on them;
* user-level DP histogram over 1e6 events of a UTC day: from the processor's
  pre-aggregates (per-subject truncation, OpenDP noise) vs the plain polars group-by vs
  the event path (and the previous first-k plan) vs OpenDP's ``Context`` path, every path
  in each round, rounds repeated, ratios the median of the rounds' ratios (a load change
  on the shared machine hits a round's paths alike);
* continual release at T=86,400: binary-tree error vs naive per-refresh noise.

Writes bench/results/dp.json; the last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import free_port, percentile

RESULTS = Path(__file__).with_name("results") / "dp.json"
WINDOW = 10
KEY = "bench-consumer-key"
OWNER = "bench-owner-key"
CLASS = "shop.orders.bench_orders"
# A shipped once-a-day class the benchmark withdraws (as its domain owner could) so that its
# own class fits the product's allocation; the benchmark never asks for it.
MAKES_ROOM = "shop.orders.median_order_cents"
EVENTS_T0 = 1_795_392_000  # a UTC midnight: the events fill one day
ROUNDS = 7  # of the group-by paths, each round running every path
TARGETS = {
    "cached_p99_ms": 2.0,
    "fresh_p99_ms": 10.0,
    "dp_vs_polars": 1.5,
    "context_vs_dp": 100.0,
    "cached_rps": 1000.0,
    "continual_error_ratio": 50.0,
}


def fill_store(data_dir: Path, windows: list[int]) -> None:
    """Window aggregates of the shop orders product for ``windows``, in its Feast store."""
    from domains.registry import load_contracts
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore

    store = DomainFeatureStore(load_contracts()["shop"], data_dir, FeatureStoreSettings())
    store.apply()
    view = store.store.get_feature_view("orders_window_stats")
    rows = [
        {
            "window_start": w,
            "partition": 0,
            "distinct_subjects": 900 + w % 97,
            "events": 1_400 + w % 131,
            "contribution_bound": 20,
            "new_subjects_period": 10 + w % 7,
            "new_subjects_hour": 20 + w % 11,
            "truncated_events": w % 5,
            "max_records_per_period": 10,
            "max_windows_per_period": 10,
            "complete": 1,
            "watermark": w + WINDOW + 2,
            "late_events": 0,
            "amount_cents_sum": 5_000_000.0 + w % 1_000,
            "amount_cents_sum_cap": 100_658.0,  # the contract's per-day cap, applied
            "event_timestamp": datetime.fromtimestamp(w + WINDOW, tz=UTC),
        }
        for w in windows
    ]
    for i in range(0, len(rows), 500):
        store.write_online(view, rows[i : i + 500])


def start_api(env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "uvicorn", "infra.api_app:app_from_settings", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning", "--no-access-log",
        # uvicorn kills a worker that misses a 5 s health check: on a loaded machine the
        # imports alone can take longer, and the workers would be respawned forever.
        "--timeout-worker-healthcheck", "120",
    ]  # fmt: skip
    process = subprocess.Popen(  # its own session: stop() ends the workers with it
        command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 300  # a shared machine can be slow to import
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"API exited: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    stop(process)  # never left running (with its workers) after a failed start
    raise RuntimeError(f"API did not start in 300 s: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """End the API and its workers (its process group)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def timed(connection: http.client.HTTPConnection, paths: list[str]) -> list[float]:
    """Milliseconds of each sequential request on one keep-alive connection.

    ``http.client`` rather than httpx: the client's own cost stays well under 0.1 ms.
    """
    out = []
    headers = {"Authorization": f"Bearer {KEY}"}
    for path in paths:
        began = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        out.append((time.perf_counter() - began) * 1000)
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
    return out


async def _load(port: int, path: str, seconds: float, connections: int) -> float:
    """Requests/s of keep-alive GETs of ``path`` over ``connections`` sockets."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    ).encode()
    done = 0
    stop_at = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            done += 1
        writer.close()

    began = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    return done / (time.monotonic() - began)


def load(port: int, path: str, seconds: float = 8.0, connections: int = 16) -> float:
    return asyncio.run(_load(port, path, seconds, connections))


def api_part(tmp: Path) -> dict[str, Any]:
    now = int(time.time())
    last = now - now % WINDOW - 2 * WINDOW
    windows = [last - WINDOW * i for i in range(3_000)]  # closed, newest first
    # Rows for the next 10 minutes too: the "last closed window" moves during the run.
    fill_store(tmp, windows + [last + WINDOW * i for i in range(1, 60)])
    env = {
        **os.environ,
        "PRIVMESH_DATA_DIR": str(tmp),
        "PRIVMESH_STREAMS_WINDOW_SECONDS": str(WINDOW),
        "PRIVMESH_API_KEYS": json.dumps(
            {KEY: "consumer", OWNER: {"role": "domain_owner", "domains": ["shop"]}}
        ),
        "PRIVMESH_API_HISTORY_WINDOWS": "3000",
        "PRIVMESH_KAFKA_PARTITIONS": "1",  # the rows below are one partition's
    }
    port = free_port()
    api = start_api(env, port, 1, tmp / "api-1.log")
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            # A domain owner registers the benchmark's class (tiny epsilon, so 2,000 fresh
            # releases fit its budget) through the API, as in production, in the room a
            # withdrawn class leaves in the product's allocation (at least 0.1).
            owner = {"Authorization": f"Bearer {OWNER}"}
            gone = client.delete(f"/v1/classes/{MAKES_ROOM}", headers=owner)
            if gone.status_code >= 400:
                raise RuntimeError(f"withdrawal refused: {gone.status_code} {gone.text[:600]}")
            bench_class = {
                "id": CLASS,
                "title": "Orders per window (benchmark)",
                "domain": "shop",
                "product": "orders",
                "aggregate": "count_records",
                "epsilon_per_release": "0.00005",
                "budget_per_day": "0.1",
            }
            put = client.put(f"/v1/classes/{CLASS}", json=bench_class, headers=owner)
            if put.status_code >= 400:
                raise RuntimeError(f"class refused: {put.status_code} {put.text[:600]}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        timed(connection, ["/healthz"] * 200 + [f"/v1/queries/{CLASS}"] * 50)  # warm up
        fresh_paths = [f"/v1/queries/{CLASS}?window_start={w}" for w in windows[1:1_001]]
        fresh = timed(connection, fresh_paths)
        # Alternating: each cached answer beside a /healthz answered in the same moments.
        pairs = timed(
            connection, ["/healthz", f"/v1/queries/{CLASS}?window_start={windows[1]}"] * 3_000
        )
        health, cached = pairs[0::2], pairs[1::2]
        connection.close()
    finally:
        stop(api)
    port = free_port()
    api = start_api(env, port, 2, tmp / "api-2.log")
    try:
        load(port, "/healthz", 1.0)  # warm both workers
        health_rps = load(port, "/healthz")
        cached_rps = load(port, f"/v1/queries/{CLASS}?window_start={windows[1]}")
    finally:
        stop(api)
    return {
        "healthz_p50_ms": round(percentile(health, 0.5), 3),
        "healthz_p99_ms": round(percentile(health, 0.99), 3),
        "cached_p50_ms": round(percentile(cached, 0.5), 3),
        "cached_p99_ms": round(percentile(cached, 0.99), 3),
        "fresh_p50_ms": round(percentile(fresh, 0.5), 3),
        "fresh_p99_ms": round(percentile(fresh, 0.99), 3),
        "fresh_releases": len(fresh),
        "healthz_rps_2_workers": round(health_rps),
        "cached_rps_2_workers": round(cached_rps),
    }


def best_of(runs: int, work: Callable[[], object]) -> float:
    """Fastest of ``runs`` timings of ``work``, seconds."""
    out = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        out.append(time.perf_counter() - began)
    return min(out)


def write_events(folder: Path, rows: int = 1_000_000, subjects: int = 100_000) -> None:
    """``rows`` synthetic shop-order product events in 10 part files (10 offline flushes):
    heavy-tailed activity per subject, over one day."""
    import numpy as np
    import pyarrow as pa

    from domains.registry import load_contracts
    from feature_repo.events import event_schema
    from feature_repo.offline import append_part

    product = load_contracts()["shop"].product("orders")
    assert product is not None
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, subjects + 1) ** 0.8
    subject = rng.choice(subjects, size=rows, p=weights / weights.sum())
    tokens = np.array([f"k1.{i:027x}" for i in range(subjects)])
    times = np.sort(rng.uniform(EVENTS_T0, EVENTS_T0 + 86_400, rows))
    methods = rng.choice(["card", "paypal", "invoice", "gift_card"], rows, p=[0.6, 0.25, 0.1, 0.05])
    amounts = np.minimum(rng.lognormal(8.5, 1.0, rows).astype(np.int64), 100_000)
    schema = event_schema(product)
    for part in range(10):
        part_rows = slice(part * rows // 10, (part + 1) * rows // 10)
        columns = {
            product.subject_field: tokens[subject[part_rows]],
            "order_id": [f"o{i}" for i in range(part_rows.start, part_rows.stop)],
            "payment_method": methods[part_rows],
            "amount_cents": amounts[part_rows],
            product.event_time: (times[part_rows] * 1e6).astype("datetime64[us]"),
        }
        arrays = [
            pa.array(columns[f.name], f.type)
            if f.name in columns
            else pa.nulls(len(times[part_rows]), f.type)
            for f in schema
        ]
        append_part(folder, pa.Table.from_arrays(arrays, schema=schema).to_pandas())


def previous_plan(events: Any, q: Any, start: datetime, end: datetime) -> Any:
    """The event path before pre-aggregates (histogram only): each subject's first k
    records by event time, by a sort and a group-by on the 29-character token."""
    import polars as pl

    s, t, g, k = q.subject, q.time, q.group_by, q.max_records_per_subject
    rows = (
        events.select(s, t, g)
        .filter((pl.col(t) >= start) & (pl.col(t) < end))
        .filter(pl.col(g).is_in(q.categories))
    )
    firsts = rows.sort(t, maintain_order=True).group_by(s).agg(pl.col(g).head(k)).explode(g)
    return firsts.group_by(g).agg(pl.len().alias("value"))


def write_preaggregates(folder: Path, day_start: int) -> dict[str, Any]:
    """What the processor writes next to the events: a pre-aggregate part per events
    part, then the day file once the day is over (timed)."""
    import pyarrow.parquet as pq

    from domains.registry import load_contracts
    from feature_repo import preaggregate

    product = load_contracts()["shop"].product("orders")
    assert product is not None
    layout = preaggregate.Layout.of(product)
    target = preaggregate.preaggregate_folder(folder)
    parts = sorted(folder.glob("part-*.parquet"))
    tables = [pq.read_table(p) for p in parts]  # in the processor they are in memory
    began = time.perf_counter()
    for part, table in zip(parts, tables, strict=True):
        preaggregate.write_part(target, part, table, layout)
    parts_s = time.perf_counter() - began
    began = time.perf_counter()
    day = preaggregate.merge_day(preaggregate.layout_folder(target, layout), layout, day_start)
    merge_s = time.perf_counter() - began
    assert day is not None
    rows = pq.read_metadata(day).num_rows
    part_rows = sum(pq.read_metadata(p).num_rows for p in preaggregate.parts(day.parent))
    events = sum(t.num_rows for t in tables)
    return {
        "preaggregate_part_ms_per_100k_events": round(parts_s * 1000 / (events / 1e5), 1),
        "preaggregate_part_rows": part_rows,
        "preaggregate_day_merge_ms": round(merge_s * 1000, 1),
        "preaggregate_day_rows": rows,
    }


def groupby_part(folder: Path) -> dict[str, Any]:
    """A user-level DP histogram over 1e6 events of one UTC day: from the processor's
    pre-aggregates (the day file) vs the plain polars group-by vs the event path (today's
    rule, and the previous first-k-by-time plan) vs OpenDP's Context (medians of
    interleaved rounds)."""
    import statistics
    from decimal import Decimal

    import polars as pl

    from bench.dp_baselines import naive_context_release
    from dashboards_api.event_aggregates import (
        EventQuery,
        exact_plan,
        plan_from_store,
        release,
        scan_events,
    )
    from domains.registry import load_contracts

    write_events(folder)
    written = write_preaggregates(folder, EVENTS_T0)
    product = load_contracts()["shop"].product("orders")
    assert product is not None
    key, when = "payment_method", product.event_time
    start = datetime.fromtimestamp(EVENTS_T0, tz=UTC)
    end = datetime.fromtimestamp(EVENTS_T0 + 86_400, tz=UTC)
    query = EventQuery.for_product(
        product, "histogram", max_records_per_subject=20, epsilon=Decimal(1), group_by=key
    )

    def plain() -> object:
        return (
            scan_events(folder)
            .select(when, key)
            .filter((pl.col(when) >= start) & (pl.col(when) < end))
            .group_by(key)
            .agg(pl.len())
            .collect()
        )

    def bounded() -> object:
        return plan_from_store(folder, query, start, end).collect()

    def private() -> object:
        return release(query, plan_from_store(folder, query, start, end).collect())

    def events_path() -> object:
        return release(query, exact_plan(scan_events(folder), query, start, end).collect())

    def previous() -> object:
        return previous_plan(scan_events(folder), query, start, end).collect()

    same = exact_plan(scan_events(folder), query, start, end).collect()
    assert plan_from_store(folder, query, start, end).collect().equals(same)  # exact

    def context() -> object:
        return naive_context_release(scan_events(folder), query, start, end)

    private()  # the mechanism is built once per class, as in the API
    # Every path in each round, in the same order, over ROUNDS rounds: a slower moment of
    # the shared machine falls on one round's paths alike, and the median round is reported.
    # The fast paths run 3 times a round (their median: a typical run, as the slow paths'
    # single one, never a best against a typical); each ratio is taken within a round.
    timings: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for work in (plain, bounded, private):
            runs = [best_of(1, work) * 1000 for _ in range(3)]
            timings.setdefault(work.__name__, []).append(statistics.median(runs))
        for work in (events_path, previous, context):
            timings.setdefault(work.__name__, []).append(best_of(1, work) * 1000)
    rows = scan_events(folder).select(pl.len()).collect().item()
    p50 = {name: statistics.median(values) for name, values in timings.items()}

    def ratio(slow: str, fast: str) -> float:
        """The median over rounds of the round's ``slow`` / ``fast`` time."""
        return statistics.median(s / f for s, f in zip(timings[slow], timings[fast], strict=True))

    return {
        "groupby_events": rows,
        "groupby_window": "one UTC day (a 1d event class's window)",
        "groupby_plain_ms": round(p50["plain"], 1),
        "groupby_bounded_ms": round(p50["bounded"], 1),
        "groupby_dp_ms": round(p50["private"], 1),
        "groupby_events_path_ms": round(p50["events_path"], 1),
        "groupby_previous_ms": round(p50["previous"], 1),
        "groupby_context_ms": round(p50["context"], 1),
        "groupby_rounds": ROUNDS,
        "dp_vs_polars": round(ratio("private", "plain"), 2),
        # The same user-level plan without noise: what releasing privately adds to it.
        "dp_vs_same_plan_without_noise": round(ratio("private", "bounded"), 2),
        "context_vs_dp": round(ratio("context", "private"), 1),
        "context_vs_dp_per_round": [
            round(c / p, 1) for c, p in zip(timings["context"], timings["private"], strict=True)
        ],
        "previous_vs_dp": round(ratio("previous", "private"), 1),
        **written,
    }


def continual_part() -> dict[str, Any]:
    """Binary tree vs naive per-refresh noise at T=86,400 (epsilon 1, sensitivity 1)."""
    from decimal import Decimal

    from bench.dp_baselines import simulate

    run = simulate(86_400, Decimal(1), 1, runs=3)
    return {
        "continual_T": run.horizon,
        "continual_tree_rms": round(run.tree_rms, 1),
        "continual_naive_rms": round(run.naive_rms, 1),
        "continual_per_window_noise_rms": round(run.increments_rms, 1),
        "continual_error_ratio": round(run.ratio, 1),
        "continual_theory_ratio": round(run.theory.naive_rms / run.theory.tree_rms_mean, 1),
        "continual_seconds": round(run.seconds, 1),
    }


LOAD_AT_START: list[float] = []


def main() -> None:
    LOAD_AT_START[:] = [round(x, 2) for x in os.getloadavg()]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="privmesh-bench-dp-") as tmp:
        api = api_part(Path(tmp))
        groupby = groupby_part(Path(tmp) / "events")
    continual = continual_part()
    result: dict[str, Any] = {
        "benchmark": "dp",
        "machine": f"{os.cpu_count()} cores",
        "load_average_1_5_15_at_start": LOAD_AT_START,
        "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        **api,
        **groupby,
        **continual,
    }
    result["targets"] = TARGETS
    result["met"] = {
        "cached_p99_ms": api["cached_p99_ms"] <= TARGETS["cached_p99_ms"],
        "fresh_p99_ms": api["fresh_p99_ms"] <= TARGETS["fresh_p99_ms"],
        "cached_rps": api["cached_rps_2_workers"] >= TARGETS["cached_rps"],
        "dp_vs_polars": groupby["dp_vs_polars"] <= TARGETS["dp_vs_polars"],
        "context_vs_dp": groupby["context_vs_dp"] >= TARGETS["context_vs_dp"],
        "continual_error_ratio": continual["continual_error_ratio"]
        >= TARGETS["continual_error_ratio"],
    }
    result["seconds"] = round(time.monotonic() - began, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
