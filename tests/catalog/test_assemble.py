"""The catalog holds every demo field with its tag and protection, lineage from source
fields to feature views, query classes and models, and the ledger's spend; bad
references are refused with an error naming the entity."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from catalog.assemble import CatalogInputs, assemble
from catalog.errors import LineageCycle, UnknownOwner, UnknownReference
from catalog.graph import Catalog
from catalog.model import FieldEntity, ProductEntity, QueryClassEntity, TopicEntity
from catalog.protection import published_name
from dashboards_api.policy import GovernancePolicy
from domains.contract import DataProduct, DomainContract, Protection
from domains.owners import Owner, OwnersDirectory
from domains.registry import load_contracts
from tests.catalog.conftest import SPENT


def test_every_demo_field_appears_with_its_tag_and_protection(catalog: Catalog) -> None:
    """Each field of each demo product is an entity carrying the contract's tag and
    protection, and its column in the product topic (none when dropped)."""
    contracts = load_contracts()
    expected = {
        f"field:{c.domain}.{p.name}.{f.name}": f
        for c in contracts.values()
        for p in c.products
        for f in p.fields
    }
    fields = {e.id: e for e in catalog.of_kind("field")}
    assert fields.keys() == expected.keys()
    for fid, spec in expected.items():
        entity = fields[fid]
        assert isinstance(entity, FieldEntity)
        assert (entity.tag, entity.protection) == (spec.tag, spec.protection)
        assert entity.published_as == published_name(spec)
        assert entity.protection_detail
    email = fields["field:shop.orders.customer_email"]
    assert isinstance(email, FieldEntity)
    assert email.published_as == "customer_email_token"
    assert "HMAC-SHA256" in email.protection_detail


def test_product_topic_never_carries_a_direct_identifier_in_clear(catalog: Catalog) -> None:
    """The shared product topics hold direct identifiers only as tokens; dropped fields
    are absent; the raw ones appear only in domain-private topics."""
    for topic in catalog.of_kind("topic"):
        assert isinstance(topic, TopicEntity)
        if topic.role != "product":
            continue
        assert topic.boundary == "shared"
        for column in topic.columns:
            if column.tag == "direct_identifier":
                assert column.protection is Protection.TOKENISE
                assert column.name.endswith("_token")
    ingest = catalog.get("topic:shop.orders.ingest")
    assert isinstance(ingest, TopicEntity) and ingest.boundary == "domain"
    assert "customer_name" in {c.name for c in ingest.columns}
    product = catalog.get("topic:shop.orders.v1")
    assert isinstance(product, TopicEntity)
    assert "customer_name" not in {c.name for c in product.columns}


def test_lineage_reaches_from_source_fields_to_views_classes_and_models(
    catalog: Catalog,
) -> None:
    """amount_cents flows to the shop's feature views and its sum/mean classes; tailnum
    and the task's fields reach the federated model; a dropped name reaches nothing."""
    amount = catalog.get("field:shop.orders.amount_cents")
    assert isinstance(amount, FieldEntity)
    assert {
        "feature_view:shop.orders_events",
        "feature_view:shop.orders_window_stats",
        "query_class:shop.orders.revenue_cents",
        "query_class:shop.orders.mean_order_cents",
    } <= set(amount.downstream)
    carrier = catalog.get("field:ewr.departures.carrier")
    assert isinstance(carrier, FieldEntity)
    assert "model:flight_delay-v1" in carrier.downstream
    name = catalog.get("field:shop.orders.customer_name")
    assert isinstance(name, FieldEntity)
    assert name.downstream == []
    graph = catalog.lineage("field:shop.orders.amount_cents", direction="downstream")
    edges = {(e["source"], e["target"]) for e in graph["edges"]}
    assert ("topic:shop.orders.ingest#amount_cents", "topic:shop.orders.v1#amount_cents") in edges
    assert (
        "feature_view:shop.orders_window_stats#amount_cents_sum",
        "query_class:shop.orders.revenue_cents",
    ) in edges


def test_every_class_counts_the_privacy_unit_and_names_its_inputs(catalog: Catalog) -> None:
    """A query class lists the contract fields it reads (the privacy unit always, then
    its measure or group-by key), each an existing field entity."""
    for qc in catalog.of_kind("query_class"):
        assert isinstance(qc, QueryClassEntity)
        assert qc.inputs
        for field_id in qc.inputs:
            assert isinstance(catalog.get(field_id), FieldEntity)
    revenue = catalog.get("query_class:shop.orders.revenue_cents")
    assert isinstance(revenue, QueryClassEntity)
    assert revenue.inputs == [
        "field:shop.orders.customer_email",
        "field:shop.orders.amount_cents",
    ]


