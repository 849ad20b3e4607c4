"""Schema-driven fuzzing of the whole HTTP API (schemathesis over the app's OpenAPI).

Every operation the app documents gets generated requests, valid and invalid (schemathesis'
positive and negative modes, plus its coverage phase of boundary values): sometimes a
registered class id or a released window instead of random text, and sometimes a
governance, a consumer, an unknown or no API key. Two properties must hold for all of them:
no response is a 5xx, and every 4xx is an RFC 9457 ``application/problem+json`` body with
its status and a stable ``code``.

Bounded and repeatable: 50 examples per operation, derandomized, no example database.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from dashboards_api.errors import ApiError
from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.query_classes import QueryClass, load_query_classes
from dashboards_api.releases import ReleaseService, StoreEvents
from dashboards_api.settings import ApiSettings, KeyGrant
from domains.registry import load_contracts
from feature_repo.events import event_schema, event_table
from feature_repo.offline import append_part
from tests.fakes import FakeWindowSource

NOW = 1_795_427_055.0  # 5 s into a 10 s window; the last closed one starts at ...040
LAST_CLOSED = 1_795_427_040
WINDOWS = [LAST_CLOSED - 10 * i for i in range(30)]
KEYS = {
    "gov-key": KeyGrant(role="governance"),
    "owner-key": KeyGrant(role="domain_owner", domains=frozenset({"shop"})),
    "consumer-key": KeyGrant(role="consumer"),
}
# Valid run-time classes of every shape (a domain owner of shop may PUT them), so the
# registry and the release path of each shape are reached, not only the validation layer.
SHOP = {"domain": "shop", "product": "orders", "epsilon_per_release": "0.5"}
DEFINITIONS: list[dict[str, Any]] = [
    {"id": "shop.orders.fz_count", "aggregate": "count_records", "suppress_below": 5},
    {"id": "shop.orders.fz_sum", "aggregate": "bounded_sum", "measure": "amount_cents"},
    {
        "id": "shop.orders.fz_running",
        "aggregate": "count_records",
        "release": "continual",
        "horizon_windows": 8,
        "privacy_unit": "subject_window",
    },
    {
        "id": "shop.orders.fz_mean",
        "aggregate": "mean",
        "measure": "amount_cents",
        "max_records_per_subject": 5,
    },
    {
        "id": "shop.orders.fz_histogram",
        "aggregate": "histogram",
        "group_by": "payment_method",
        "max_records_per_subject": 3,
    },
    {
        "id": "shop.orders.fz_median",
        "aggregate": "quantile",
        "measure": "amount_cents",
        "quantile": 0.5,
        "candidates": [0, 1_000, 5_000, 100_000],
        "max_records_per_subject": 3,
    },
    {
        "id": "shop.orders.fz_hourly",
        "aggregate": "count_distinct_subjects",
        "window": "1h",
        "max_records_per_subject": 1,
    },
]
DEFINITIONS = [{"title": d["id"], **SHOP, "budget_per_day": "50", **d} for d in DEFINITIONS]
# An owner trying extreme values on a class's numeric fields (issue 25): each must be a
# 4xx problem or a release with a finite interval, never a 5xx.
NUMERIC_FIELDS = [
    "epsilon_per_release",
    "budget_per_day",
    "suppress_below",
    "max_records_per_subject",
    "horizon_windows",
    "quantile",
]
EXTREME_TEXT = ["1e-12", "0.000001", "1e30", "1e20", "1000000", "100", "NaN", "-1", "0", "lots"]
EXTREMES = st.sampled_from([*EXTREME_TEXT, 1e-12, 1e30, -1, 0, 10**30, 0.5, 2**63])


def shop_row(i: int) -> dict[str, Any]:
    """A complete shop window: counts, sums and the processor's contribution bound."""
    return {
        "distinct_subjects": 40 + i,
        "events": 90 + i,
        "amount_cents_sum": 123_456.0 + i,
        "amount_cents_sum_cap": 100_658.0,
        "contribution_bound": 20,
    }


EVENTS = Path(tempfile.mkdtemp(prefix="privmesh-fuzz-events-"))


def build_app() -> Any:
    """The real app: registered classes, an in-memory sqlite ledger, API keys on."""
    # Every other window is missing, so window_start also meets "no data for this window".
    sources = {
        "shop": FakeWindowSource(rows={w: shop_row(i) for i, w in enumerate(WINDOWS[::2])}),
        "support": FakeWindowSource(dict.fromkeys(WINDOWS[::2], 7)),
        "web": FakeWindowSource({}),  # no data at all: 503
    }
    events = EVENTS / "orders_events"
    product = load_contracts()["shop"].product("orders")
    assert product is not None
    rows = [
        {
            product.subject_field: f"tok-{i % 97}",
            "order_id": f"o-{i}",
            "payment_method": ["card", "paypal", "invoice", "gift_card"][i % 4],
            "amount_cents": 100 * i,
            "occurred_at": int(NOW) - 3_700 + i,
        }
        for i in range(3_700)
    ]
    append_part(events, event_table(event_schema(product), rows).to_pandas())
    service = ReleaseService(
        classes=dict(load_query_classes()),
        contracts=load_contracts(),
        sources=sources,  # type: ignore[arg-type]
        events={"shop": StoreEvents(lambda _: events)},
        ledger=SqliteLedger(Path(":memory:")),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=lambda: NOW,
    )
    app = create_app(service, KEYS, ApiSettings(registry_sync_seconds=0))
    for definition in DEFINITIONS:  # registered up front, so releases of each shape are fuzzed
        # A shape the API refuses to register is fine: it can never be released.
        with contextlib.suppress(ApiError):
            app.state.registry.put(QueryClass.model_validate(definition), None, "fuzz setup")
    return app


