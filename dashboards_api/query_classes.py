"""Pre-registered query classes: the only questions the API answers."""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dashboards_api.budget import to_micro
from dashboards_api.errors import InvalidQueryClasses

CLASSES_DIR = Path(__file__).with_name("query_classes")


class QueryClass(BaseModel):
    """One registered query: aggregate, window, mechanism and budget.

    ``epsilon_per_release`` is the privacy loss of one release, protecting every
    pseudonymous subject's presence in the window; ``budget_per_day`` caps the total
    loss of all releases of the class in one UTC day.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$", max_length=96)]
    title: str
    domain: str
    product: str
    aggregate: Literal["count_distinct_subjects", "count_records", "bounded_sum"]
    measure: str | None = Field(
        default=None,
        description="The bounded numeric contract field a bounded_sum adds up.",
    )
    window: Literal["last_closed"] = "last_closed"
    mechanism: Literal["discrete_laplace"] = "discrete_laplace"
    epsilon_per_release: Decimal
    budget_per_day: Decimal

    @model_validator(mode="after")
    def _measure_fits(self) -> Self:
        if self.aggregate == "bounded_sum" and self.measure is None:
            raise ValueError(f"class {self.id!r}: a bounded_sum needs a 'measure' field")
        if self.aggregate != "bounded_sum" and self.measure is not None:
            raise ValueError(f"class {self.id!r}: only a bounded_sum takes a 'measure'")
        return self

    @model_validator(mode="after")
    def _budgeted(self) -> Self:
        cost = to_micro(self.epsilon_per_release)
        budget = to_micro(self.budget_per_day)
        if cost <= 0:
            raise ValueError(f"class {self.id!r}: epsilon_per_release must be > 0")
        if budget < cost:
            raise ValueError(
                f"class {self.id!r}: budget_per_day {self.budget_per_day} is smaller than "
                f"one release ({self.epsilon_per_release})"
            )
        return self

    @property
    def cost_micro(self) -> int:
        """Cost of one release, micro-epsilon."""
        return to_micro(self.epsilon_per_release)

    @property
    def budget_micro(self) -> int:
        """Daily budget, micro-epsilon."""
        return to_micro(self.budget_per_day)


@cache
def load_query_classes(directory: Path = CLASSES_DIR) -> dict[str, QueryClass]:
    """All query classes under ``directory`` keyed by id."""
    classes: dict[str, QueryClass] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for item in raw.get("classes", []):
                qc = QueryClass.model_validate(item)
                if qc.id in classes:
                    raise InvalidQueryClasses(f"{path}: class {qc.id!r} declared twice")
                classes[qc.id] = qc
        except (OSError, yaml.YAMLError, ValidationError, ValueError) as exc:
            raise InvalidQueryClasses(f"{path}: {exc}") from exc
    return classes
