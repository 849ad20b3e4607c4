"""Privacy posture: the governance view, its findings, the operations metrics, the Grafana
dashboard's series and the structured, masked logs."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.query_classes import ProductBudget, load_product_budgets, load_query_classes
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import ApiSettings, KeyGrant
from domains.registry import load_contracts
from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from federation.registry import ModelRegistry
from governance.posture import PostureSources, assemble_posture, budget_findings, budgets, findings
from governance.posture_api import mount
from governance.settings import PostureSettings
from infra.api_app import with_catalog
from infra.logs import JsonFormatter, mask_identifiers
from streams.erasure import ErasureRecord, append_record
from streams.metrics import metrics_registry, render
from streams.records import append_record as append_jsonl
from streams.settings import KafkaSettings, StreamSettings
from streams.worker import build_domain_processor
from tests.catalog.conftest import day_rows, model_lineage
from tests.fakes import FakeWindowSource

NOW = 1_795_427_055.0
WINDOW = 1_795_427_040
KEYS = {"gov": KeyGrant(role="governance"), "reader": KeyGrant(role="consumer")}
GOV = {"Authorization": "Bearer gov"}
DASHBOARD = Path(__file__).resolve().parents[2] / "infra/manifests/observability"


def write_logs(data_dir: Path) -> None:
    """One erasure request and one withdrawal, a slow DSR, one retention pass."""
    log = data_dir / "erasures" / "shop.jsonl"
    for erasure_id, by in (("shop-1", "alice"), ("shop-consent-ab", "consent-withdrawal:sales")):
        append_record(
            log,
            ErasureRecord(
                erasure_id,
                "shop",
                "2026-12-01T10:00:00+00:00",
                ["k1.aaaaaaaaaaaaaaaa"],
                2,
                5,
                1,
                by,
            ),
        )
    append_jsonl(
        data_dir / "dsr" / "requests.jsonl",
        {
            "request_id": "dsr-erase-1",
            "kind": "erase",
            "seconds": 3.5,
            "completed_at": "2026-12-01T10:00:04+00:00",
            "domains": {},
        },
    )
    append_jsonl(
        data_dir / "retention" / "runs.jsonl",
        {
            "run_id": "r1",
            "at": "2026-12-01T11:00:00+00:00",
            "seconds": 0.1,
            "domains": {
                "shop": {
                    "tombstones": 0,
                    "products": [
                        {
                            "product": "orders",
                            "events": 7,
                            "subject_history": 3,
                            "window_stats": 2,
                            "online": 1,
                            "expired_subjects": 1,
                        }
                    ],
                }
            },
        },
    )


@pytest.fixture
def sources(tmp_path: Path) -> PostureSources:
    data_dir = tmp_path / "data"
    write_logs(data_dir)
    registry = ModelRegistry("sqlite", data_dir)
    audited = registry.register("flight_delay", [np.zeros(3, np.float32)], model_lineage(), "done")
    registry.record_audit(
        audited, "membership_inference", {"pooled": {"advantage": 0.31, "attack_auc": 0.7}}
    )
    registry.register("flight_delay", [np.zeros(3, np.float32)], model_lineage(), "done")
    service = ReleaseService(
        classes=load_query_classes(),
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(rows=day_rows(WINDOW))},
        ledger=SqliteLedger(tmp_path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=lambda: NOW,
        product_budgets=load_product_budgets(),
    )
    settings = PostureSettings(worker_health_urls={"shop": "http://127.0.0.1:9/privmesh/health"})
    return PostureSources(data_dir, load_contracts(), service, registry, settings)


@pytest.fixture
def client(sources: PostureSources) -> TestClient:
    app = create_app(sources.service, KEYS, ApiSettings(registry_sync_seconds=0))
    app = with_catalog(app, ttl_seconds=0)
    mount(app, sources)
    return TestClient(app)


def test_posture_reads_every_source_and_lists_findings(sources: PostureSources) -> None:
    import asyncio

    view = asyncio.run(assemble_posture(sources))
    assert view["streams"] == {"shop": {"reachable": False}}
    assert view["consent"]["web.page_views"] == {
        "purpose": "product_analytics",
        "consent": "opt_in",
    }
    assert view["keys"]["shop"]["active"] == 1
    assert view["erasures"]["shop"] == {
        "requests": 1,
        "withdrawals": 1,
        "online_rows": 4,
        "offline_rows": 10,
        "last_at": "2026-12-01T10:00:00+00:00",
    }
    assert view["subject_requests"]["erase"] == 1 and view["subject_requests"]["over_deadline"] == 1
    assert view["retention"]["purged"]["shop.orders"]["events"] == 7
    classes = {c["class_id"] for c in view["budgets"]["classes"]}
    assert classes == set(sources.service.classes)
    newest, older = view["models"]
    assert newest["mia_advantage"] is None and older["mia_advantage"] == 0.31
    assert newest["mia_attack"] is None and older["mia_attack"] == "loss_threshold"
    codes = [(f["severity"], f["code"]) for f in view["findings"]]
    assert codes[:3] == [
        ("error", "dsr_over_deadline"),
        ("error", "membership_leak"),
        ("error", "worker_unreachable"),
    ]
    assert ("warning", "model_not_audited") in codes
    assert ("warning", "retention_never_ran") not in codes


def test_posture_states_each_products_user_level_loss_allocation_and_what_is_left(
    sources: PostureSources,
) -> None:
    """Per product: the loss per subject per UTC day is its daily total (the declared one,
    else the policy's default), each class's allocation is its daily budget, and what is
    left today is the total less the ledger's spend; a near-spent total is a finding."""
    import asyncio

    service = sources.service
    declared = load_product_budgets()
    view = asyncio.run(assemble_posture(sources))
    products = {p["product"]: p for p in view["budgets"]["products"]}
    assert set(products) == {f"{qc.domain}.{qc.product}" for qc in service.classes.values()}
    default = service.policy.current.default_product_budget_per_day
    for key, prod in products.items():
        total = declared[key].budget_per_day if key in declared else default
        assert Decimal(prod["epsilon_per_subject_per_day"]) == total
        assert (
            prod["statement"]
            == f"ε = {prod['epsilon_per_subject_per_day']} per person per UTC day (pure DP)"
        )
        assert prod["privacy_unit"] == "pseudonymous subject over the UTC day"
        own = [qc for qc in service.classes.values() if f"{qc.domain}.{qc.product}" == key]
        assert {a["class_id"]: Decimal(a["epsilon_per_day"]) for a in prod["allocation"]} == {
            qc.id: min(qc.budget_per_day, service.policy.current.max_class_budget_per_day)
            for qc in own
        }
        assert prod["remaining"] == prod["budget"] and prod["spent"] == 0
    # A daily class's first value pays its day: the product's "left today" drops by it, and
    # the API's answer states the same product total.
    qc = service.classes["shop.orders.distinct_customers"]
    body = service.release(qc.id)
    view = asyncio.run(assemble_posture(sources))
    shop = next(p for p in view["budgets"]["products"] if p["product"] == "shop.orders")
    assert Decimal(str(shop["spent"])) == qc.epsilon_per_release > 0
    assert body["user_level"]["product_total"] == shop["epsilon_per_subject_per_day"]
    assert shop["remaining"] == pytest.approx(shop["budget"] - shop["spent"])
    row = next(c for c in view["budgets"]["classes"] if c["class_id"] == qc.id)
    assert row["spent"] == shop["spent"] and row["product"] == "shop.orders"
    # A paid daily class is not "nearly spent" (paying its day is its normal state), nor is a
    # product whose classes need no more than is left ...
    assert row["spent"] >= sources.settings.budget_alert_share * row["budget"]
    assert not [f for f in findings(view, sources.settings) if f["code"] == "budget_nearly_spent"]
    # ... but a product whose unpaid classes need more than is left is.
    tight = dataclasses.replace(
        service,
        product_budgets={**declared, "shop.orders": ProductBudget(budget_per_day=Decimal("0.55"))},
    )
    short = budget_findings(budgets(tight), sources.settings)
    assert [(f["code"], f["subject"]) for f in short] == [("budget_nearly_spent", "shop.orders")]


def test_posture_api_is_governance_only_and_the_page_is_served(client: TestClient) -> None:
    assert client.get("/v1/posture").status_code == 401
    assert client.get("/v1/posture", headers={"Authorization": "Bearer reader"}).status_code == 403
    body = client.get("/v1/posture", headers=GOV).json()
    assert {"streams", "keys", "budgets", "erasures", "models", "findings"} <= set(body)
    page = client.get("/posture")
    assert page.status_code == 200 and "privacy posture" in page.text
    assert client.get("/posture/posture.js").status_code == 200


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_operations_metrics_on_the_api(client: TestClient) -> None:
    found = samples(client.get("/metrics", headers=GOV).text)
    assert (
        found[("privmesh_erasures_total", (("domain", "shop"), ("source", "consent_withdrawal")))]
        == 1
    )
    assert found[("privmesh_dsr_requests_total", (("kind", "erase"),))] == 1
    assert (
        found[
            (
                "privmesh_retention_purged_rows_total",
                (("kind", "events"), ("product", "shop.orders")),
            )
        ]
        == 7
    )
    assert (
        found[("privmesh_model_mia_advantage", (("dp", "false"), ("task", "flight_delay")))] == 0.31
    )
    total = float(load_product_budgets()["shop.orders"].budget_per_day)
    per_subject = "privmesh_budget_product_epsilon_per_subject_per_day"
    assert found[(per_subject, (("product", "shop.orders"),))] == total
    assert (
        "privmesh_federation_rounds_total",
        (("result", "released"), ("task", "flight_delay")),
    ) in found


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def metric_names(text: str) -> set[str]:
    """Series names exposed in ``text``, for families without samples yet too."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def test_every_dashboard_series_is_exported(client: TestClient, isolated_env: Path) -> None:
    """Each metric the Grafana dashboard queries exists on the API's or a worker's /metrics."""
    processor = build_domain_processor(
        "shop", RuntimeSettings(), KafkaSettings(), StreamSettings(), FeatureStoreSettings()
    )
    exported = metric_names(render(metrics_registry(processor, time.time())).decode())
    exported |= metric_names(client.get("/metrics", headers=GOV).text)
    dashboard = json.loads((DASHBOARD / "grafana-privacy-dashboard.json").read_text())
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b(privmesh_[a-z_]+)", target["expr"]))
    missing = sorted(queried - exported)
    assert not missing, f"the dashboard queries series nobody exports: {missing}"
    assert len(queried) >= 20
    scrape = (DASHBOARD / "prometheus.yml").read_text()
    assert "privmesh-workers" in scrape and "127.0.0.1:8000" in scrape


def test_logs_are_json_lines_with_identifiers_masked() -> None:
    formatter = JsonFormatter("worker-shop")
    try:
        raise ValueError("could not parse ada@example.org from 81.2.69.160")
    except ValueError:
        record = logging.LogRecord(
            "privmesh.streams",
            logging.WARNING,
            __file__,
            1,
            "lookup for %s at %s failed",
            ("ada@example.org", "81.2.69.160"),
            None,
        )
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(formatter.format(record))
    assert line["component"] == "worker-shop" and line["level"] == "warning"
    text = json.dumps(line)
    assert "ada@example.org" not in text and "81.2.69.160" not in text
    assert "<email>" in line["msg"] and "<ipv4>" in line["exc"]
    # this host's own endpoints and generalised prefixes stay readable
    assert mask_identifiers("broker 127.0.0.1:19092, prefix 81.2.69.0/24") == (
        "broker 127.0.0.1:19092, prefix 81.2.69.0/24"
    )
    assert mask_identifiers("token k1.abcdefghijklmnop") == "token k1.abcdefghijklmnop"
