"""Searching the catalog by tag, protection, budget and text; lineage queries."""

from __future__ import annotations

import pytest

from catalog.errors import EntityNotFound, InvalidSearch
from catalog.graph import Catalog


def test_every_quasi_identifier(catalog: Catalog) -> None:
    """Tag search over fields returns exactly the quasi-identifiers of the contracts."""
    found = [e.id for e in catalog.search(kind="field", tag="quasi_identifier")]
    assert found == [
        "field:shop.orders.birth_date",
        "field:shop.orders.ip_address",
        "field:shop.orders.zip_code",
        "field:web.page_views.country",
        "field:web.page_views.ip_address",
        "field:web.page_views.user_agent",
    ]


def test_products_with_sensitive_fields(catalog: Catalog) -> None:
    """Tag search over products finds those with at least one field of the tag."""
    found = [e.id for e in catalog.search(kind="product", tag="sensitive")]
    assert "product:shop.orders" in found
    assert all(
        e.model_dump()["tag_counts"]["sensitive"] > 0
        for e in catalog.search(kind="product", tag="sensitive")
    )


def test_protection_text_and_domain_filters_combine(catalog: Catalog) -> None:
    """Every filter given must hold."""
    dropped = catalog.search(protection="drop", domain="shop")
    assert [e.id for e in dropped] == ["field:shop.orders.customer_name"]
    assert [e.id for e in catalog.search(kind="field", text="E-MAIL", domain="shop")] == [
        "field:shop.orders.customer_email"
    ]


def test_filters_that_do_not_apply_are_refused(catalog: Catalog) -> None:
    """budget_above on owners, protection on topics: an error saying what applies."""
    with pytest.raises(InvalidSearch, match=r"budget_above applies to product and query_class"):
        catalog.search(kind="owner", budget_above=0.5)
    with pytest.raises(InvalidSearch, match="protection applies to fields"):
        catalog.search(kind="topic", protection="drop")


def test_unknown_entity_suggests_close_ids(catalog: Catalog) -> None:
    """A mistyped id is refused with the nearest real ids."""
    with pytest.raises(EntityNotFound, match=r"field:shop\.orders\.zip_code"):
        catalog.get("field:shop.orders.zipcode")


def test_lineage_directions_and_depth(catalog: Catalog) -> None:
    """Upstream of a class reaches its source fields; depth 1 stops at neighbours."""
    up = catalog.lineage("query_class:shop.orders.revenue_cents", direction="upstream")
    nodes = {n["id"] for n in up["nodes"]}
    assert {"field:shop.orders.amount_cents", "field:shop.orders.customer_email"} <= nodes
    assert not any(n.startswith("query_class:shop.orders.order_count") for n in nodes)
    near = catalog.lineage("topic:shop.orders.ingest", direction="downstream", depth=1)
    assert "processor:shop.orders" in {n["id"] for n in near["nodes"]}
    assert "feature_view:shop.orders_events" not in {n["id"] for n in near["nodes"]}


def test_column_nodes_carry_tags(catalog: Catalog) -> None:
    """Column nodes of the lineage graph say which entity they belong to and their tag."""
    graph = catalog.lineage("field:shop.orders.ip_address", direction="downstream")
    column = next(n for n in graph["nodes"] if n["id"] == "topic:shop.orders.v1#ip_address")
    assert column == {
        "id": "topic:shop.orders.v1#ip_address",
        "kind": "column",
        "label": "ip_address",
        "entity": "topic:shop.orders.v1",
        "tag": "quasi_identifier",
        "protection": "generalise",
    }
