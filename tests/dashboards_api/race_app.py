"""Test-only uvicorn factory: the real API over a fake window source and a Postgres ledger.

Started as ``uvicorn tests.dashboards_api.race_app:create --factory`` by the ledger race
tests, one process per API replica. Configured through the environment the test passes:
``RACE_LEDGER_URL`` (the Postgres ledger), ``RACE_BUDGET`` (the class's daily budget in
epsilon; one release costs 1) and ``RACE_WINDOWS`` (how many closed windows have data).
The clock is frozen at ``NOW`` so every replica sees the same windows and budget period.

Daily classes race too: ``DAILY_IDS`` are daily order counts of ``web.page_views``, each
paying ``EPSILON`` for its day, whose product total (``DAILY_TOTAL``) pays only two of them.
The governance policy is raised (a governance PUT could) so the window classes' budgets of
``RACE_BUDGET`` fit it; the daily product keeps the default total.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from fastapi import FastAPI

from dashboards_api.ledger import PostgresLedger
from dashboards_api.main import create_app
from dashboards_api.policy import GovernancePolicy, PolicyCell
from dashboards_api.query_classes import ProductBudget, QueryClass
from dashboards_api.releases import ReleaseService
from domains.registry import load_contracts
from tests.fakes import FakeWindowSource

NOW = 1_795_427_055.0  # 2026-11-23T09:44:15Z, 5 s into a 10 s window
WINDOW_SECONDS = 10
GRACE_SECONDS = 2
CLASS_IDS = tuple(f"shop.orders.race_{i}" for i in range(4))  # one per test: own budgets
EPSILON = "1"
PERIOD = "2026-11-23"
DAILY_IDS = tuple(f"web.page_views.race_daily_{i}" for i in range(4))
DAILY_TOTAL = "2"  # web.page_views' total: two of the four daily classes can pay their day


def closed_windows(count: int) -> list[int]:
    """Starts of the ``count`` newest closed windows at ``NOW``, newest first."""
    latest = int(NOW) - GRACE_SECONDS
    last_closed = latest - latest % WINDOW_SECONDS - WINDOW_SECONDS
    return [last_closed - WINDOW_SECONDS * i for i in range(count)]


def race_class(class_id: str, budget: str) -> QueryClass:
    """A distinct-subject count costing ``EPSILON`` a release, ``budget`` a day."""
    return QueryClass.model_validate(
        {
            "id": class_id,
            "title": "Distinct customers (ledger race test)",
            "domain": "shop",
            "product": "orders",
            "aggregate": "count_distinct_subjects",
            "epsilon_per_release": EPSILON,
            "budget_per_day": budget,
        }
    )


def daily_class(class_id: str) -> QueryClass:
    """A daily count of page views paying ``EPSILON`` for its UTC day."""
    return QueryClass.model_validate(
        {
            "id": class_id,
            "title": "Page views (daily ledger race test)",
            "domain": "web",
            "product": "page_views",
            "aggregate": "count_records",
            "release": "daily",
            "privacy_unit": "subject_day",
            "epsilon_per_release": EPSILON,
            "budget_per_day": EPSILON,
        }
    )


def daily_rows(count: int) -> dict[int, dict[str, object]]:
    """Rows of the ``count`` newest closed windows with the per-day bounds applied."""
    return {
        w: {
            "distinct_subjects": 40,
            "events": 100 + i,
            "new_subjects_hour": 1,
            "new_subjects_period": 1,
            "max_records_per_period": 10,
            "max_windows_per_period": 10,
            "contribution_bound": 10,
        }
        for i, w in enumerate(closed_windows(count))
    }


def create() -> FastAPI:
    """One API replica: frozen clock, data for ``RACE_WINDOWS`` windows, shared ledger."""
    ledger = PostgresLedger(os.environ["RACE_LEDGER_URL"])
    windows = {w: 1_000 + i for i, w in enumerate(closed_windows(int(os.environ["RACE_WINDOWS"])))}
    count = int(os.environ["RACE_WINDOWS"])
    classes = {c: race_class(c, os.environ["RACE_BUDGET"]) for c in CLASS_IDS}
    classes |= {c: daily_class(c) for c in DAILY_IDS}
    raised = Decimal(1_000)
    service = ReleaseService(
        classes=classes,
        sources={
            "shop": FakeWindowSource(windows),
            "web": FakeWindowSource(rows=daily_rows(count)),
        },
        ledger=ledger,
        window_seconds=WINDOW_SECONDS,
        grace_seconds=GRACE_SECONDS,
        lookback_windows=1,
        contracts=load_contracts(),
        clock=lambda: NOW,
        # A product total above every class's budget together: each test races one class.
        product_budgets={
            "shop.orders": ProductBudget(budget_per_day=raised),
            "web.page_views": ProductBudget(budget_per_day=Decimal(DAILY_TOTAL)),
        },
        policy=PolicyCell(
            GovernancePolicy(
                max_class_budget_per_day=raised,
                max_product_budget_per_day=raised,
                default_product_budget_per_day=Decimal(DAILY_TOTAL),
            )
        ),
    )
    app = create_app(service)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        ledger.close()

    app.router.lifespan_context = lifespan
    return app