def test_budget_use_matches_the_ledger(catalog: Catalog) -> None:
    """Spend per class and per product is what the ledger committed today."""
    for class_id, epsilon in SPENT.items():
        qc = catalog.get(f"query_class:{class_id}")
        assert isinstance(qc, QueryClassEntity)
        assert qc.budget.spent == epsilon
    product = catalog.get("product:shop.orders")
    assert isinstance(product, ProductEntity) and product.budget is not None
    assert product.budget.spent == str(sum(Decimal(e) for e in SPENT.values()))
    assert [e.id for e in catalog.search(budget_above=0.8)] == [
        "query_class:shop.orders.distinct_customers"
    ]


def test_models_carry_registry_lineage(catalog: Catalog) -> None:
    """A registered model lists its domains, example counts, SecAgg+ and DP facts and
    the products it was trained on, and each product lists it."""
    model = catalog.get("model:flight_delay-v1")
    assert model.model_dump()["examples"] == {"ewr": 9, "jfk": 8, "lga": 7}
    assert model.model_dump()["secure_aggregation"]["enabled"] is True
    assert model.model_dump()["code_version"] == "abc123"
    for domain in ("ewr", "jfk", "lga"):
        product = catalog.get(f"product:{domain}.departures")
        assert isinstance(product, ProductEntity)
        assert product.models == ["model:flight_delay-v1"]


def _with_product(inputs: CatalogInputs, domain: str, **changes: Any) -> CatalogInputs:
    contracts = dict(inputs.contracts)
    contract = contracts[domain]
    product = contract.products[0].model_copy(update=changes)
    contracts[domain] = contract.model_copy(update={"products": [product]})
    return dataclasses.replace(inputs, contracts=contracts)


def test_unknown_owner_is_refused_naming_the_product(inputs: CatalogInputs) -> None:
    """A product owned by a team the owners directory lacks: an error naming both."""
    bad = _with_product(inputs, "web", owner="nobody@example.com")
    with pytest.raises(UnknownOwner, match=r"product:web.page_views.*nobody@example.com"):
        assemble(bad)


def test_class_naming_a_missing_field_is_refused(inputs: CatalogInputs) -> None:
    """A query class whose measure is not a field of its product names the class."""
    classes = dict(inputs.classes)
    qc = classes["shop.orders.revenue_cents"]
    classes[qc.id] = qc.model_copy(update={"measure": "amount_euros"})
    with pytest.raises(
        UnknownReference, match=r"query_class:shop.orders.revenue_cents.*amount_euros"
    ):
        assemble(dataclasses.replace(inputs, classes=classes))


def test_unknown_upstream_and_cycles_are_refused(inputs: CatalogInputs) -> None:
    """An upstream that is no product, and two products deriving from each other, are
    refused; the cycle's entities are named."""
    with pytest.raises(UnknownReference, match=r"upstream 'shop\.nothing'"):
        assemble(_with_product(inputs, "web", upstream=["shop.nothing"]))
    looped = _with_product(
        _with_product(inputs, "web", upstream=["support.tickets"]),
        "support",
        upstream=["web.page_views"],
    )
    with pytest.raises(LineageCycle, match=r"topic:web.page_views.*topic:support.tickets"):
        assemble(looped)


def test_declared_upstream_links_the_products(inputs: CatalogInputs) -> None:
    """A product derived from another gets an edge from that product's topic."""
    catalog = assemble(_with_product(inputs, "support", upstream=["shop.orders"]))
    graph = catalog.lineage("topic:support.tickets.ingest", direction="upstream", depth=1)
    assert "topic:shop.orders.v1" in {n["id"] for n in graph["nodes"]}


def test_owner_directory_lists_what_each_team_owns(catalog: Catalog) -> None:
    """Owners appear as entities with the domains and products they own."""
    owner = catalog.get("owner:shop-data@example.com").model_dump()
    assert owner["owns"] == ["domain:shop", "product:shop.orders"]


def test_a_custom_contract_set_builds(inputs: CatalogInputs) -> None:
    """A minimal contract set with its own owner builds a consistent catalog."""
    contract = DomainContract.model_validate(
        {
            "domain": "lab",
            "description": "A lab.",
            "owner": "lab@example.com",
            "products": [
                DataProduct.model_validate(
                    {
                        "name": "samples",
                        "description": "Samples.",
                        "owner": "lab@example.com",
                        "purpose": "research",
                        "retention_days": 30,
                        "privacy_unit": "patient_id",
                        "event_time": "taken_at",
                        "fields": [
                            {
                                "name": "patient_id",
                                "type": "string",
                                "description": "Id.",
                                "tag": "direct_identifier",
                                "protection": "tokenise",
                            },
                            {
                                "name": "taken_at",
                                "type": "timestamp",
                                "description": "When.",
                                "tag": "non_personal",
                            },
                        ],
                    }
                )
            ],
        }
    )
    owners = OwnersDirectory(
        owners=[Owner(email="lab@example.com", name="lab", display_name="Lab")]
    )
    catalog = assemble(CatalogInputs(contracts={"lab": contract}, owners=owners))
    assert [e.id for e in catalog.of_kind("product")] == ["product:lab.samples"]
    assert catalog.summary()["fields_by_tag"] == {"direct_identifier": 1, "non_personal": 1}


