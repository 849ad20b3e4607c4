"""The HTTP body of a release: one pydantic model, built only from a committed ledger entry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from dashboards_api.budget import from_micro
from dashboards_api.ledger import Commit
from dashboards_api.query_classes import QueryClass

DEFINITION_SEPARATOR = "|def="


class BudgetView(BaseModel):
    """A class's budget in one period (decimal strings of epsilon)."""

    model_config = ConfigDict(frozen=True)

    period: str
    epsilon_spent: str
    epsilon_remaining: str
    epsilon_budget: str
    resets_at: str


class UserLevel(BaseModel):
    """What the answer costs a subject per UTC day (None: not a per-day bound)."""

    model_config = ConfigDict(frozen=True)

    period: str = "UTC day"
    epsilon_per_subject_per_day: str | None
    product_total: str | None


class ReleaseBody(BaseModel):
    """A committed (or reused) release as the API answers it.

    The fields every release has are typed here; the answer's own fields (value, ci95,
    window, mechanism, and those of its kind: groups, running_total, daily_epsilon, ...)
    are the committed ledger row's, kept as they were stored (``extra``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    class_id: str
    aggregate: str
    data_version: str
    definition: str | None
    reused: bool
    epsilon_charged: str
    ledger_entry: int
    budget: BudgetView
    privacy_unit: str | None = None
    user_level: UserLevel | None = None
    budget_lasts_until: str | None = None

    @classmethod
    def of(
        cls,
        qc: QueryClass,
        commit: Commit,
        period: str | None = None,
        budget_micro: int | None = None,
        **view: Any,
    ) -> ReleaseBody:
        """The body of a committed (or reused) release; ``commit.spent_micro`` is the
        class's spend in ``period`` (default: the entry's own period) of ``budget_micro``
        (default: the class's declared budget); ``view``: the user-level fields."""
        entry = commit.entry
        # Built from the ledger's own row and our own fields: trusted, not validated again
        # (the cached path answers on the event loop).
        return cls.model_construct(
            **{
                **entry.answer,
                "class_id": qc.id,
                "aggregate": qc.aggregate,
                **split_version(entry.data_version),
                "reused": commit.reused,
                "epsilon_charged": "0" if commit.reused else str(from_micro(entry.cost_micro)),
                "ledger_entry": entry.id,
                "budget": budget_view(qc, period or entry.period, commit.spent_micro, budget_micro),
                **view,
            }
        )

    def as_json(self) -> dict[str, Any]:
        """The JSON-ready dict the routes send (the row's fields are JSON values already)."""
        return self.model_dump()


def budget_view(
    qc: QueryClass, period: str, spent_micro: int, budget_micro: int | None = None
) -> BudgetView:
    """Spent, remaining and reset time of ``qc``'s budget (``budget_micro``, default its
    declared one) in ``period``."""
    budget = qc.budget_micro if budget_micro is None else budget_micro
    resets = datetime.fromisoformat(period).replace(tzinfo=UTC) + timedelta(days=1)
    return BudgetView(
        period=period,
        epsilon_spent=str(from_micro(spent_micro)),
        epsilon_remaining=str(from_micro(max(budget - spent_micro, 0))),
        epsilon_budget=str(from_micro(budget)),
        resets_at=resets.isoformat(),
    )


def split_version(key: str) -> dict[str, str | None]:
    """A ledger key as ``data_version`` and ``definition`` (None: an entry made before
    answers were keyed on their class definition)."""
    version, _, definition = key.partition(DEFINITION_SEPARATOR)
    return {"data_version": version, "definition": definition or None}
