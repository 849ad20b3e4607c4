"""Pre-registered query classes: the only questions the API answers.

Each domain folder declares its classes (``<domain>/query_classes.yaml`` or
``<domain>/query_classes/*.yaml``, see ``domains.folders``); tests may load a flat folder.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dashboards_api.budget import to_micro
from dashboards_api.errors import InvalidQueryClasses
from domains.contract import DataProduct
from domains.folders import domain_set

Aggregate = Literal[
    "count_distinct_subjects", "count_records", "bounded_sum", "mean", "histogram", "quantile"
]
# Aggregates the stream processor keeps per window (online rows); the others, and any
# grouped or hour/day-window class, are computed from the domain's pseudonymised events.
WINDOW_AGGREGATES = frozenset({"count_distinct_subjects", "count_records", "bounded_sum"})
MEASURED = frozenset({"bounded_sum", "mean", "quantile"})
EVENT_WINDOWS = {"1m": 60, "1h": 3_600, "1d": 86_400}
# Aggregates a ``release: daily`` class may have (a mean is the ratio of two paid ones).
DAILY_AGGREGATES = frozenset({"count_distinct_subjects", "count_records", "bounded_sum", "mean"})
# The resolutions of a daily structure, finest first (``dashboards_api.hierarchy``):
# the newest stream window, minute, hour, "today so far" and the sliding last 24 hours.
Resolution = Literal["window", "1m", "1h", "today", "24h"]
RESOLUTION_ORDER: tuple[str, ...] = ("window", "1m", "1h", "today", "24h")
# What each daily aggregate can mean at each resolution. A distinct count sums subjects new
# to a span: per hour (the processor's new_subjects_hour) or per day (new_subjects_period);
# a sum of either over a window, a minute or 24 h is not a distinct count, so those are
# refused rather than released with a misleading meaning.
DAILY_RESOLUTIONS: dict[str, tuple[str, ...]] = {
    "count_records": RESOLUTION_ORDER,
    "bounded_sum": RESOLUTION_ORDER,
    "mean": RESOLUTION_ORDER,
    "count_distinct_subjects": ("1h", "today"),
}

# Hard limits checked at the edge, whatever the governance policy says (the policy may only
# be tighter): every epsilon is a decimal with at most 6 places (integer micro-epsilon in the
# ledger), one release at most MAX_EPSILON_PER_RELEASE (above it OpenDP's discrete Laplace
# has no finite accuracy at sensitivity 1), a daily budget at most MAX_BUDGET_PER_DAY (its
# micro-epsilon fits the ledger's 64-bit columns with room for a day's sums).
MAX_EPSILON_PER_RELEASE = Decimal(100)
MAX_BUDGET_PER_DAY = Decimal(1_000_000)
EpsilonPerRelease = Annotated[
    Decimal, Field(gt=0, le=MAX_EPSILON_PER_RELEASE, decimal_places=6, allow_inf_nan=False)
]
# A class's epsilon: > 0, except a daily mean (post-processing of two paid classes), whose
# 0 is checked by the class's validator.
ClassEpsilon = Annotated[
    Decimal, Field(ge=0, le=MAX_EPSILON_PER_RELEASE, decimal_places=6, allow_inf_nan=False)
]
ClassBudget = Annotated[
    Decimal, Field(ge=0, le=MAX_BUDGET_PER_DAY, decimal_places=6, allow_inf_nan=False)
]
BudgetPerDay = Annotated[
    Decimal, Field(gt=0, le=MAX_BUDGET_PER_DAY, decimal_places=6, allow_inf_nan=False)
]
# Fields that do not shape a released answer (left out of a class's definition hash).
_NOT_SHAPING = frozenset({"title", "budget_per_day"})


class Accuracy(BaseModel):
    """What a daily class promises: its 95% interval's half-width at most ``relative`` times
    the value at ``resolution`` (the automatic resolution picks the finest that meets it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    relative: Annotated[float, Field(gt=0, le=10)] = Field(
        description="Largest 95% half-width / |value| the class accepts (0.05: within 5%)."
    )
    resolution: Resolution = Field(description="The resolution the promise is made at.")


class QueryClass(BaseModel):
    """One registered query: aggregate, window, mechanism and budget.

    ``epsilon_per_release`` is the privacy loss of one release, protecting every
    pseudonymous subject's presence in the window (a ``continual`` class: in all
    ``horizon_windows`` refreshes of one horizon together); ``budget_per_day`` caps
    the total loss of all releases of the class in one UTC day.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$", max_length=96)]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    domain: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    product: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    aggregate: Aggregate
    measure: str | None = Field(
        default=None,
        description="The bounded numeric contract field a sum, mean or quantile reads.",
    )
    group_by: str | None = Field(
        default=None,
        description=(
            "A non-personal contract field with allowed_values: its public categories are "
            "the groups, every one released (missing ones as 0), so the key set leaks nothing."
        ),
    )
    window: Literal["last_closed", "1m", "1h", "1d"] = Field(
        default="last_closed",
        description=(
            "last_closed: the stream processor's window; 1m/1h/1d: closed UTC minutes, "
            "hours or days (event-level, released once their events are stored)."
        ),
    )
    release: Literal["per_window", "continual", "daily"] = Field(
        default="per_window",
        description=(
            "continual: a running total over horizon_windows stream windows released "
            "after every window with the binary-tree mechanism, for one epsilon per horizon; "
            "daily: one hierarchical structure per UTC day over the stream windows, paid "
            "once a day, from which every resolution is post-processing."
        ),
    )
    resolutions: list[Resolution] | None = Field(
        default=None,
        description=(
            "Daily classes: the resolutions answered (default: every one that has a "
            "meaning for the aggregate)."
        ),
    )
    accuracy: Accuracy | None = Field(
        default=None, description="Daily classes: the accuracy the class promises."
    )
    numerator: str | None = Field(
        default=None, description="A daily mean: the id of the daily bounded_sum it divides."
    )
    denominator: str | None = Field(
        default=None, description="A daily mean: the id of the daily count_records it divides by."
    )
    horizon_windows: Annotated[int, Field(ge=2, le=1_048_576)] | None = None
    privacy_unit: Literal["subject", "subject_window", "subject_day"] = Field(
        default="subject",
        description=(
            "What one release's epsilon protects: a subject's whole contribution to the "
            "released window (subject), a subject's whole UTC day (subject_day: daily "
            "classes, and event classes over a whole day), or a subject's contribution to "
            "any ONE stream window (subject_window: the continual-observation model; a "
            "subject active in m windows of a horizon is protected at m * epsilon). "
            "Continual classes must opt in to it."
        ),
    )
    max_records_per_subject: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None,
        description=(
            "Event-level classes: records one subject may contribute to a window (default: "
            "the contract's contribution.max_records_per_period)."
        ),
    )
    quantile: Annotated[float, Field(gt=0, lt=1)] | None = None
    candidates: list[int] | None = Field(
        default=None, description="Quantile classes: the public candidate values, ascending."
    )
    suppress_below: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None,
        description="Released values (or group counts) below this noisy count are withheld.",
    )
    mechanism: Literal["discrete_laplace", "exponential"] | None = None
    epsilon_per_release: ClassEpsilon = Field(
        description=(
            "Privacy loss of one release (a continual class: of its whole horizon; a daily "
            "class: of its whole UTC day; a daily mean: 0, it spends nothing)."
        )
    )
    budget_per_day: ClassBudget = Field(
        description="The most the class may spend in one UTC day (micro-epsilon exact)."
    )

    def definition_hash(self, product: DataProduct | None = None) -> str:
        """A short hash of everything that shapes this class's answer: aggregate, measure
        (and the contract bounds and type it is clamped to), group-by, window, release,
        horizon, bounds, suppression, mechanism, epsilon and privacy unit. Answers are
        reused only under the same hash, so a redefinition never serves an older value."""
        shape = self.model_dump(mode="json", exclude=set(_NOT_SHAPING))
        shape["mechanism"] = self.noise
        shape["epsilon_per_release"] = to_micro(self.epsilon_per_release)
        if product is not None:
            # The per-day bounds the processor applies and the clamps (sensitivities).
            shape["contribution"] = product.contribution.model_dump(mode="json")
            for role in ("measure", "group_by"):
                name = shape.get(role)
                spec = product.field(name) if name else None
                if spec is not None:
                    shape[f"{role}_contract"] = {
                        "type": spec.type.value,
                        "bounds": None if spec.bounds is None else spec.bounds.model_dump(),
                        "allowed_values": spec.allowed_values,
                    }
        text = json.dumps(shape, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def source(self) -> Literal["windows", "events"]:
        """Where the exact statistic comes from: online window rows or offline events."""
        if self.release == "daily":
            return "windows"  # every daily class (a mean too: two paid structures) reads windows
        if (
            self.aggregate in WINDOW_AGGREGATES
            and self.group_by is None
            and self.window == "last_closed"
        ):
            return "windows"
        return "events"

    @property
    def noise(self) -> Literal["discrete_laplace", "exponential"]:
        """The mechanism actually used (the exponential mechanism for quantiles)."""
        return "exponential" if self.aggregate == "quantile" else "discrete_laplace"

    @model_validator(mode="after")
    def _shape_fits(self) -> Self:
        name = f"class {self.id!r}"
        if not self.id.startswith(f"{self.domain}."):
            raise ValueError(
                f"{name}: a class id starts with its domain's name and a dot "
                f"({self.domain}.<product>.<name>)"
            )
        derived = self.derived_mean
        if self.aggregate in MEASURED and self.measure is None and not derived:
            raise ValueError(f"{name}: a {self.aggregate} needs a 'measure' field")
        if self.aggregate not in MEASURED and self.measure is not None:
            raise ValueError(f"{name}: a {self.aggregate} takes no 'measure'")
        if self.aggregate == "histogram" and self.group_by is None:
            raise ValueError(f"{name}: a histogram needs 'group_by' (a public key)")
        if self.aggregate == "quantile":
            if self.quantile is None or not self.candidates or len(self.candidates) < 2:
                raise ValueError(f"{name}: a quantile needs 'quantile' and >= 2 'candidates'")
            if sorted(set(self.candidates)) != self.candidates:
                raise ValueError(f"{name}: 'candidates' must be strictly ascending")
            if self.group_by is not None:
                raise ValueError(f"{name}: grouped quantiles are not supported")
        elif self.quantile is not None or self.candidates is not None:
            raise ValueError(f"{name}: only a quantile takes 'quantile' and 'candidates'")
        if self.mechanism is not None and self.mechanism != self.noise:
            raise ValueError(f"{name}: a {self.aggregate} uses {self.noise}, not {self.mechanism}")
        return self

    @property
    def derived_mean(self) -> bool:
        """A daily mean: the ratio of two paid daily classes (post-processing, no cost)."""
        return self.release == "daily" and self.aggregate == "mean"

    @property
    def answered_resolutions(self) -> tuple[str, ...]:
        """The resolutions a daily class answers, finest first (() for other classes)."""
        if self.release != "daily":
            return ()
        chosen: tuple[str, ...] = tuple(self.resolutions or DAILY_RESOLUTIONS[self.aggregate])
        return tuple(r for r in RESOLUTION_ORDER if r in chosen)

    @model_validator(mode="after")
    def _daily_fits(self) -> Self:
        name = f"class {self.id!r}"
        daily_only = ("resolutions", "accuracy", "numerator", "denominator")
        if self.release != "daily":
            if any(getattr(self, f) is not None for f in daily_only):
                raise ValueError(f"{name}: {', '.join(daily_only)} are for release: daily")
            if self.privacy_unit == "subject_day" and self.window != "1d":
                raise ValueError(
                    f"{name}: privacy_unit subject_day is for daily classes and event classes "
                    "over a whole UTC day (window: 1d)"
                )
            return self
        if self.aggregate not in DAILY_AGGREGATES:
            raise ValueError(
                f"{name}: release daily is for {', '.join(sorted(DAILY_AGGREGATES))}; a "
                f"{self.aggregate} is released per day as an event class (window: 1d)"
            )
        if self.group_by is not None or self.window != "last_closed":
            raise ValueError(f"{name}: a daily class reads the stream windows, ungrouped")
        if self.privacy_unit != "subject_day":
            raise ValueError(
                f"{name}: a daily class protects each subject's whole UTC day; declare "
                "privacy_unit: subject_day"
            )
        meaningful = DAILY_RESOLUTIONS[self.aggregate]
        refused = [r for r in self.resolutions or () if r not in meaningful]
        if refused:
            raise ValueError(
                f"{name}: a daily {self.aggregate} has no meaning at {', '.join(refused)} "
                f"(it answers {', '.join(meaningful)}): a distinct count is a sum of subjects "
                "new to an hour or to the day, so a window, a minute or a sliding 24 h of it "
                "counts no distinct subjects"
            )
        if self.resolutions is not None and not self.resolutions:
            raise ValueError(f"{name}: 'resolutions' needs at least one resolution")
        if self.accuracy is not None and self.accuracy.resolution not in self.answered_resolutions:
            raise ValueError(
                f"{name}: accuracy is promised at {self.accuracy.resolution}, which the class "
                f"does not answer ({', '.join(self.answered_resolutions)})"
            )
        self._check_mean(name)
        return self

    def _check_mean(self, name: str) -> None:
        """A daily mean names its two paid classes and costs nothing itself."""
        if self.derived_mean:
            if self.numerator is None or self.denominator is None:
                raise ValueError(
                    f"{name}: a daily mean names its 'numerator' (a daily bounded_sum) and "
                    "'denominator' (a daily count_records) of the same product"
                )
            if self.epsilon_per_release != 0 or self.budget_per_day != 0:
                raise ValueError(
                    f"{name}: a daily mean is post-processing of its numerator and "
                    'denominator; declare epsilon_per_release and budget_per_day "0"'
                )
            if self.suppress_below is not None:
                raise ValueError(f"{name}: a daily mean takes no suppress_below")
        elif self.numerator is not None or self.denominator is not None:
            raise ValueError(f"{name}: only a daily mean takes 'numerator' and 'denominator'")

    @model_validator(mode="after")
    def _source_fits(self) -> Self:
        name = f"class {self.id!r}"
        if self.suppress_below is not None and self.aggregate in ("bounded_sum", "quantile"):
            raise ValueError(
                f"{name}: suppression compares a noisy count with the threshold; a "
                f"{self.aggregate} releases no count (suppress on a count class instead)"
            )
        if self.source == "windows" and self.max_records_per_subject is not None:
            raise ValueError(
                f"{name}: a window class uses the stream processor's contribution bound; "
                "drop 'max_records_per_subject'"
            )
        if self.release == "continual":
            if self.source != "windows" or self.aggregate == "count_distinct_subjects":
                raise ValueError(
                    f"{name}: continual release is for running totals of window counts or "
                    "sums (count_records, bounded_sum), not distinct subjects or event classes"
                )
            if self.horizon_windows is None:
                raise ValueError(f"{name}: continual release needs 'horizon_windows'")
            if self.privacy_unit != "subject_window":
                raise ValueError(
                    f"{name}: continual release protects a subject's contribution to one "
                    "window; declare privacy_unit: subject_window to acknowledge it"
                )
        elif self.horizon_windows is not None or self.privacy_unit == "subject_window":
            raise ValueError(
                f"{name}: 'horizon_windows' and privacy_unit subject_window are only for "
                "continual release"
            )
        return self

    @model_validator(mode="after")
    def _budgeted(self) -> Self:
        cost = to_micro(self.epsilon_per_release)
        budget = to_micro(self.budget_per_day)
        if self.derived_mean:
            return self  # checked by _daily_fits: a daily mean costs 0
        if cost <= 0:
            raise ValueError(f"class {self.id!r}: epsilon_per_release must be > 0")
        if budget <= 0:
            raise ValueError(f"class {self.id!r}: budget_per_day must be > 0")
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


class ProductBudget(BaseModel):
    """The total daily budget of one data product, over all its classes together, and the
    part of it no class may be allocated (``reserve_per_day``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_per_day: BudgetPerDay
    reserve_per_day: ClassBudget | None = Field(
        default=None,
        description=(
            "Epsilon per subject per UTC day of the total kept for planning releases (the "
            "bound advisor): the product's classes together may be allocated at most the "
            "total minus it (None: the governance policy's default reserve)."
        ),
    )

    @model_validator(mode="after")
    def _reserve_within_total(self) -> Self:
        if self.reserve_per_day is not None and self.reserve_per_day > self.budget_per_day:
            raise ValueError(
                f"reserve_per_day {self.reserve_per_day} exceeds budget_per_day "
                f"{self.budget_per_day}: the reserve is part of the total"
            )
        return self

    @property
    def budget_micro(self) -> int:
        """Daily total, micro-epsilon."""
        return to_micro(self.budget_per_day)

    @property
    def reserve_micro(self) -> int | None:
        """Declared planning reserve, micro-epsilon (None: the policy's default)."""
        return None if self.reserve_per_day is None else to_micro(self.reserve_per_day)


def privacy_unit_of(qc: QueryClass) -> str:
    """What ``qc``'s epsilon protects: ``subject_day`` for daily classes and event classes
    over a whole UTC day (their window is the privacy period), else the declared unit."""
    if qc.release == "daily" or qc.window == "1d":
        return "subject_day"
    return qc.privacy_unit


def class_files(directory: Path | None = None) -> tuple[Path, ...]:
    """The ``*.yaml`` files of ``directory``, else those of the configured domain folders."""
    if directory is not None:
        return tuple(sorted(directory.glob("*.yaml")))
    return domain_set().class_files


def load_query_classes(directory: Path | None = None) -> dict[str, QueryClass]:
    """All query classes (of ``directory``, else of the configured domains) keyed by id."""
    return _load_classes(class_files(directory))


def load_product_budgets(directory: Path | None = None) -> dict[str, ProductBudget]:
    """Per data product (``domain.product``) total budgets (of ``directory``, else of the
    configured domains)."""
    return _load_budgets(class_files(directory))


@cache
def _load_classes(paths: tuple[Path, ...]) -> dict[str, QueryClass]:
    classes: dict[str, QueryClass] = {}
    for path, raw in _files(paths):
        try:
            for item in raw.get("classes", []):
                qc = QueryClass.model_validate(item)
                if qc.id in classes:
                    raise InvalidQueryClasses(f"{path}: class {qc.id!r} declared twice")
                classes[qc.id] = qc
        except (ValidationError, ValueError) as exc:
            raise InvalidQueryClasses(f"{path}: {exc}") from exc
    return classes


@cache
def _load_budgets(paths: tuple[Path, ...]) -> dict[str, ProductBudget]:
    budgets: dict[str, ProductBudget] = {}
    for path, raw in _files(paths):
        try:
            domain = raw.get("domain")
            for product, item in (raw.get("products") or {}).items():
                if not domain:
                    raise InvalidQueryClasses(f"{path}: 'products' needs a top-level 'domain'")
                budgets[f"{domain}.{product}"] = ProductBudget.model_validate(item)
        except (ValidationError, ValueError, AttributeError) as exc:
            raise InvalidQueryClasses(f"{path}: {exc}") from exc
    return budgets


def _files(paths: tuple[Path, ...]) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in paths:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidQueryClasses(f"{path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise InvalidQueryClasses(f"{path}: expected a mapping with 'classes'")
        out.append((path, raw))
    return out