def test_products_carry_the_user_level_guarantee_allocation_and_bounds(
    catalog: Catalog, inputs: CatalogInputs
) -> None:
    """Each product with a daily total states the user-level loss per subject per UTC day
    (its total), the privacy unit, each class's allocation and the contract's contribution
    bounds with each bounded measure's clamp."""
    contracts = load_contracts()
    for contract in contracts.values():
        for spec in contract.products:
            product = catalog.get(f"product:{contract.domain}.{spec.name}")
            assert isinstance(product, ProductEntity) and product.budget is not None
            level = product.user_level
            assert level is not None
            assert level.epsilon_per_subject_per_day == product.budget.per_day
            assert level.statement.startswith(
                f"ε = {level.epsilon_per_subject_per_day} per person per UTC day (pure DP)"
            )
            assert "pseudonymous subject" in level.privacy_unit
            assert level.privacy_unit.endswith("over the UTC day")
            assert [a.query_class for a in level.allocation] == product.query_classes
            bounds = product.contribution
            assert bounds is not None
            assert bounds.max_records_per_period == spec.contribution.max_records_per_period
            assert bounds.max_windows_per_period == spec.contribution.max_windows_per_period
            for field in spec.fields:
                if field.numeric and field.bounds is not None:
                    clamp = spec.clamp_of(field.name)
                    assert bounds.clamp[field.name] == (clamp.min, clamp.max)
    shop = catalog.get("product:shop.orders")
    assert isinstance(shop, ProductEntity) and shop.user_level is not None
    assert shop.user_level.total_source == "declared"
    assert "amount_cents" in shop.contribution.clamp  # type: ignore[union-attr]
    # the per-day revenue cap and the planning reserve, as the contract and the file declare
    assert shop.contribution.max_sum_per_period == {"amount_cents": 100658}  # type: ignore[union-attr]
    assert shop.user_level.reserve_per_day == "0.3"
    web = catalog.get("product:web.page_views")
    assert isinstance(web, ProductEntity) and web.user_level is not None
    assert web.user_level.reserve_per_day == "0"  # no reserve declared, the policy's default
    for share in shop.user_level.allocation:
        qc = catalog.get(share.query_class)
        assert isinstance(qc, QueryClassEntity)
        assert share.epsilon_per_day == qc.budget.per_day
        assert share.privacy_unit == qc.privacy_unit
        per_day = Decimal(qc.budget.per_day) / Decimal(shop.user_level.epsilon_per_subject_per_day)
        assert share.share == pytest.approx(float(per_day))
    narrower = {
        a.query_class for a in shop.user_level.allocation if a.privacy_unit == "subject_window"
    }
    assert set(shop.user_level.narrower_classes) == narrower


def test_a_product_without_a_declared_total_shows_the_policy_default(
    inputs: CatalogInputs,
) -> None:
    """A product whose query-class file declares no total gets the governance policy's
    default (capped by the policy's maximum), as the ledger enforces it; with no default
    it has no budget and no guarantee; a declared total above the cap reads as the cap."""
    budgets = {k: v for k, v in inputs.product_budgets.items() if k != "shop.orders"}
    policy = GovernancePolicy(default_product_budget_per_day=Decimal("1.5"))
    catalog = assemble(dataclasses.replace(inputs, product_budgets=budgets, policy=policy))
    shop = catalog.get("product:shop.orders")
    assert isinstance(shop, ProductEntity) and shop.budget is not None
    assert shop.budget.per_day == "1.5" and shop.user_level is not None
    assert shop.user_level.epsilon_per_subject_per_day == "1.5"
    assert shop.user_level.total_source == "policy_default"
    assert shop.budget.spent == str(sum(Decimal(e) for e in SPENT.values()))  # the ledger's
    none = GovernancePolicy(default_product_budget_per_day=None)
    catalog = assemble(dataclasses.replace(inputs, product_budgets=budgets, policy=none))
    shop = catalog.get("product:shop.orders")
    assert isinstance(shop, ProductEntity)
    assert shop.budget is None and shop.user_level is None
    declared = inputs.product_budgets["shop.orders"].budget_per_day
    capped = GovernancePolicy(
        max_product_budget_per_day=declared / 2,
        max_class_budget_per_day=declared / 2,
        max_epsilon_per_release=min(Decimal(1), declared / 2),
        default_product_budget_per_day=None,
    )
    catalog = assemble(dataclasses.replace(inputs, policy=capped))
    shop = catalog.get("product:shop.orders")
    assert isinstance(shop, ProductEntity) and shop.user_level is not None
    assert Decimal(shop.user_level.epsilon_per_subject_per_day) == declared / 2
