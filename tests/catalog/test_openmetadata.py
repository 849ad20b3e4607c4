"""OpenMetadata conformance: every exported entity validates against the SDK's generated
models, tags map onto PII.Sensitive / PII.NonSensitive, and push works against a server
speaking the same REST paths: idempotent, per-entity outcomes, clear fatal errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from catalog.errors import ServerUnreachable, TokenRejected
from catalog.graph import Catalog
from catalog.openmetadata import Request, build_requests, placeholder_id, write_export
from catalog.push import connect, push
from tests.conftest import free_port
from tests.fakes import OpenMetadataTestServer

TOKEN = "test-bot-jwt"


@pytest.fixture
def requests_(catalog: Catalog) -> list[Request]:
    """The demo catalog's create-requests."""
    return build_requests(catalog)


def _tags(fields: list[dict[str, Any]], name: str) -> set[str]:
    return {t["tagFQN"] for f in fields if f["name"] == name for t in f.get("tags", [])}


def test_every_entity_validates_against_the_sdk_models(
    requests_: list[Request], tmp_path: Path
) -> None:
    """Each request's JSON, read back, validates as its SDK create-request model; the
    export holds every kind the issue lists, in dependency order."""
    kinds = [r.entity_type for r in requests_]
    for request in requests_:
        type(request.model).model_validate(request.as_json())
    assert {
        "classification", "tag", "team", "domain", "dataProduct", "messagingService",
        "databaseService", "database", "databaseSchema", "topic", "table", "lineage",
    } == set(kinds)  # fmt: skip
    assert kinds.index("topic") > kinds.index("messagingService")
    assert max(i for i, k in enumerate(kinds) if k != "lineage") < kinds.index("lineage")
    names = {type(r.model).__name__ for r in requests_}
    assert {"CreateDomainRequest", "CreateDataProductRequest", "CreateTopicRequest",
            "CreateTableRequest", "CreateTagRequest", "AddLineageRequest"} <= names  # fmt: skip
    counts = write_export(requests_, tmp_path / "om")
    manifest = json.loads((tmp_path / "om" / "manifest.json").read_text())
    assert manifest["counts"] == counts
    topics = json.loads((tmp_path / "om" / "topic.json").read_text())
    assert (
        len(topics) == counts["topic"] == 6 * 4 + 6 * 3
    )  # per product; erasures, consent, consent DLQ


def test_fields_carry_privmesh_and_pii_tags(requests_: list[Request]) -> None:
    """Topic schema fields carry the privmesh tag, the protection and the PII mapping."""
    topics = {r.fqn: r.as_json() for r in requests_ if r.entity_type == "topic"}
    product = topics['privmesh_kafka."shop.orders.v1"']["messageSchema"]["schemaFields"]
    assert _tags(product, "customer_email_token") == {
        "privmesh.direct_identifier", "privmesh_protection.tokenise", "PII.Sensitive",
    }  # fmt: skip
    assert _tags(product, "zip_code") == {
        "privmesh.quasi_identifier", "privmesh_protection.generalise", "PII.NonSensitive",
    }  # fmt: skip
    assert _tags(product, "payment_method") == {"privmesh.non_personal", "privmesh_protection.keep"}
    assert "customer_name" not in {f["name"] for f in product}
    ingest = topics['privmesh_kafka."shop.orders.ingest"']["messageSchema"]["schemaFields"]
    assert "PII.Sensitive" in _tags(ingest, "customer_name")


def test_export_holds_no_raw_values(requests_: list[Request], catalog: Catalog) -> None:
    """Nothing exported carries a contract's sample values (only names and facts)."""
    from domains.registry import load_contracts

    text = json.dumps([r.as_json() for r in requests_])
    samples = {
        str(e)
        for c in load_contracts().values()
        for p in c.products
        for f in p.fields
        if f.tag.value != "non_personal"
        for e in f.examples
    }
    assert all(sample not in text for sample in samples)
    assert "@" not in text.replace("@example.com", "")


def test_lineage_has_column_level_details(requests_: list[Request]) -> None:
    """The product topic feeds the window-stats table column by column, with references
    that name their targets."""
    lineage = {r.fqn: r.as_json() for r in requests_ if r.entity_type == "lineage"}
    key = (
        'privmesh_kafka."shop.orders.v1"->privmesh_feast.privmesh_shop.feature_views.'
        "orders_window_stats"
    )
    edge = lineage[key]["edge"]
    assert edge["fromEntity"]["id"] == placeholder_id("topic", 'privmesh_kafka."shop.orders.v1"')
    columns = {c["toColumn"]: c["fromColumns"] for c in edge["lineageDetails"]["columnsLineage"]}
    target = "privmesh_feast.privmesh_shop.feature_views.orders_window_stats.amount_cents_sum"
    assert columns[target] == ['privmesh_kafka."shop.orders.v1".amount_cents']


def test_push_creates_then_updates_idempotently(requests_: list[Request]) -> None:
    """A first push creates every entity and edge; a re-run only updates; the server
    holds real ids in every reference, tags on topic fields, and the lineage."""
    with OpenMetadataTestServer(TOKEN) as server:
        client = connect(server.url, TOKEN)
        first = push(requests_, client, server.url)
        assert first.failed == []
        entities = [r for r in requests_ if r.entity_type != "lineage"]
        assert first.counts()["created"] == len(entities)
        stored = server.get("topic", 'privmesh_kafka."shop.orders.v1"')
        assert stored is not None
        fields = stored["messageSchema"]["schemaFields"]
        assert "PII.Sensitive" in _tags(fields, "customer_email_token")
        product = server.get("dataProduct", "shop_orders")
        assert product is not None
        assert product["owners"][0]["id"] == server.get("team", "shop-data")["id"]  # type: ignore[index]
        assert len(server.lineage) == sum(r.entity_type == "lineage" for r in requests_)
        assert all(a in server.by_id and b in server.by_id for a, b in server.lineage)
        second = push(requests_, client, server.url)
        assert second.failed == []
        assert second.counts()["created"] == 0
        assert server.get("topic", 'privmesh_kafka."shop.orders.v1"')["version"] == 0.2  # type: ignore[index]


def test_a_rejected_entity_fails_alone_and_a_rerun_completes(requests_: list[Request]) -> None:
    """The server refuses one table: it and what needs it (its lineage, its data
    product) fail with the reason; everything else lands; a re-run fixes it all."""
    table = "privmesh_feast.privmesh_web.feature_views.page_views_events"
    with OpenMetadataTestServer(TOKEN) as server:
        server.reject.add(table)
        client = connect(server.url, TOKEN)
        report = push(requests_, client, server.url)
        failed = {r.fqn: r.error for r in report.failed}
        assert table in failed and "rejected" in str(failed[table])
        assert f"needs table {table}, whose own push failed" in str(failed["web_page_views"])
        assert all(table in fqn or fqn == "web_page_views" for fqn in failed)
        assert server.get("dataProduct", "shop_orders") is not None
        server.reject.clear()
        again = push(requests_, client, server.url)
        assert again.failed == []


def test_rejected_token_and_unreachable_server_are_clear(requests_: list[Request]) -> None:
    """A wrong token: TokenRejected naming the fix; no server: ServerUnreachable."""
    with OpenMetadataTestServer(TOKEN) as server:
        with pytest.raises(TokenRejected, match="rejects the token"):
            connect(server.url, "wrong")
        puts = [r for r in server.requests if r[0] == "PUT"]
        assert puts == []
    with pytest.raises(ServerUnreachable, match="does not answer"):
        connect(f"http://127.0.0.1:{free_port()}", TOKEN)
