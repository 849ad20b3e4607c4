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
  declares none (None: such a product is refused at start-up).

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

from dashboards_api.budget import to_micro
from dashboards_api.errors import InvalidQueryClasses, PolicyLimitExceeded
from dashboards_api.query_classes import BudgetPerDay, EpsilonPerRelease, QueryClass


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
) -> None:
    """Refuse to start when a data product has no daily total (neither declared nor a policy
    default), a declared total or a class is above the policy's caps."""
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
    except PolicyLimitExceeded as exc:
        raise InvalidQueryClasses(exc.detail) from exc