# Loaded at import: schemathesis 4.32's lazy ``from_fixture`` needs pytest < 9 (it sets
# ``request.node._nodeid``), so the app is built once per module, not per test.
# The live endpoint streams until the client leaves, so it is left out of fuzzing.
APP = build_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path="/v1/live")
schema.config.generation.update(max_examples=50, deterministic=True, database="none")
REGISTERED = sorted(APP.state.service.classes)


@schema.hook
def flatmap_path_parameters(_: Any, path_parameters: dict[str, Any] | None) -> Any:
    """Half the time a registered class id instead of generated text."""
    if not path_parameters or "class_id" not in path_parameters:
        return st.just(path_parameters)
    registered = st.sampled_from([*REGISTERED, *(d["id"] for d in DEFINITIONS)])
    return st.one_of(
        st.just(path_parameters), registered.map(lambda c: {**path_parameters, "class_id": c})
    )


@schema.hook
def flatmap_query(_: Any, query: dict[str, Any] | None) -> Any:
    """Half the time a window near the data: released, missing, open, unaligned or zero."""
    if not query or "window_start" not in query:
        return st.just(query)
    near = st.sampled_from([*WINDOWS, LAST_CLOSED + 10, LAST_CLOSED - 5, 0])
    return st.one_of(st.just(query), near.map(lambda w: {**query, "window_start": w}))


@schema.hook
def flatmap_case(_: Any, case: schemathesis.Case) -> Any:
    """A third of the PUTs of a class carry a valid definition of some shape, under its own
    id, and a third such a definition with one numeric field set to an extreme value."""
    if case.method.upper() != "PUT" or not case.operation.path.startswith("/v1/classes/"):
        return st.just(case)

    def valid(definition: dict[str, Any]) -> schemathesis.Case:
        put = case.derive(keep_auth=True)
        put.path_parameters = {**put.path_parameters, "class_id": definition["id"]}
        put.body = dict(definition)
        return put

    def extreme(pick: tuple[dict[str, Any], str, Any]) -> schemathesis.Case:
        definition, field, value = pick
        return valid({**definition, field: value})

    extremes = st.tuples(st.sampled_from(DEFINITIONS), st.sampled_from(NUMERIC_FIELDS), EXTREMES)
    return st.one_of(st.just(case), st.sampled_from(DEFINITIONS).map(valid), extremes.map(extreme))


@schema.hook
def flatmap_headers(_: Any, headers: dict[str, Any] | None) -> Any:
    """Mostly credentials of some role; sometimes an unknown key, or none."""
    credentials = st.sampled_from(
        [
            {"Authorization": "Bearer gov-key"},
            {"Authorization": "Bearer owner-key"},
            {"X-API-Key": "consumer-key"},
            {"Authorization": "Bearer gov-key"},
            {"Authorization": "Bearer owner-key"},
            {"Authorization": "Bearer consumer-key"},
            {"Authorization": "Bearer not-a-key"},
            {},
        ]
    )
    return credentials.map(lambda extra: {**(headers or {}), **extra})


def no_server_error(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """No 5xx, except the documented transient 503 ``no_data_yet`` (with Retry-After) when
    a class's data has not arrived yet; that one is a problem+json document too."""
    if response.status_code < 500:
        return None
    body = json.loads(response.content)
    assert response.status_code == 503 and body.get("code") == "no_data_yet", (
        f"server error {response.status_code}: {body}"
    )
    return None


def problem_json_for_client_errors(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every 4xx is application/problem+json carrying its status and a code."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.split(";")[0] == "application/problem+json", (
        f"{response.status_code} with content-type {content_type!r}"
    )
    body = json.loads(response.content)
    assert body["status"] == response.status_code and body["code"], body
    return None


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    suppress_health_check=[
        hypothesis.HealthCheck.too_slow,
        hypothesis.HealthCheck.filter_too_much,
    ],
)
def test_no_server_errors_and_client_errors_are_problems(case: schemathesis.Case) -> None:
    """No generated request, with or without credentials, gets a 5xx (but the documented
    503 while data is missing); every 4xx is a problem+json document."""
    case.call_and_validate(
        checks=[no_server_error, problem_json_for_client_errors],
        excluded_checks=[not_a_server_error],
    )
