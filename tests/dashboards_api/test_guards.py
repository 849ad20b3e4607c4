"""DP API guards: exact-definition reuse, the governance policy, class-id ownership, finite
mechanisms, honest reporting (running totals, OpenAPI, 405, dot segments)."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dashboards_api.errors import InvalidQueryClasses, MechanismRefused
from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.mechanisms import DiscreteLaplaceCount, NonFiniteAccuracy
from dashboards_api.policy import GovernancePolicy, PolicyCell, check_at_start
from dashboards_api.query_classes import QueryClass, load_query_classes
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import ApiSettings, KeyGrant
from domains.contract import Bounds
from domains.registry import load_contracts
from tests.dashboards_api.per_window import (
    RAISED_POLICY,
    raised_policy,
    window_budgets,
    window_classes,
)
from tests.fakes import FakeWindowSource

NOW = 1_795_427_055.0
WINDOW = 1_795_427_040
KEYS = {
    "shop-owner": KeyGrant(role="domain_owner", domains=frozenset({"shop"})),
    "web-owner": KeyGrant(role="domain_owner", domains=frozenset({"web"})),
    "jfk-owner": KeyGrant(role="domain_owner", domains=frozenset({"jfk"})),
    "reader": KeyGrant(role="consumer"),
    "gov": KeyGrant(role="governance"),
}
ROW = {
    "distinct_subjects": 40,
    "events": 60,
    "contribution_bound": 20,
    "amount_cents_sum": 5e5,
    "amount_cents_sum_cap": 100_658.0,
}
COUNT = {
    "id": "shop.orders.guarded",
    "title": "Orders per window",
    "domain": "shop",
    "product": "orders",
    "aggregate": "count_records",
    "epsilon_per_release": "1",
    "budget_per_day": "20",
}
JFK = {
    "id": "jfk.departures.count",
    "title": "Departures per window",
    "domain": "jfk",
    "product": "departures",
    "aggregate": "count_records",
    "epsilon_per_release": "1",
    "budget_per_day": "20",
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def service_at(path: Path, rows: dict[int, dict[str, Any]] | None = None) -> ReleaseService:
    source = FakeWindowSource(rows=rows if rows is not None else {WINDOW: ROW})
    return ReleaseService(
        classes=window_classes(),
        policy=raised_policy(),
        contracts=load_contracts(),
        sources={"shop": source, "jfk": source},
        ledger=SqliteLedger(path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=lambda: NOW,
        product_budgets=window_budgets(),
    )


def make(path: Path, rows: dict[int, dict[str, Any]] | None = None) -> TestClient:
    service = service_at(path, rows)
    return TestClient(create_app(service, KEYS, ApiSettings(registry_sync_seconds=0)))


def put(client: TestClient, body: dict[str, Any], key: str = "shop-owner") -> Any:
    return client.put(f"/v1/classes/{body['id']}", json=body, headers=auth(key))


def entries(client: TestClient) -> int:
    return len(client.get("/v1/ledger?limit=1000", headers=auth("gov")).json()["entries"])


# --------------------------------------------------------------------- 1. exact reuse

# Each variant changes one field of a base class (and only what validation forces with it).
WINDOW_BASE = {k: v for k, v in COUNT.items() if k not in ("title", "budget_per_day")}
EVENT_BASE = {**WINDOW_BASE, "window": "1m", "max_records_per_subject": 3}
QUANTILE_BASE = {
    **EVENT_BASE,
    "aggregate": "quantile",
    "measure": "amount_cents",
    "quantile": 0.5,
    "candidates": [0, 1_000, 5_000],
}
CONTINUAL_BASE = {
    **WINDOW_BASE,
    "release": "continual",
    "horizon_windows": 8,
    "privacy_unit": "subject_window",
}
DAILY_BASE = {**WINDOW_BASE, "release": "daily", "privacy_unit": "subject_day"}
MEAN_BASE = {
    **DAILY_BASE,
    "aggregate": "mean",
    "measure": "amount_cents",
    "numerator": "shop.orders.revenue_cents",
    "denominator": "shop.orders.order_count",
    "epsilon_per_release": "0",
    "budget_per_day": "0",
}
VARIANTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("aggregate", WINDOW_BASE, {"aggregate": "count_distinct_subjects"}),
    ("measure", QUANTILE_BASE, {"measure": "amount_cents", "candidates": [0, 1_000, 9_000]}),
    ("measure", {**WINDOW_BASE, "aggregate": "bounded_sum", "measure": "amount_cents"}, {}),
    ("group_by", EVENT_BASE, {"aggregate": "histogram", "group_by": "payment_method"}),
    ("window", EVENT_BASE, {"window": "1h"}),
    ("release", WINDOW_BASE, {k: CONTINUAL_BASE[k] for k in CONTINUAL_BASE}),
    ("horizon_windows", CONTINUAL_BASE, {"horizon_windows": 16}),
    ("privacy_unit", WINDOW_BASE, dict(CONTINUAL_BASE)),
    ("max_records_per_subject", EVENT_BASE, {"max_records_per_subject": 4}),
    ("quantile", QUANTILE_BASE, {"quantile": 0.9}),
    ("candidates", QUANTILE_BASE, {"candidates": [0, 2_000, 5_000]}),
    ("suppress_below", WINDOW_BASE, {"suppress_below": 10}),
    ("mechanism", WINDOW_BASE, {"mechanism": "discrete_laplace", "epsilon_per_release": "0.9"}),
    ("epsilon_per_release", WINDOW_BASE, {"epsilon_per_release": "0.5"}),
    ("release", WINDOW_BASE, dict(DAILY_BASE)),
    ("resolutions", DAILY_BASE, {"resolutions": ["1h", "today"]}),
    ("accuracy", DAILY_BASE, {"accuracy": {"relative": 0.05, "resolution": "1h"}}),
    ("numerator", MEAN_BASE, {"numerator": "shop.orders.other_sum"}),
    ("denominator", MEAN_BASE, {"denominator": "shop.orders.other_count"}),
]


def build(fields: dict[str, Any]) -> QueryClass:
    return QueryClass.model_validate({"title": "t", "budget_per_day": "50", **fields})


def test_a_change_of_contribution_bounds_changes_the_definition_hash() -> None:
    """The contract's per-day bounds and clamps shape every sensitivity: changing them is a
    redefinition (an answer under the old bounds is never reused)."""
    product = load_contracts()["shop"].product("orders")
    assert product is not None
    looser = product.model_copy(
        update={
            "contribution": product.contribution.model_copy(
                update={"max_records_per_period": product.contribution.max_records_per_period + 1}
            )
        }
    )
    qc = build(DAILY_BASE)
    assert qc.definition_hash(product) != qc.definition_hash(looser)


@pytest.mark.parametrize(("field", "base", "change"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_every_shaping_field_changes_the_definition_hash(
    field: str, base: dict[str, Any], change: dict[str, Any]
) -> None:
    """Changing any field that shapes an answer gives another definition hash."""
    product = load_contracts()["shop"].product("orders")
    before = build(base)
    after = build({**base, **change}) if change else build({**base, "measure": "amount_cents"})
    if field == "measure" and not change:  # a sum whose measure's contract bounds change
        bounded = product.field("amount_cents")  # type: ignore[union-attr]
        assert bounded is not None and product is not None
        moved = product.model_copy(
            update={
                "fields": [
                    f.model_copy(update={"bounds": Bounds(min=0, max=5)})
                    if f.name == "amount_cents"
                    else f
                    for f in product.fields
                ]
            }
        )
        assert before.definition_hash(product) != before.definition_hash(moved)
        return
    assert before.definition_hash(product) != after.definition_hash(product)


def test_every_class_field_is_covered_or_does_not_shape_the_answer() -> None:
    """Every QueryClass field is either varied above or documented as not shaping answers."""
    varied = {field for field, _, _ in VARIANTS}
    identity = {"id", "domain", "product"}  # another id, domain or product is another class
    not_shaping = {"title", "budget_per_day"}
    assert set(QueryClass.model_fields) == varied | identity | not_shaping
    base = build(WINDOW_BASE)
    renamed = build({**WINDOW_BASE, "title": "other"}).model_copy(
        update={"budget_per_day": Decimal(9)}
    )
    assert base.definition_hash() == renamed.definition_hash()


def test_redefined_class_never_serves_the_old_answer(tmp_path: Path) -> None:
    """Re-PUT with another aggregate and epsilon: the same window is released afresh, with
    the new definition's epsilon and sensitivity, never the old value."""
    client = make(tmp_path)
    assert put(client, COUNT).status_code == 200
    first = client.get(f"/v1/queries/{COUNT['id']}?window_start={WINDOW}", headers=auth("reader"))
    assert first.status_code == 200 and first.json()["sensitivity"] == 20
    redefined = {**COUNT, "aggregate": "count_distinct_subjects", "epsilon_per_release": "0.5"}
    assert put(client, redefined).status_code == 200
    again = client.get(f"/v1/queries/{COUNT['id']}?window_start={WINDOW}", headers=auth("reader"))
    body = again.json()
    assert body["reused"] is False and body["epsilon_charged"] == "0.5"
    assert body["sensitivity"] == 1 and body["ledger_entry"] != first.json()["ledger_entry"]
    assert body["definition"] != first.json()["definition"]
    assert body["data_version"] == first.json()["data_version"] == f"window:{WINDOW}"
    # the same definition again reuses its own release
    third = client.get(f"/v1/queries/{COUNT['id']}?window_start={WINDOW}", headers=auth("reader"))
    assert third.json()["reused"] is True and third.json()["value"] == body["value"]


