"""Gather the catalog's inputs from the configured system (contracts, ledger, registry)."""

from __future__ import annotations

from collections.abc import Mapping

from catalog.assemble import CatalogInputs, assemble
from catalog.graph import Catalog
from dashboards_api.ledger import Ledger, open_ledger
from dashboards_api.policy import GovernancePolicy
from dashboards_api.query_classes import QueryClass, load_product_budgets, load_query_classes
from dashboards_api.registry import current_classes
from dashboards_api.settings import ApiSettings
from domains.folders import domain_set
from domains.owners import load_owners
from domains.registry import load_contracts
from domains.runtime import get_runtime_settings
from federation.registry import open_registry
from federation.task_specs import load_tasks


def system_inputs(
    ledger: Ledger | None = None,
    classes: Mapping[str, QueryClass] | None = None,
    policy: GovernancePolicy | None = None,
) -> CatalogInputs:
    """Inputs from the configured deployment: ``ledger``, ``classes`` and ``policy`` are
    those of a running API (its replica's view); otherwise the configured ledger is opened,
    the run-time class changes stored there are applied to the declared classes, and the
    newest governance policy stored there (else the API settings') applies."""
    runtime = get_runtime_settings()
    contracts = load_contracts()
    if ledger is None:
        ledger = open_ledger(ApiSettings().ledger_url, runtime.data_dir)
    if policy is None:
        stored = ledger.policy_versions()
        policy = (
            GovernancePolicy.model_validate_json(stored[-1].definition)
            if stored
            else ApiSettings().policy
        )
    if classes is None:
        classes = current_classes(ledger, load_query_classes(), contracts)
    registry = open_registry()
    return CatalogInputs(
        contracts=contracts,
        owners=load_owners(),
        owners_source=f"the owners.yaml of the domain folders in {domain_set().describe()}",
        classes=classes,
        product_budgets=load_product_budgets(),
        ledger=ledger,
        policy=policy,
        models=registry.versions(),
        tasks=load_tasks(),
    )


def system_catalog() -> Catalog:
    """The catalog of the configured deployment."""
    return assemble(system_inputs())
