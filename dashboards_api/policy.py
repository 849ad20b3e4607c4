"""The platform-wide governance policy: limits no domain owner's class can exceed.

The governance role sets it (``PUT /v1/policy``); every version is appended to the ledger
database's ``policy_versions`` table and the newest applies on every replica (reloaded with
the run-time classes). Until governance stores one, the policy of the API settings
(``PRIVMESH_API_POLICY``) applies. It caps:

* ``max_epsilon_per_release``: the privacy loss of any one release (of a continual class:
  of its whole horizon);
* ``max_class_budget_per_day``: what any one class may spend in a UTC day;
* ``max_product_budget_per_day``: the daily total of every data product (over its classes);
* ``default_product_budget_per_day``: the total of a product whose query-class file
  declares none (None: such a product is refused at start-up);
* ``default_product_reserve_per_day``: the part of a product's total that no class may be
  allocated, kept for planning releases (the bound advisor), where the query-class file
  declares no ``reserve_per_day``: the classes of a product with a reserve are refused
  together above its total minus its reserve (default 0: no reserve, no such check).

The defaults are what a privacy officer signs for every product: epsilon 2 per subject per
UTC day (pure DP), no class and no release above it; a governance ``PUT`` may raise them.

A class above a limit is refused when an owner stores it (422 naming the limit); a class
that became too expensive after a policy change is refused at release time, before any
noise is drawn or anything is committed; budgets above a cap are read as the cap.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dashboards_api.budget import from_micro, to_micro
from dashboards_api.errors import InvalidQueryClasses, PolicyLimitExceeded
from dashboards_api.query_classes import (
    BudgetPerDay,
    ClassBudget,
    EpsilonPerRelease,
    ProductBudget,
    QueryClass,
)


class GovernancePolicy(BaseModel):
    """Caps on epsilon per release, per class per day and per product per day."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon_per_release: EpsilonPerRelease = Field(
        default=Decimal(2),
        description=(
            "Most privacy loss one release (a continual class: one horizon; a daily class: "
            "its whole UTC day) may cost."
        ),
    )
    max_class_budget_per_day: BudgetPerDay = Field(
        default=Decimal(2), description="Most one query class may spend in a UTC day."
    )
    max_product_budget_per_day: BudgetPerDay = Field(
        default=Decimal(2),
        description=(
            "Most all classes of a product may spend in a UTC day: the user-level loss of "
            "one subject's day (pure epsilon, sequential composition over the classes)."
        ),
    )
    default_product_budget_per_day: BudgetPerDay | None = Field(
        default=Decimal(2),
        description=(
            "Daily total of a data product whose query-class file declares none "
            "(None: start-up refuses such a product)."
        ),
    )

    default_product_reserve_per_day: ClassBudget = Field(
        default=Decimal(0),
        description=(
            "Epsilon per subject per UTC day of a product's total kept for planning releases "
            "(the bound advisor) where its query-class file declares no reserve_per_day; "
            "classes are allocated at most the total minus the reserve."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_epsilon_per_release > self.max_class_budget_per_day:
            raise ValueError(
                "max_epsilon_per_release must not exceed max_class_budget_per_day "
                "(no class could release once)"
            )
        default = self.default_product_budget_per_day
        if default is not None and default > self.max_product_budget_per_day:
            raise ValueError(
                "default_product_budget_per_day must not exceed max_product_budget_per_day"
            )
        return self

    @property
    def max_epsilon_micro(self) -> int:
        """Cap on one release, micro-epsilon."""
        return to_micro(self.max_epsilon_per_release)

    @property
    def max_class_micro(self) -> int:
        """Cap on one class's day, micro-epsilon."""
        return to_micro(self.max_class_budget_per_day)

    @property
    def max_product_micro(self) -> int:
        """Cap on one product's day, micro-epsilon."""
        return to_micro(self.max_product_budget_per_day)

    def class_budget_micro(self, qc: QueryClass) -> int:
        """``qc``'s daily budget in micro-epsilon, capped by this policy."""
        return min(qc.budget_micro, self.max_class_micro)

    def product_total_micro(self, declared_micro: int | None) -> int | None:
        """A data product's daily total in micro-epsilon: ``declared_micro`` (its declared
        total), else this policy's default, capped by this policy (None: neither)."""
        if declared_micro is not None:
            total = declared_micro
        elif self.default_product_budget_per_day is not None:
            total = to_micro(self.default_product_budget_per_day)
        else:
            return None
        return min(total, self.max_product_micro)

    def product_reserve_micro(self, declared_micro: int | None, total_micro: int) -> int:
        """A product's planning reserve in micro-epsilon: ``declared_micro``, else this
        policy's default, at most the product's total ``total_micro``."""
        reserve = (
            to_micro(self.default_product_reserve_per_day)
            if declared_micro is None
            else declared_micro
        )
        return min(reserve, total_micro)

    def check_allocation(
        self, product: str, total_micro: int, reserve_micro: int, allocated_micro: int
    ) -> None:
        """Refuse class allocations of ``product`` above its total minus its reserve, when
        it has one (without a reserve the product's total alone bounds what its classes
        spend together, however much they are allocated)."""
        if reserve_micro > 0 and allocated_micro > total_micro - reserve_micro:
            raise PolicyLimitExceeded(
                f"data product {product!r}: its classes are allocated "
                f"{from_micro(allocated_micro)} a day, above its total {from_micro(total_micro)} "
                f"minus the {from_micro(reserve_micro)} reserved for planning (the bound "
                "advisor); lower a class's budget_per_day or the product's reserve_per_day",
                limit="product_reserve_per_day",
                limit_value=str(from_micro(total_micro - reserve_micro)),
            )

    def check_class(self, qc: QueryClass) -> None:
        """Refuse ``qc`` when its epsilon or daily budget is above this policy's caps."""
        if qc.cost_micro > self.max_epsilon_micro:
            raise PolicyLimitExceeded(
                f"class {qc.id!r}: epsilon_per_release {qc.epsilon_per_release} is above the "
                f"governance policy's max_epsilon_per_release {self.max_epsilon_per_release}",
                limit="max_epsilon_per_release",
                limit_value=str(self.max_epsilon_per_release),
            )
        if qc.budget_micro > self.max_class_micro:
            raise PolicyLimitExceeded(
                f"class {qc.id!r}: budget_per_day {qc.budget_per_day} is above the governance "
                f"policy's max_class_budget_per_day {self.max_class_budget_per_day}",
                limit="max_class_budget_per_day",
                limit_value=str(self.max_class_budget_per_day),
            )

    def check_product_total(self, product: str, budget_micro: int) -> None:
        """Refuse a declared product total above ``max_product_budget_per_day``."""
        if budget_micro > self.max_product_micro:
            raise PolicyLimitExceeded(
                f"data product {product!r}: its daily total is above the governance policy's "
                f"max_product_budget_per_day {self.max_product_budget_per_day}",
                limit="max_product_budget_per_day",
                limit_value=str(self.max_product_budget_per_day),
            )


@dataclass
class PolicyCell:
    """The policy in force on this replica and the ledger sequence it came from (0: the
    settings' policy). Replaced whole, never mutated, so a release reads one version."""

    current: GovernancePolicy = field(default_factory=GovernancePolicy)
    seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def replace(self, policy: GovernancePolicy, seq: int) -> None:
        """Apply ``policy`` (ledger version ``seq``) unless a newer one is in force."""
        with self._lock:
            if seq >= self.seq:
                self.current, self.seq = policy, seq


def check_at_start(
    policy: GovernancePolicy,
    classes: dict[str, QueryClass],
    product_totals: dict[str, int],
    products: list[str],
    product_reserves: dict[str, int | None] | None = None,
) -> None:
    """Refuse to start when a data product has no daily total (neither declared nor a policy
    default), a declared total or a class is above the policy's caps, or a product's classes
    are allocated more than its total minus its planning reserve (``product_reserves``: the
    declared ones; the policy's default for the others)."""
    for key in products:
        if key not in product_totals and policy.default_product_budget_per_day is None:
            raise InvalidQueryClasses(
                f"data product {key!r} has no daily total: declare one under 'products:' in "
                "its domain's query-class file, or set the policy's "
                "default_product_budget_per_day"
            )
    try:
        for key, micro in product_totals.items():
            policy.check_product_total(key, micro)
        for qc in classes.values():
            policy.check_class(qc)
        for key in products:
            total = policy.product_total_micro(product_totals.get(key))
            if total is None:
                continue
            reserve = policy.product_reserve_micro((product_reserves or {}).get(key), total)
            allocated = allocated_micro(policy, classes, key)
            policy.check_allocation(key, total, reserve, allocated)
    except PolicyLimitExceeded as exc:
        raise InvalidQueryClasses(exc.detail) from exc


def reserve_micro(
    policy: GovernancePolicy, budget: ProductBudget | None, total_micro: int | None
) -> int:
    """A product's planning reserve, micro-epsilon: its declared ``reserve_per_day``, else
    ``policy``'s default, at most its total (0 without a total)."""
    if total_micro is None:
        return 0
    declared = None if budget is None else budget.reserve_micro
    return policy.product_reserve_micro(declared, total_micro)


def allocated_micro(
    policy: GovernancePolicy,
    classes: dict[str, QueryClass],
    product: str,
    leave_out: str | None = None,
) -> int:
    """What ``product``'s classes (but ``leave_out``) are allocated a day, micro-epsilon
    (each class's budget_per_day, capped by ``policy``)."""
    return sum(
        policy.class_budget_micro(qc)
        for qc in classes.values()
        if f"{qc.domain}.{qc.product}" == product and qc.id != leave_out
    )