# --------------------------------------------------------------------- 2. governance policy


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("epsilon_per_release", "1000000", "less than or equal to 100"),
        ("epsilon_per_release", "1e20", "less than or equal to 100"),
        ("budget_per_day", "1e30", "less than or equal to 1000000"),
        ("epsilon_per_release", "1e-12", "6 decimal places"),
        ("epsilon_per_release", "NaN", "finite"),
        ("budget_per_day", "-5", "greater than or equal to 0"),
        # 0 passes the field (a daily mean costs 0) and is refused by the class's check
        ("epsilon_per_release", "0", "must be > 0"),
        ("budget_per_day", "0", "must be > 0"),
        ("epsilon_per_release", "lots", "valid decimal"),
    ],
)
def test_extreme_numbers_are_422_naming_the_limit(
    tmp_path: Path, field: str, value: str, limit: str
) -> None:
    """Out-of-range epsilons and budgets are refused at the edge, naming the limit; nothing
    is stored."""
    client = make(tmp_path)
    response = put(client, {**JFK, field: value}, key="jfk-owner")
    assert response.status_code == 422, response.text
    assert limit in str(response.json()["errors"])
    versions = client.get(f"/v1/classes/{JFK['id']}/versions", headers=auth("gov")).json()
    assert versions["versions"] == []


