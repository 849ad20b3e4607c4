"""What answering a Produce only after the journal holds it costs: ack latency and throughput.

The journaled embedded broker (``python -m infra.broker``) runs twice in one run, with
``PRIVMESH_KAFKA_EMBEDDED_ACK_AFTER_JOURNAL=false`` (the baseline: Tansu answers as soon as
it has the records, the journal follows a fetch later) and ``=true`` (the ack gate holds
each Produce response until the journal holds its records). For each, one aiokafka
producer (acks=all):

* **latency**: single ~100-byte records sent one after another (linger 0), each awaited:
  p50/p99 of the time from ``send`` to the acknowledgement;
* **throughput**: ``--records`` records of ~100 bytes sent as fast as the producer goes
  (linger 5 ms, 256 KiB batches, as the stream processors' producers), over 4 partitions:
  records/s, and p50/p99 of each record's time from ``send`` to its acknowledgement.

The two alternate for ``--rounds`` rounds (off, on, off, on, ...) so that a busy machine
weighs on both alike; each figure reported is the median over the rounds.

Writes bench/results/broker_ack.json; the last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.common import journaled_broker, percentile
from infra.broker import ensure_topics, status_path
from streams.kafka_clients import aiokafka_config

RESULTS = Path(__file__).with_name("results") / "broker_ack.json"
TOPIC = "bench.ack.ingest"
PARTITIONS = 4
VALUE = b"x" * 100


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 0.5) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
    }


async def _latency(bootstrap: str, count: int) -> dict[str, float]:
    producer = AIOKafkaProducer(**aiokafka_config(bootstrap=bootstrap), acks="all", linger_ms=0)
    await producer.start()
    try:
        took = []
        for i in range(count + 50):
            began = time.perf_counter()
            await (await producer.send(TOPIC, VALUE, partition=i % PARTITIONS))
            if i >= 50:  # the first ones warm up connections and metadata
                took.append(time.perf_counter() - began)
    finally:
        await producer.stop()
    return _ms(took)


async def _throughput(bootstrap: str, count: int) -> dict[str, float]:
    producer = AIOKafkaProducer(
        **aiokafka_config(bootstrap=bootstrap), acks="all", linger_ms=5, max_batch_size=262_144
    )
    await producer.start()
    took: list[float] = []
    try:
        began = time.perf_counter()
        futures = []
        for i in range(count):
            sent_at = time.perf_counter()
            future = await producer.send(TOPIC, VALUE, partition=i % PARTITIONS)
            future.add_done_callback(lambda _f, t=sent_at: took.append(time.perf_counter() - t))
            futures.append(future)
        for future in futures:
            await future
        seconds = time.perf_counter() - began
    finally:
        await producer.stop()
    return {"records_per_s": round(count / seconds), "seconds": round(seconds, 2), **_ms(took)}


def _median(runs: list[Any]) -> Any:
    """Each number of ``runs`` (nested alike), the median over the runs."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: _median([r[k] for r in runs]) for k in first}
    return sorted(runs)[len(runs) // 2]


def measure(gated: bool, records: int, singles: int) -> dict[str, Any]:
    """Start the broker component with the gate on or off and measure it."""
    flag = {"PRIVMESH_KAFKA_EMBEDDED_ACK_AFTER_JOURNAL": "true" if gated else "false"}
    with journaled_broker("privmesh-broker-ack-", flag) as broker:
        ensure_topics(broker.bootstrap, [TOPIC], PARTITIONS, 1)
        time.sleep(2.5)  # the mirror follows the new topic (its 2 s refresh)
        latency = asyncio.run(_latency(broker.bootstrap, singles))
        throughput = asyncio.run(_throughput(broker.bootstrap, records))
        time.sleep(2.5)
        status = json.loads(status_path(broker.data_dir).read_text(encoding="utf-8"))
    return {
        "single_send": latency,
        "max_throughput": throughput,
        "acks_held": status.get("acks_held", 0),
        "acks_withheld": status.get("acks_withheld", 0),
    }


def main() -> None:
    """Run the baseline and the gate, write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--singles", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    began_load = os.getloadavg()[0]
    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _round in range(args.rounds):
        rounds["off"].append(measure(False, args.records, args.singles))
        rounds["on"].append(measure(True, args.records, args.singles))
    base, gated = _median(rounds["off"]), _median(rounds["on"])
    runs = {"baseline_ack_before_journal": base, "ack_after_journal": gated}
    result = {
        "benchmark": "broker_ack",
        "cores": os.cpu_count(),
        "loadavg_1m_before": round(began_load, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "how": (
            f"python -m infra.broker, ack gate off and on alternately ({args.rounds} rounds, "
            f"medians); {args.singles} single "
            f"100-byte sends awaited one by one (linger 0), then {args.records} records sent "
            "as fast as one aiokafka producer goes (acks=all, linger 5 ms, 256 KiB batches, "
            f"{PARTITIONS} partitions)"
        ),
        **runs,
        "rounds": rounds,
        "single_send_p50_added_ms": round(
            gated["single_send"]["p50_ms"] - base["single_send"]["p50_ms"], 2
        ),
        "throughput_ratio": round(
            gated["max_throughput"]["records_per_s"] / base["max_throughput"]["records_per_s"], 2
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
