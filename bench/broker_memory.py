"""Resident memory of the journaled embedded broker over an hour of demo traffic, compressed.

The demo rate is ~1,200 events/s over six domains (``DEMO_RATE``): an hour is 4.32 M ingest
events and as many product events. This run sends that volume (or what fits in
``--max-seconds``) as fast as one aiokafka producer can (record batches built once and
sent again) to the six domains' ingest and product topics, created as ``privmesh up``
creates them (with their retention configs), through the broker component ``privmesh up``
runs (``python -m infra.broker``: Tansu, its journal mirror and proxy). Every few seconds
it samples Tansu's resident size, the component's own (the Python mirror), the proxy's,
rotations, and the journal on disk. Compression changes one thing: ``retention.ms``
(10 min) never applies within a run of a few minutes, so ``retention.bytes`` (per
partition) is what bounds the retained data, as it does at the demo rate once traffic has
filled it.

Writes bench/results/broker_memory.json; the last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaProducer

from bench.common import journaled_broker
from infra.broker import ensure_topics, status_path
from infra.journal import journal_path, journal_size
from streams.kafka_clients import aiokafka_config

RESULTS = Path(__file__).with_name("results") / "broker_memory.json"
DEMO_RATE = 1200  # events/s over the six demo domains
POOL = 2000  # distinct generated events per product, sent round-robin


def _events() -> list[tuple[str, str, list[tuple[bytes | None, bytes]]]]:
    """(ingest topic, product topic, a pool of generated (key, value)) per demo product."""
    from domains.registry import load_contracts
    from streams.generator import EventGenerator, has_generator, make_people
    from streams.topics import ProductTopics

    people = make_people(2000, 7)
    out = []
    for i, (domain, contract) in enumerate(sorted(load_contracts().items())):
        for product in contract.products:
            if not has_generator(domain, product.name):
                continue
            gen = EventGenerator(domain, product, people, 0.0, i)
            topics = ProductTopics.of(domain, product)
            pool = [gen.next_event() for _ in range(POOL)]
            out.append((topics.ingest, topics.product, pool))
    return out


def _sample(component: psutil.Process, began: float, sent: int, data_dir: Path) -> dict[str, Any]:
    tansu = proxy = 0
    for child in component.children():
        try:
            kind = child.cmdline()[1:2]
            rss = child.memory_info().rss
        except psutil.Error:
            continue
        if kind == ["broker"]:
            tansu = rss
        elif kind == ["proxy"]:
            proxy = rss
    try:
        status = json.loads(status_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = {}
    return {
        "seconds": round(time.monotonic() - began, 1),
        "events": sent,
        "demo_minutes": round(sent / DEMO_RATE / 60, 1),
        "tansu_rss_mb": round(tansu / 2**20, 1),
        "mirror_rss_mb": round(component.memory_info().rss / 2**20, 1),
        "proxy_rss_mb": round(proxy / 2**20, 1),
        "rotations": status.get("rotations", 0),
        "journal_disk_mb": round(journal_size(journal_path(data_dir)) / 2**20, 1),
    }


BATCH = 500  # events per record batch


async def _produce(
    bootstrap: str, events: int, max_seconds: float, rate: float, on_progress: Any
) -> tuple[int, int]:
    """Send ``events`` (or what fits in ``max_seconds``): record batches of ``BATCH`` pool
    events are built once and sent again and again (the producer's per-record Python cost
    would otherwise be the bottleneck, not the broker), round-robin over partitions."""
    products = _events()
    producer = AIOKafkaProducer(
        **aiokafka_config(bootstrap=bootstrap),
        acks=1,
        max_batch_size=4 * 1024 * 1024,
        max_request_size=8 * 1024 * 1024,
        request_timeout_ms=120_000,
    )
    await producer.start()
    built: list[tuple[str, str, list[bytes]]] = []
    for ingest, product, pool in products:
        buffers: list[bytes] = []
        for start in range(0, len(pool), BATCH):
            batch = producer.create_batch()
            for key, value in pool[start : start + BATCH]:
                batch.append(timestamp=None, key=key, value=value, headers=[])
            buffers.append(bytes(batch._build()))
        built.append((ingest, product, buffers))

    def again(buffer: bytes) -> Any:
        batch = producer.create_batch()
        batch._buffer = bytearray(buffer)  # a built batch is sent as it is
        batch._closed = True
        batch._relative_offset = BATCH
        return batch

    began = time.monotonic()
    sent = errors = n = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        while sent < events and time.monotonic() - began < max_seconds:
            ingest, product, buffers = built[n % len(built)]
            buffer = buffers[(n // len(built)) % len(buffers)]
            partition = (n // len(built)) % 4
            pending.append(await producer.send_batch(again(buffer), ingest, partition=partition))
            pending.append(await producer.send_batch(again(buffer), product, partition=partition))
            sent += BATCH
            n += 1
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0:  # at most ``rate`` events a second
                await asyncio.sleep(ahead)
            if len(pending) >= 200:
                results = await asyncio.gather(*pending, return_exceptions=True)
                errors += sum(isinstance(r, Exception) for r in results)
                pending.clear()
                on_progress(sent)
        results = await asyncio.gather(*pending, return_exceptions=True)
        errors += sum(isinstance(r, Exception) for r in results)
    finally:
        await producer.stop()
    return sent, errors


def main() -> None:
    """Run once; write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=DEMO_RATE * 3600)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=6 * DEMO_RATE,
        help="events/s sent (default 6x the demo rate: what the journal mirror keeps up "
        "with on 2 busy cores; faster, the broker is rotated under overload)",
    )
    args = parser.parse_args()

    from domains.registry import load_contracts
    from streams.settings import KafkaSettings
    from streams.topics import domain_topics

    samples: list[dict[str, Any]] = []
    with journaled_broker("privmesh-broker-memory-") as broker:
        bootstrap, data_dir, component = broker.bootstrap, broker.data_dir, broker.process
        topics = [t for c in load_contracts().values() for t in domain_topics(c)]
        ensure_topics(bootstrap, topics, 4, 1)
        proc = psutil.Process(component.pid)
        began = time.monotonic()
        last = [0.0]

        def progress(sent: int) -> None:
            if time.monotonic() - last[0] >= 5:
                last[0] = time.monotonic()
                samples.append(_sample(proc, began, sent, data_dir))
                print(json.dumps(samples[-1]), flush=True)

        sent, errors = asyncio.run(
            _produce(bootstrap, args.events, args.max_seconds, args.rate, progress)
        )
        took = time.monotonic() - began
        time.sleep(10)  # let the mirror catch up and a due rotation happen
        samples.append(_sample(proc, began, sent, data_dir))
        kafka = KafkaSettings()
        result = {
            "benchmark": "broker_memory",
            "cores": os.cpu_count(),
            "how": (
                f"{sent} demo events (= {sent / DEMO_RATE / 60:.1f} min at {DEMO_RATE}/s) "
                f"to the six domains' ingest and product topics ({2 * sent} records) in "
                f"{took:.0f} s ({sent / took:.0f} events/s, i.e. time compressed "
                f"{sent / took / DEMO_RATE:.1f}x) through python -m infra.broker"
            ),
            "events": sent,
            "records": 2 * sent,
            "send_errors": errors,
            "settings": {
                "retention_ms": kafka.retention_ms,
                "retention_bytes_per_partition": kafka.retention_bytes,
                "memory_limit_mb": kafka.embedded_memory_limit_mb,
            },
            "final": samples[-1],
            "peak_tansu_rss_mb": max(s["tansu_rss_mb"] for s in samples),
            "peak_total_rss_mb": max(
                s["tansu_rss_mb"] + s["mirror_rss_mb"] + s["proxy_rss_mb"] for s in samples
            ),
            "samples": samples,
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "samples"}))


if __name__ == "__main__":
    main()
