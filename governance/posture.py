"""Privacy posture: one governance view of what the running system does with personal data.

Assembled on request from the sources of record, never from a copy:

* stream workers' health pages (events in/out, dead letters, consent drops, consent
  index) at the URLs ``privmesh up`` records in ``run/stack.json`` or the configured ones;
* the key ring (pseudonymisation key versions in use per domain);
* the API's ledger (budget spent and left per query class and per data product), with
  each product's user-level guarantee (the privacy loss per pseudonymous subject per UTC
  day: the product's daily total) and its allocation per class;
* the erasure, data-subject-request and retention logs under the data directory;
* the model registry (federation rounds, participation, dropouts, lost rounds, DP and
  secure aggregation, the latest membership-inference audit of each version);
* the launcher's supervision state in ``run/stack.json`` (running, backoff, failed).

``findings`` lists what needs a governance look (a component the launcher gave up on or
is restarting, an unreachable worker, a budget nearly
spent, a model without an audit or with a high attack advantage, a DSR over its
deadline). Counts and codes only: no identifier, token or data value.

``OperationsCollector`` exposes the file- and registry-backed parts as Prometheus
metrics on the API's ``/metrics`` (a training job or a retention pass is not a server
Prometheus could scrape; their records are).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dashboards_api.budget import from_micro, to_micro
from dashboards_api.policy import reserve_micro
from dashboards_api.releases import ReleaseService, privacy_unit_of
from domains.contract import DomainContract
from federation.registry import ModelRegistry
from governance.settings import PostureSettings
from streams.erasure import read_erasure_log
from streams.keyring import KeyRing, keyring_path
from streams.records import read_records

WITHDRAWAL = "consent-withdrawal"


@dataclass
class PostureSources:
    """Where the posture is read from."""

    data_dir: Path
    contracts: dict[str, DomainContract]
    service: ReleaseService
    registry: ModelRegistry | None
    settings: PostureSettings
    initial_key_version: int = 1
    launcher: Launcher | None = None

    def worker_urls(self) -> dict[str, str]:
        """Health URL per domain: the configured ones, else those `privmesh up` recorded."""
        if self.settings.worker_health_urls:
            return dict(self.settings.worker_health_urls)
        return self.launcher.worker_urls() if self.launcher is not None else {}

    def components(self) -> list[dict[str, Any]]:
        """The launcher's components (none without one: a cluster's orchestrator
        supervises its own processes)."""
        return self.launcher.components() if self.launcher is not None else []


class Launcher(Protocol):
    """What the posture reads of the process launcher, ``privmesh up`` (the composition
    root passes ``infra.stack.LauncherView``)."""

    @property
    def states(self) -> tuple[str, ...]:
        """Every supervision state a component can be in."""
        ...

    def components(self) -> list[dict[str, Any]]:
        """Each component's name, state (one of ``states``), restarts and last exit code;
        empty when no launcher runs."""
        ...

    def worker_urls(self) -> dict[str, str]:
        """Health URL per domain of the workers the launcher started."""
        ...


# ---------------------------------------------------------------------- the parts
async def stream_health(urls: dict[str, str], wait: float) -> dict[str, dict[str, Any]]:
    """Each worker's counters (``reachable: false`` when its page does not answer)."""

    async def one(client: httpx.AsyncClient, domain: str, url: str) -> tuple[str, dict[str, Any]]:
        try:
            response = await client.get(url, timeout=wait)
            report = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            report = None
        if not isinstance(report, dict):
            return domain, {"reachable": False}
        products = report.get("products", {})
        total = Counter[str]()
        for counts in products.values():
            total.update({k: int(v) for k, v in counts.items() if isinstance(v, int | float)})
        consent = report.get("consent", {})
        return domain, {
            "reachable": True,
            "consumed": int(report.get("ingest", {}).get("consumed", 0)),
            "published": total["accepted"],
            "dead_lettered": total["rejected"],
            "consent_dropped": total["consent_dropped"],
            "consent_ready": bool(consent.get("ready", False)),
            "consent_subjects": consent.get("subjects", {}),
            "consent_malformed": int(consent.get("malformed", 0)),
        }

    async with httpx.AsyncClient() as client:
        answers = await asyncio.gather(*(one(client, d, u) for d, u in sorted(urls.items())))
    return dict(answers)