def test_policy_caps_epsilon_and_class_budget(tmp_path: Path) -> None:
    """Within the edge limits, the policy's caps still refuse (422 naming the limit)."""
    client = make(tmp_path)
    over = put(
        client, {**JFK, "epsilon_per_release": "50", "budget_per_day": "90"}, key="jfk-owner"
    )
    assert over.status_code == 422 and over.json()["limit"] == "max_epsilon_per_release"
    budget = put(client, {**JFK, "budget_per_day": "5000"}, key="jfk-owner")
    assert budget.status_code == 422 and budget.json()["limit"] == "max_class_budget_per_day"


def test_product_without_declared_total_gets_the_policy_default(tmp_path: Path) -> None:
    """jfk declares no total: the policy's default applies and caps its classes."""
    client = make(tmp_path)
    over = put(client, {**JFK, "budget_per_day": "101"}, key="jfk-owner")
    assert over.status_code == 422 and over.json()["limit"] == "product_budget_per_day"
    assert put(client, JFK, key="jfk-owner").status_code == 200
    listed = {
        c["id"]: c for c in client.get("/v1/queries", headers=auth("reader")).json()["classes"]
    }
    assert listed[JFK["id"]]["product_budget"]["epsilon_budget"] == "100"


def test_governance_policy_is_versioned_and_applies_before_anything_is_committed(
    tmp_path: Path,
) -> None:
    """Governance lowers the cap: a stored class above it is refused at release time (422,
    nothing committed); another replica on the same ledger applies the same version."""
    client = make(tmp_path)
    assert put(client, COUNT).status_code == 200
    tighter = {**RAISED_POLICY.model_dump(mode="json"), "max_epsilon_per_release": "0.5"}
    assert client.put("/v1/policy", json=tighter, headers=auth("shop-owner")).status_code == 403
    stored = client.put("/v1/policy", json=tighter, headers=auth("gov"))
    assert stored.status_code == 200 and stored.json()["version"] == 1
    before = entries(client)
    refused = client.get(f"/v1/queries/{COUNT['id']}", headers=auth("reader"))
    assert refused.status_code == 422 and refused.json()["code"] == "policy_limit_exceeded"
    assert entries(client) == before
    replica = make(tmp_path)
    assert replica.get("/v1/policy", headers=auth("reader")).json()["version"] == 1
    assert replica.get(f"/v1/queries/{COUNT['id']}", headers=auth("reader")).status_code == 422


