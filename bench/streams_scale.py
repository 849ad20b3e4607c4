"""Scale-out of one domain's processor: one worker process against two sharing its partitions.

Issue #22 item 3. One run (``python -m bench.streams_scale``), two phases on identical input:

1. A fresh embedded Tansu broker (``memory://``), the shop domain's topics with
   ``PARTITIONS`` partitions, a consent grant from each of 5,000 people, and ``EVENTS``
   shop orders (1% malformed; the same seeded generator in both phases) preloaded to the
   ingest topic.
2. ``workers`` processor processes (``privmesh worker --domain shop``, the same data
   directory and consumer group, their own health-page ports) are started together and
   read until the product and dead-letter topics hold one output per input. The rate is
   taken from the output records' timestamps (first to last), as in ``bench.streams``.
3. Exactness: the workers' health pages are summed per product counter (accepted,
   rejected by reason, per-subject truncation of records and of the daily sum). Each
   subject's events live in one partition, so whatever the split, the per-subject bounds
   must cut the same records: the two-worker sums must equal the one-worker ones, and the
   outputs must number the inputs (a duplicate from a rebalance is counted and reported).
   Window lateness depends on timing and is reported, not compared.

The machine's load is recorded before and after. Target: two processes give >= 1.7x the
single process's rate. On a 2-core machine the broker and the workers share the cores, so
the ceiling is what the second core can add; the result states the CPU each process used.

Writes bench/results/streams_scale.json; the last line printed is ``RESULT {json}``.
``BENCH_STREAMS_SCALE_EVENTS`` changes the event count (default 200,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import free_port
from bench.streams import drained, load_average, rate_of, send_grants, start_worker, worker_health
from domains.registry import get_contract
from infra.broker import ensure_topics, tansu_command
from infra.ports import wait_for_port
from streams.generator import EventGenerator, make_people
from streams.producing import RawProducer
from streams.settings import KafkaSettings
from streams.topics import ProductTopics, domain_topics

EVENTS = int(os.environ.get("BENCH_STREAMS_SCALE_EVENTS", "200000"))
PARTITIONS = 4
DOMAIN, PRODUCT = "shop", "orders"
RESULTS = Path(__file__).with_name("results") / "streams_scale.json"
TARGET_SPEEDUP = 1.7
# counters that must not depend on how the partitions are split between workers
EXACT = ("accepted", "rejected", "truncated_events", "truncated_sums")


def preload(bootstrap: str, topic: str, count: int) -> None:
    """``count`` shop orders from the seeded generator (the same events in every phase)."""
    contract = get_contract(DOMAIN)
    product = contract.product(PRODUCT)
    assert product is not None
    generator = EventGenerator(DOMAIN, product, make_people(5_000, seed=11), bad_ratio=0.01, seed=3)
    with RawProducer(KafkaSettings(bootstrap_servers=bootstrap), "bench-scale-preload") as producer:
        for key, value in generator.stream(count):
            producer.send(topic, value, key=key)


def summed(pages: list[dict[str, Any]]) -> dict[str, Any]:
    """The product's counters summed over the workers' health pages."""
    total: dict[str, Any] = {}
    for page in pages:
        counters = page.get("products", {}).get(PRODUCT, {})
        for name, value in counters.items():
            if isinstance(value, dict):
                into = total.setdefault(name, {})
                for key, amount in value.items():
                    into[key] = round(into.get(key, 0) + amount, 3)
            elif isinstance(value, int | float):
                total[name] = total.get(name, 0) + value
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assigned(pages: list[dict[str, Any]], ingest: str) -> bool:
    """Every ingest partition is owned, and by every worker some: the group is settled."""
    owned = [{p for p in page.get("assigned_partitions", []) if ingest in p} for page in pages]
    return all(owned) and len(set().union(*owned)) == PARTITIONS


def phase(workers: int, events: int = EVENTS, settle_first: bool = False) -> dict[str, Any]:
    """One phase on a fresh broker: ``workers`` processes drain ``events`` shop orders.

    By default the events are preloaded and the workers started together (the rate of a
    backlog); ``settle_first`` starts the workers first and sends the events once every
    ingest partition is owned, so no rebalance can happen while they are read (the test's
    way: at-least-once delivery may repeat a batch at a rebalance, which the exactness
    comparison would then count)."""
    contract = get_contract(DOMAIN)
    product = contract.product(PRODUCT)
    assert product is not None
    topics = ProductTopics.of(DOMAIN, product)
    with tempfile.TemporaryDirectory(prefix="privmesh-bench-scale-") as tmp:
        port = free_port()
        broker = subprocess.Popen(
            tansu_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs: list[subprocess.Popen[bytes]] = []
        try:
            if not wait_for_port(port, 10):
                raise SystemExit("broker did not start")
            bootstrap = f"127.0.0.1:{port}"
            ensure_topics(bootstrap, domain_topics(contract), PARTITIONS, 1)
            send_grants(bootstrap, product.purpose, make_people(5_000, seed=11))
            if not settle_first:
                preload(bootstrap, topics.ingest, events)
            base = {
                **os.environ,
                "PRIVMESH_DATA_DIR": str(Path(tmp) / "data"),
                "PRIVMESH_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "PRIVMESH_KAFKA_PARTITIONS": str(PARTITIONS),
                "PRIVMESH_STREAMS_WINDOW_SECONDS": "3600",
            }
            ports = [free_port() for _ in range(workers)]
            began = time.monotonic()
            for i, web in enumerate(ports):
                env = {**base, "PRIVMESH_STREAMS_WORKER_WEB_PORT": str(web)}
                procs.append(start_worker(env, Path(tmp) / f"worker-{i}.log"))
            if settle_first:
                deadline = time.monotonic() + 120
                while not assigned([worker_health(web) for web in ports], topics.ingest):
                    if time.monotonic() > deadline:
                        raise SystemExit("the workers did not share the partitions in 120 s")
                    time.sleep(0.5)
                preload(bootstrap, topics.ingest, events)
            try:
                stamps = asyncio.run(
                    drained(bootstrap, [topics.product, topics.dlq], events, 600, procs[0])
                )
            except SystemExit:
                for i in range(workers):
                    print((Path(tmp) / f"worker-{i}.log").read_text(errors="replace")[-2000:])
                raise
            wall = time.monotonic() - began
            time.sleep(3)  # the health pages' counters after the last batch
            pages = [worker_health(web) for web in ports]
            cpu = [round(cpu_seconds(p.pid), 1) for p in procs]
            broker_cpu = round(cpu_seconds(broker.pid), 1)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            broker.terminate()
            broker.wait(10)
    counters = summed(pages)
    return {
        "workers": workers,
        "events_per_s": round(rate_of(stamps)),
        "outputs": len(stamps),
        "duplicates": len(stamps) - events,
        "wall_seconds_to_drain": round(wall, 1),
        "cpu_seconds_per_worker": cpu,
        "broker_cpu_seconds": broker_cpu,
        "pages_answered": sum(1 for page in pages if page),
        "counters": {k: counters.get(k) for k in EXACT},
        "late_events": counters.get("late_events"),
    }


def main() -> None:
    load_before = load_average()
    one = phase(1)
    print(f"one worker: {one['events_per_s']:,} events/s", flush=True)
    two = phase(2)
    print(f"two workers: {two['events_per_s']:,} events/s", flush=True)
    speedup = two["events_per_s"] / one["events_per_s"]
    exact = one["counters"] == two["counters"] and one["duplicates"] == two["duplicates"] == 0
    result = {
        "benchmark": "streams_scale",
        "events": EVENTS,
        "partitions": PARTITIONS,
        "cores": os.cpu_count(),
        "one": one,
        "two": two,
        "speedup": round(speedup, 3),
        "exact": exact,
        "exact_note": "accepted, rejected, per-subject truncated records and sums summed over "
        "the workers equal the single worker's, and outputs equal inputs (no duplicate)",
        "load_average": {"before": load_before, "after": load_average()},
        "targets": {"speedup_min": TARGET_SPEEDUP},
        "met": {"speedup": speedup >= TARGET_SPEEDUP, "exact": exact},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
