"""Test-only uvicorn factory: the real API over a fake window source and a Postgres ledger.

Started as ``uvicorn tests.dashboards_api.race_app:create --factory`` by the ledger race
tests, one process per API replica. Configured through the environment the test passes:
``RACE_LEDGER_URL`` (the Postgres ledger), ``RACE_BUDGET`` (the class's daily budget in
epsilon; one release costs 1) and ``RACE_WINDOWS`` (how many closed windows have data).
The clock is frozen at ``NOW`` so every replica sees the same windows and budget period.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from fastapi import FastAPI

from dashboards_api.ledger import PostgresLedger
from dashboards_api.main import create_app
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


def create() -> FastAPI:
    """One API replica: frozen clock, data for ``RACE_WINDOWS`` windows, shared ledger."""
    ledger = PostgresLedger(os.environ["RACE_LEDGER_URL"])
    windows = {w: 1_000 + i for i, w in enumerate(closed_windows(int(os.environ["RACE_WINDOWS"])))}
    service = ReleaseService(
        classes={c: race_class(c, os.environ["RACE_BUDGET"]) for c in CLASS_IDS},
        sources={"shop": FakeWindowSource(windows)},
        ledger=ledger,
        window_seconds=WINDOW_SECONDS,
        grace_seconds=GRACE_SECONDS,
        lookback_windows=1,
        contracts=load_contracts(),
        clock=lambda: NOW,
        # A product total above every class's budget together: each test races one class.
        product_budgets={"shop.orders": ProductBudget(budget_per_day=Decimal(1_000))},
    )
    app = create_app(service)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        ledger.close()

    app.router.lifespan_context = lifespan
    return app
