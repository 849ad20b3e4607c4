"""Catalog fixtures: the demo system's inputs, with a real ledger and model registry."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from catalog.assemble import CatalogInputs, assemble
from catalog.graph import Catalog
from dashboards_api.budget import to_micro
from dashboards_api.ledger import SqliteLedger, period_of
from dashboards_api.query_classes import load_product_budgets, load_query_classes
from domains.owners import load_owners
from domains.registry import load_contracts
from federation.registry import ModelRegistry
from federation.task_specs import load_tasks

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
# Today's spend: the distinct-customer class above 80% of its daily allocation, the order
# count below it (each within its class budget and the product's total).
SPENT = {"shop.orders.distinct_customers": "0.45", "shop.orders.order_count": "0.1"}


def day_rows(until: int, window: int = 10) -> dict[int, dict[str, int]]:
    """Every shop window of the UTC day up to ``until`` (a window start), as the processor
    writes them (the contract's per-day bounds applied): what a daily class reads."""
    bounds = load_contracts()["shop"].product("orders").contribution  # type: ignore[union-attr]
    return {
        w: {
            "distinct_subjects": 40,
            "events": 60,
            "amount_cents_sum": 60 * 4_000,
            "amount_cents_sum_cap": int(bounds.max_sum_per_period["amount_cents"]),
            "contribution_bound": bounds.max_records_per_period,
            "new_subjects_period": 4,
            "new_subjects_hour": 10,
            "truncated_events": 0,
            "max_records_per_period": bounds.max_records_per_period,
            "max_windows_per_period": bounds.max_windows_per_period,
        }
        for w in range(until - until % 86_400, until + window, window)
    }


def model_lineage() -> dict[str, object]:
    """The lineage a federated flight_delay run registers (the fields the catalog reads)."""
    return {
        "task": "flight_delay",
        "task_spec": {"name": "flight_delay", "product": "departures"},
        "domains": {d: {"train_examples": n} for d, n in (("ewr", 9), ("jfk", 8), ("lga", 7))},
        "example_counts": {"ewr": 9, "jfk": 8, "lga": 7},
        "rounds": {"planned": 3, "completed": 3, "lost": [], "history": [{"round": 1}]},
        "secure_aggregation": {"enabled": True, "num_shares": 5},
        "dp": {"enabled": False, "epsilon_total": None},
        "metrics": {"global": {"pooled_auc": 0.71}},
        "code": {"privmesh": "0.1.0", "source": "abc123"},
    }


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    """A real ledger holding today's spend of two shop classes."""
    classes = load_query_classes()
    budgets = load_product_budgets()
    ledger = SqliteLedger(tmp_path / "ledger.db")
    for class_id, epsilon in SPENT.items():
        qc = classes[class_id]
        ledger.commit_release(
            class_id,
            period_of(NOW),
            "w-1",
            to_micro(epsilon),
            qc.budget_micro,
            {"value": 1},
            product="shop.orders",
            product_budget_micro=budgets["shop.orders"].budget_micro,
        )
    return ledger


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """A real model registry with one federated flight_delay version."""
    registry = ModelRegistry("sqlite", tmp_path)
    registry.register("flight_delay", [np.zeros(3, np.float32)], model_lineage(), "trained")
    return registry


@pytest.fixture
def inputs(ledger: SqliteLedger, registry: ModelRegistry) -> CatalogInputs:
    """The demo contracts, owners, classes, budgets, ledger and registry."""
    return CatalogInputs(
        contracts=load_contracts(),
        owners=load_owners(),
        classes=load_query_classes(),
        product_budgets=load_product_budgets(),
        ledger=ledger,
        models=registry.versions(),
        tasks=load_tasks(),
        now=NOW,
    )


@pytest.fixture
def catalog(inputs: CatalogInputs) -> Catalog:
    """The assembled demo catalog."""
    return assemble(inputs)