def key_versions(data_dir: Path, domains: list[str], initial: int) -> dict[str, dict[str, Any]]:
    """Active and known key versions per domain, from the key ring file."""
    ring = KeyRing.load(keyring_path(data_dir), initial)
    now = time.time()
    return {
        d: {
            "active": ring.version_at(d, now),
            "versions": [
                {
                    "version": e.version,
                    "effective_from": datetime.fromtimestamp(e.effective_from, tz=UTC).isoformat(),
                }
                for e in ring.epochs(d)
            ],
        }
        for d in domains
    }


def erasures(data_dir: Path, domains: list[str]) -> dict[str, dict[str, Any]]:
    """Erasures per domain: requests (erase, dsr) and consent withdrawals."""
    out: dict[str, dict[str, Any]] = {}
    for domain in domains:
        records = read_erasure_log(data_dir / "erasures" / f"{domain}.jsonl")
        withdrawals = [r for r in records if r.requested_by.startswith(WITHDRAWAL)]
        out[domain] = {
            "requests": len(records) - len(withdrawals),
            "withdrawals": len(withdrawals),
            "online_rows": sum(r.online_rows for r in records),
            "offline_rows": sum(r.offline_rows for r in records),
            "last_at": max((r.requested_at for r in records), default=None),
        }
    return out


def subject_requests(data_dir: Path, deadline_seconds: float) -> dict[str, Any]:
    """Data-subject requests by kind, their durations and any over the deadline."""
    records = read_records(data_dir / "dsr" / "requests.jsonl")
    durations = [float(r.get("seconds", 0.0)) for r in records]
    return {
        "access": sum(1 for r in records if r.get("kind") == "access"),
        "erase": sum(1 for r in records if r.get("kind") == "erase"),
        "max_seconds": max(durations, default=0.0),
        "over_deadline": sum(1 for s in durations if s > deadline_seconds),
        "last_completed_at": max((str(r.get("completed_at")) for r in records), default=None),
    }


def retention(data_dir: Path) -> dict[str, Any]:
    """Retention passes, the last one's time, and rows purged per product and kind."""
    runs = read_records(data_dir / "retention" / "runs.jsonl")
    purged: dict[str, Counter[str]] = {}
    for run in runs:
        for domain, result in run.get("domains", {}).items():
            for rows in result.get("products", []):
                counts = purged.setdefault(f"{domain}.{rows['product']}", Counter())
                for kind in ("events", "subject_history", "window_stats", "online"):
                    counts[kind] += int(rows.get(kind, 0))
    return {
        "runs": len(runs),
        "last_at": runs[-1]["at"] if runs else None,
        "purged": {product: dict(counts) for product, counts in sorted(purged.items())},
    }


def budgets(service: ReleaseService) -> dict[str, Any]:
    """Spent and left per query class and per data product today (from the ledger), with
    each product's user-level guarantee: its daily total is the privacy loss per
    pseudonymous subject per UTC day over all its classes together (sequential
    composition, pure DP), and each class's allocation is what it may spend of it."""
    classes = []
    products: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for qc in service.classes.values():
        state = service.budget(qc)
        row = {
            "class_id": qc.id,
            "product": f"{qc.domain}.{qc.product}",
            "privacy_unit": privacy_unit_of(qc),
            "release": qc.release,
            "allocation": state["epsilon_budget"],
            "spent": float(state["epsilon_spent"]),
            "remaining": float(state["epsilon_remaining"]),
            "budget": float(state["epsilon_budget"]),
        }
        classes.append(row)
        products.setdefault((qc.domain, qc.product), []).append(row)
    totals = []
    for (domain, product), rows in sorted(products.items()):
        total = service.product_budget(domain, product)
        if total is None:
            continue
        epsilon = str(total["epsilon_budget"])
        narrower = [r["class_id"] for r in rows if r["privacy_unit"] == "subject_window"]
        totals.append(
            {
                "product": total["product"],
                "spent": float(total["epsilon_spent"]),
                "remaining": float(total["epsilon_remaining"]),
                "budget": float(total["epsilon_budget"]),
                "privacy_unit": "pseudonymous subject over the UTC day",
                "epsilon_per_subject_per_day": epsilon,
                "statement": f"ε = {epsilon} per person per UTC day (pure DP)",
                "narrower_classes": narrower,
                "allocation": [
                    {
                        "class_id": r["class_id"],
                        "epsilon_per_day": r["allocation"],
                        "share": r["budget"] / float(total["epsilon_budget"])
                        if float(total["epsilon_budget"])
                        else 0.0,
                    }
                    for r in rows
                ],
                "allocated": from_micro(sum(to_micro(r["allocation"]) for r in rows)),
                # kept from every class's allocation for planning (the bound advisor)
                "reserve": from_micro(
                    reserve_micro(
                        service.policy.current,
                        service.product_budgets.get(total["product"]),
                        to_micro(epsilon),
                    )
                ),
                "still_needed": from_micro(sum(_still_needed(r) for r in rows)),
            }
        )
    return {"period": service.period(), "classes": classes, "products": totals}


