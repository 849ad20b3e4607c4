"""The per-window class set and the policy caps the API shipped before daily classes.

Tests of the per-window, event-level and continual release paths (reuse, fall-back,
suppression, 429s, live pushes, policy versions) keep exercising them with these classes
(``window_classes/*.yaml``: the former shipped files) under the former governance caps, as
a governance ``PUT /v1/policy`` may set them. The shipped classes and defaults are tested in
``releases/test_daily.py``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from dashboards_api.policy import GovernancePolicy, PolicyCell
from dashboards_api.query_classes import (
    ProductBudget,
    QueryClass,
    load_product_budgets,
    load_query_classes,
)

WINDOW_CLASSES_DIR = Path(__file__).with_name("window_classes")
RAISED_POLICY = GovernancePolicy(
    max_epsilon_per_release=Decimal(10),
    max_class_budget_per_day=Decimal(1_000),
    max_product_budget_per_day=Decimal(1_000),
    default_product_budget_per_day=Decimal(100),
)


def window_classes() -> dict[str, QueryClass]:
    """The per-window, event-level (1-minute) and continual test classes, by id."""
    return dict(load_query_classes(WINDOW_CLASSES_DIR))


def window_budgets() -> dict[str, ProductBudget]:
    """Their product totals (shop.orders 600, support.tickets and web.page_views 200)."""
    return dict(load_product_budgets(WINDOW_CLASSES_DIR))


def raised_policy() -> PolicyCell:
    """A policy cell holding the raised caps (a fresh cell per service)."""
    return PolicyCell(RAISED_POLICY)