def test_policy_below_a_declared_total_is_refused(tmp_path: Path) -> None:
    """A policy whose product cap is below a total declared in the class files is refused."""
    client = make(tmp_path)
    low = {**RAISED_POLICY.model_dump(mode="json"), "max_product_budget_per_day": "50"}
    low["default_product_budget_per_day"] = "50"
    low["max_class_budget_per_day"] = "50"
    response = client.put("/v1/policy", json=low, headers=auth("gov"))
    assert response.status_code == 422 and response.json()["code"] == "policy_limit_exceeded"
    assert client.get("/v1/policy", headers=auth("gov")).json()["version"] == 0


def test_start_up_refuses_a_product_without_a_total() -> None:
    """Without a declared total or a policy default, start-up refuses the product."""
    policy = GovernancePolicy(default_product_budget_per_day=None)
    with pytest.raises(InvalidQueryClasses, match=r"jfk\.departures"):
        check_at_start(policy, {}, {"shop.orders": 1}, ["shop.orders", "jfk.departures"])
    check_at_start(GovernancePolicy(), {}, {}, ["jfk.departures"])
    with pytest.raises(InvalidQueryClasses, match="max_product_budget_per_day"):
        check_at_start(GovernancePolicy(), {}, {"shop.orders": 10**10}, ["shop.orders"])


def test_a_mechanism_without_finite_accuracy_is_refused_before_commit(tmp_path: Path) -> None:
    """A scale whose OpenDP accuracy is -inf never releases: refused, nothing committed."""
    with pytest.raises(NonFiniteAccuracy):
        DiscreteLaplaceCount(Decimal(1_000_000), 1)
    service = service_at(tmp_path)
    # Past the edge checks only by construction (as a stored class from an older version).
    loose = GovernancePolicy.model_construct(
        max_epsilon_per_release=Decimal(10**7),
        max_class_budget_per_day=Decimal(10**7),
        max_product_budget_per_day=Decimal(10**7),
        default_product_budget_per_day=Decimal(10**7),
    )
    service.policy.replace(loose, 1)
    qc = QueryClass.model_construct(
        **{**build(JFK).__dict__, "epsilon_per_release": Decimal(1_000_000)}
    )
    service.classes[qc.id] = qc
    with pytest.raises(MechanismRefused):
        service.check_mechanism(qc)
    with pytest.raises(MechanismRefused):
        service.release(qc.id, WINDOW)
    assert service.ledger.entries(limit=10) == []


# --------------------------------------------------------------------- 3. class ids


def test_class_ids_belong_to_their_domain(tmp_path: Path) -> None:
    """A web owner can neither register a shop.* id in its own domain nor take a withdrawn
    shop id; the shop owner can take it back."""
    client = make(tmp_path)
    web_named_shop = {**COUNT, "domain": "web", "product": "page_views"}
    response = put(client, web_named_shop, key="web-owner")
    assert response.status_code == 422 and "starts with its domain" in response.text
    assert put(client, COUNT).status_code == 200
    assert (
        client.delete(f"/v1/classes/{COUNT['id']}", headers=auth("shop-owner")).status_code == 200
    )
    assert put(client, COUNT, key="web-owner").status_code == 403
    assert put(client, COUNT).status_code == 200


def test_shipped_class_ids_start_with_their_domain() -> None:
    """Every shipped class id starts with its domain's name."""
    assert all(qc.id.startswith(f"{qc.domain}.") for qc in load_query_classes().values())