def models(registry: ModelRegistry | None) -> list[dict[str, Any]]:
    """Each registered version: rounds, participation, dropouts, protections, last audit."""
    if registry is None:
        return []
    out = []
    for version in registry.versions():
        lineage = version.lineage
        rounds = lineage.get("rounds", {})
        history = rounds.get("history", [])
        audits = [
            a for a in registry.audits(version.version) if a["kind"] == "membership_inference"
        ]
        latest = audits[-1] if audits else {}
        pooled = latest.get("pooled", {})
        out.append(
            {
                "version": version.version,
                "task": version.task,
                "created_at": version.created_at,
                "rounds_completed": int(rounds.get("completed", 0)),
                "rounds_lost": len(rounds.get("lost", [])),
                "participants": [len(r.get("participants", [])) for r in history],
                "dropouts": sum(len(r.get("dropped", [])) for r in history),
                "secure_aggregation": bool(lineage.get("secure_aggregation", {}).get("enabled")),
                "dp": bool(lineage.get("dp", {}).get("enabled")),
                "epsilon_total": lineage.get("dp", {}).get("epsilon_total"),
                "mia_advantage": pooled.get("advantage"),
                "mia_attack_auc": pooled.get("attack_auc"),
                # the strongest attack of the audit (audits before shadow models: the loss's)
                "mia_attack": latest.get("attack", "loss_threshold") if audits else None,
            }
        )
    return out


def consent_modes(contracts: dict[str, DomainContract]) -> dict[str, dict[str, str]]:
    """Each product's purpose and consent mode."""
    return {
        f"{c.domain}.{p.name}": {"purpose": p.purpose, "consent": p.consent.value}
        for c in contracts.values()
        for p in c.products
    }


# ---------------------------------------------------------------------- the view
async def assemble_posture(sources: PostureSources) -> dict[str, Any]:
    """The whole posture, with its findings."""
    settings = sources.settings
    domains = sorted(sources.contracts)
    streams = await stream_health(sources.worker_urls(), settings.timeout_seconds)
    view: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(),
        "streams": streams,
        "components": sources.components(),
        "consent": consent_modes(sources.contracts),
        "keys": key_versions(sources.data_dir, domains, sources.initial_key_version),
        "budgets": budgets(sources.service),
        "erasures": erasures(sources.data_dir, domains),
        "subject_requests": subject_requests(sources.data_dir, settings.dsr_deadline_seconds),
        "retention": retention(sources.data_dir),
        "models": models(sources.registry),
    }
    view["findings"] = findings(view, settings)
    return view


def component_findings(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """A component the launcher gave up on (error), or one it is restarting (warning)."""
    found = []
    for comp in rows:
        if comp["state"] == "failed":
            found.append(
                {
                    "severity": "error",
                    "code": "component_failed",
                    "subject": comp["name"],
                    "message": f"kept failing (exit code {comp['last_exit_code']}) and was "
                    f"left down after {comp['restarts']} restart(s); the rest keeps running",
                }
            )
        elif comp["state"] in ("backoff", "starting") and comp["restarts"]:
            found.append(
                {
                    "severity": "warning",
                    "code": "component_restarting",
                    "subject": comp["name"],
                    "message": f"exited and is being restarted (restart {comp['restarts']})",
                }
            )
    return found


def _still_needed(row: dict[str, Any]) -> int:
    """Micro-epsilon a class may still spend today: a daily class its whole allocation until
    its day is paid (then nothing), any other class what is left of its budget."""
    if row["release"] == "daily":
        return 0 if row["spent"] > 0 else to_micro(row["allocation"])
    return to_micro(str(row["remaining"]))


def budget_findings(budgets: dict[str, Any], settings: PostureSettings) -> list[dict[str, str]]:
    """A class or product near its daily budget (warning), and a product whose daily total
    does not bound some class's loss per person (a subject-within-a-window class).

    A daily class pays its whole day at its first value: its budget spent is the normal
    state, not an alert; a product fully spent by paid daily classes is not short either.
    A product is nearly spent when its classes may still need more than is left."""
    found = []
    for product in budgets["products"]:
        if product["narrower_classes"]:
            found.append(
                {
                    "severity": "warning",
                    "code": "privacy_unit_narrower_than_day",
                    "subject": product["product"],
                    "message": f"{len(product['narrower_classes'])} class(es) protect a subject "
                    "within one window only: the daily total does not bound their loss per person",
                }
            )
    short = {
        p["product"]
        for p in budgets["products"]
        if to_micro(p["still_needed"]) > to_micro(str(p["remaining"]))
    }
    spenders = [c for c in budgets["classes"] if c["release"] != "daily"]
    products = [p for p in budgets["products"] if p["product"] in short]
    for item in spenders + products:
        if item["budget"] > 0 and item["spent"] >= settings.budget_alert_share * item["budget"]:
            found.append(
                {
                    "severity": "warning",
                    "code": "budget_nearly_spent",
                    "subject": item.get("class_id", item["product"]),
                    "message": f"{item['spent'] / item['budget']:.0%} of this period's epsilon "
                    "spent",
                }
            )
    return found


def findings(view: dict[str, Any], settings: PostureSettings) -> list[dict[str, str]]:
    """What needs a look, most severe first: ``severity``, ``code``, ``subject``, ``message``."""
    found: list[dict[str, str]] = []

    def add(severity: str, code: str, subject: str, message: str) -> None:
        found.append({"severity": severity, "code": code, "subject": subject, "message": message})

    found.extend(component_findings(view.get("components", [])))
    for domain, health in view["streams"].items():
        if not health["reachable"]:
            add(
                "error",
                "worker_unreachable",
                domain,
                "the stream worker's health page does not answer",
            )
        elif not health["consent_ready"]:
            add("warning", "consent_not_ready", domain, "the consent index has not caught up yet")
    found.extend(budget_findings(view["budgets"], settings))
    for model in view["models"]:
        advantage = model["mia_advantage"]
        if advantage is None:
            add("warning", "model_not_audited", model["version"], "no membership-inference audit")
        elif advantage > settings.mia_advantage_alert:
            add(
                "error",
                "membership_leak",
                model["version"],
                f"membership advantage {advantage:.3f} > {settings.mia_advantage_alert}",
            )
        if model["rounds_lost"]:
            add("info", "rounds_lost", model["version"], f"{model['rounds_lost']} round(s) lost")
    requests = view["subject_requests"]
    if requests["over_deadline"]:
        add(
            "error",
            "dsr_over_deadline",
            "dsr",
            f"{requests['over_deadline']} request(s) took over {settings.dsr_deadline_seconds:g} s",
        )
    if view["retention"]["runs"] == 0:
        add("warning", "retention_never_ran", "retention", "no retention pass recorded")
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(found, key=lambda f: (order[f["severity"]], f["code"], f["subject"]))


# ---------------------------------------------------------------------- metrics
class OperationsCollector(Collector):
    """Erasures, DSRs, retention purges, federation rounds and audits, product budgets."""

    def __init__(self, sources: PostureSources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        """Samples read from the logs and the registry now."""
        s = self._sources
        domains = sorted(s.contracts)
        erased = CounterMetricFamily(
            "privmesh_erasures",
            "Erasures recorded per domain: requests (erase, dsr) and consent withdrawals",
            labels=["domain", "source"],
        )
        for domain, counts in erasures(s.data_dir, domains).items():
            erased.add_metric([domain, "request"], counts["requests"])
            erased.add_metric([domain, "consent_withdrawal"], counts["withdrawals"])
        yield erased
        requests = subject_requests(s.data_dir, s.settings.dsr_deadline_seconds)
        dsr = CounterMetricFamily(
            "privmesh_dsr_requests", "Data-subject requests completed", labels=["kind"]
        )
        for kind in ("access", "erase"):
            dsr.add_metric([kind], requests[kind])
        yield dsr
        slowest = GaugeMetricFamily(
            "privmesh_dsr_max_seconds", "Longest data-subject request so far (seconds)"
        )
        slowest.add_metric([], requests["max_seconds"])
        yield slowest
        kept = retention(s.data_dir)
        purged = CounterMetricFamily(
            "privmesh_retention_purged_rows",
            "Rows purged past retention per product and kind",
            labels=["product", "kind"],
        )
        for product, counts in kept["purged"].items():
            for kind, count in sorted(counts.items()):
                purged.add_metric([product, kind], count)
        yield purged
        runs = CounterMetricFamily("privmesh_retention_runs", "Retention passes recorded")
        runs.add_metric([], kept["runs"])
        yield runs
        yield from self._federation()
        yield from self._products()
        yield from self._components()

    def _components(self) -> Iterator[Metric]:
        launcher = self._sources.launcher
        states = launcher.states if launcher is not None else ()
        state = GaugeMetricFamily(
            "privmesh_component_state",
            "Supervision state of each component `privmesh up` runs (1 for its current state)",
            labels=["component", "state"],
        )
        restarts = CounterMetricFamily(
            "privmesh_component_restarts",
            "Restarts of each component by the launcher since `privmesh up`",
            labels=["component"],
        )
        for comp in self._sources.components():
            for name in states:
                state.add_metric([comp["name"], name], 1.0 if comp["state"] == name else 0.0)
            restarts.add_metric([comp["name"]], comp["restarts"])
        yield from (state, restarts)

    def _federation(self) -> Iterator[Metric]:
        rounds = CounterMetricFamily(
            "privmesh_federation_rounds",
            "Federated rounds by result: released or lost (SecAgg+ failure, too few domains)",
            labels=["task", "result"],
        )
        dropouts = CounterMetricFamily(
            "privmesh_federation_dropouts", "Domains dropped from a round", labels=["task"]
        )
        participants = GaugeMetricFamily(
            "privmesh_federation_last_round_participants",
            "Domains in the last round of the newest version of each task",
            labels=["task"],
        )
        advantage = GaugeMetricFamily(
            "privmesh_model_mia_advantage",
            "Membership-inference advantage of the newest audited version of each task",
            labels=["task", "dp"],
        )
        released: Counter[str] = Counter()
        lost: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        newest: dict[str, dict[str, Any]] = {}
        audited: dict[str, dict[str, Any]] = {}
        for model in models(self._sources.registry):  # newest first
            task = model["task"]
            released[task] += model["rounds_completed"]
            lost[task] += model["rounds_lost"]
            dropped[task] += model["dropouts"]
            newest.setdefault(task, model)
            if model["mia_advantage"] is not None:
                audited.setdefault(task, model)
        for task in sorted(newest):
            rounds.add_metric([task, "released"], released[task])
            rounds.add_metric([task, "lost"], lost[task])
            dropouts.add_metric([task], dropped[task])
            last = newest[task]["participants"]
            participants.add_metric([task], last[-1] if last else 0)
        for task, model in sorted(audited.items()):
            advantage.add_metric([task, str(model["dp"]).lower()], model["mia_advantage"])
        yield from (rounds, dropouts, participants, advantage)

    def _products(self) -> Iterator[Metric]:
        spent = GaugeMetricFamily(
            "privmesh_budget_product_spent_epsilon",
            "Epsilon spent this period over all classes of a data product",
            labels=["product"],
        )
        remaining = GaugeMetricFamily(
            "privmesh_budget_product_remaining_epsilon",
            "Epsilon left this period of a data product's total budget",
            labels=["product"],
        )
        per_subject = GaugeMetricFamily(
            "privmesh_budget_product_epsilon_per_subject_per_day",
            "User-level privacy loss per pseudonymous subject per UTC day a data product's "
            "releases may reach (its daily total, pure DP)",
            labels=["product"],
        )
        for item in budgets(self._sources.service)["products"]:
            spent.add_metric([item["product"]], item["spent"])
            remaining.add_metric([item["product"]], item["remaining"])
            per_subject.add_metric([item["product"]], item["budget"])
        yield from (spent, remaining, per_subject)