# --------------------------------------------------------------------- 4. partial windows


def test_a_window_with_an_incomplete_partition_is_released_partial(tmp_path: Path) -> None:
    """A window one of two partitions closed by the wall clock (or with late events) is
    released marked partial, with the share of complete partitions and the late count."""
    row = {**ROW, "partitions": 2, "complete": 1, "late_events": 7}
    client = make(tmp_path, {WINDOW: row, WINDOW - 10: {**ROW, "partitions": 2, "complete": 2}})
    body = client.get(
        f"/v1/queries/shop.orders.distinct_customers?window_start={WINDOW}", headers=auth("reader")
    ).json()
    assert body["partial"] is True and body["partitions_complete_share"] == 0.5
    assert body["late_events"] == 7
    whole = client.get(
        f"/v1/queries/shop.orders.distinct_customers?window_start={WINDOW - 10}",
        headers=auth("reader"),
    ).json()
    assert whole["partial"] is False and whole["partitions_complete_share"] == 1.0


# --------------------------------------------------------------------- 5. honest reporting


def test_running_total_states_its_share_of_the_horizon_epsilon(tmp_path: Path) -> None:
    """A running total says which entry paid the horizon's epsilon and what share it draws."""
    running = {**COUNT, **{k: CONTINUAL_BASE[k] for k in CONTINUAL_BASE if k != "id"}}
    running["id"] = "shop.orders.guarded_running"
    client = make(tmp_path, {WINDOW - 10 * i: ROW for i in range(8)})
    assert put(client, running).status_code == 200
    body = client.get(f"/v1/queries/{running['id']}", headers=auth("reader")).json()
    share = body["horizon_epsilon"]
    assert share["epsilon"] == "1" and share["paid_by_ledger_entry"] >= 1
    t = body["running_total"]["t"]
    assert share["totals_released"] == t and math.isclose(share["share_drawn"], t / 8)


def test_405_carries_allow(tmp_path: Path) -> None:
    """A method a route does not have: 405 problem+json with an Allow header."""
    client = make(tmp_path)
    response = client.post("/v1/queries", headers=auth("reader"))
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    "path", ["/v1/classes/../versions", "/v1/classes/%2e%2e/versions", "/v1/queries/./x"]
)
def test_dot_segments_never_alias_a_route(tmp_path: Path, path: str) -> None:
    """'.' and '..' path segments, encoded or not, are refused with a problem document."""
    client = make(tmp_path)
    response = client.get(path, headers=auth("gov"))
    assert response.status_code in (400, 404), response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_openapi_lists_problem_documents_for_every_operation(tmp_path: Path) -> None:
    """Each operation documents its error statuses as problem+json with the schema."""
    spec = make(tmp_path).get("/openapi.json").json()
    needed = {
        ("/v1/queries/{class_id}", "get"): {"401", "403", "404", "409", "422", "429", "503"},
        ("/v1/classes/{class_id}", "put"): {"401", "403", "422"},
        ("/v1/policy", "put"): {"401", "403", "422"},
        ("/v1/ledger", "get"): {"401", "403", "422"},
    }
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            assert "500" in responses, (path, method)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    content = response["content"]
                    assert list(content) == ["application/problem+json"], (path, status)
                    assert "code" in content["application/problem+json"]["schema"]["required"]
            assert needed.get((path, method), set()) <= set(responses), (path, method)


def test_policy_cell_keeps_the_newest_version() -> None:
    """An older policy version arriving late never replaces a newer one."""
    cell = PolicyCell()
    newer = GovernancePolicy(max_epsilon_per_release=Decimal(2))
    cell.replace(newer, 5)
    cell.replace(GovernancePolicy(), 3)
    assert cell.current is newer and cell.seq == 5


@pytest.mark.parametrize("value", ["bytes=99999999-", "bytes=5-1", "garbage"])
def test_bad_ranges_never_get_a_plain_text_error(tmp_path: Path, value: str) -> None:
    """Range headers are ignored: a page asset is served whole, never a plain-text 416/400."""
    client = make(tmp_path)
    response = client.get("/dashboard", headers={"Range": value})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
