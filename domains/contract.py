"""Pydantic models of a data-product contract.

The YAML files in ``domains/contracts`` are validated against these models; the
models refuse contradictions (a direct identifier kept in clear, a numeric
sensitive field without bounds, a product without a privacy unit) at load time.
"""

from __future__ import annotations

import math
import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


def _refuse(code: str, message: str, at: str | None = None) -> PydanticCustomError:
    """A validation error whose ``type`` is the machine-readable ``code`` (see the linter);
    ``at``: the dotted key under the validated model the error is about (the linter adds it
    to the location, so a cross-field refusal points at its own key and line)."""
    context = None if at is None else {"at": at}
    return PydanticCustomError(code, message.replace("{", "{{").replace("}", "}}"), context)


class PrivacyTag(StrEnum):
    """What a field says about a person; the closed set every field must carry."""

    DIRECT_IDENTIFIER = "direct_identifier"
    QUASI_IDENTIFIER = "quasi_identifier"
    SENSITIVE = "sensitive"
    NON_PERSONAL = "non_personal"


class FieldType(StrEnum):
    """Wire types of event fields (JSON values)."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    DATE = "date"  # ISO 8601 calendar date, e.g. "1984-03-09"
    TIMESTAMP = "timestamp"  # ISO 8601 date-time with offset, or epoch seconds
    EMAIL = "email"
    IPV4 = "ipv4"


class Protection(StrEnum):
    """What the stream processor does to a field before it leaves ingestion."""

    KEEP = "keep"  # passed through unchanged (only for non-personal or bounded sensitive)
    DROP = "drop"  # removed from the product event
    TOKENISE = "tokenise"  # replaced by a keyed, per-domain pseudonymous token
    GENERALISE = "generalise"  # coarsened as declared by ``generalise``


class ConsentMode(StrEnum):
    """How a product's purpose relates to the subjects' consent records.

    ``opt_in``: consent is the lawful basis; an event is processed only while its subject's
    latest record for the purpose is a grant. ``opt_out``: another basis (contract,
    legitimate interest) applies and the subject may object; an event is processed unless
    its subject's latest record for the purpose is a withdrawal.
    """

    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"


class Generalisation(BaseModel):
    """How a quasi-identifier is coarsened.

    ``ipv4_prefix`` keeps the first ``bits`` bits of an IPv4 address; ``prefix``
    keeps the first ``length`` characters of a string; ``age_band`` turns a birth
    date into a ``width``-year age band; ``truncate_time`` floors a timestamp to
    ``seconds``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["ipv4_prefix", "prefix", "age_band", "truncate_time"]
    bits: Annotated[int, Field(ge=8, le=32)] = 24
    length: Annotated[int, Field(ge=1)] = 3
    width: Annotated[int, Field(ge=1, le=100)] = 10
    seconds: Annotated[int, Field(ge=1)] = 3600


class Bounds(BaseModel):
    """Inclusive numeric bounds; values outside are rejected to the dead-letter topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise _refuse(
                "non_finite_bounds",
                f"bounds [{self.min}, {self.max}] must be finite numbers (no NaN or infinity)",
            )
        if self.min > self.max:
            raise _refuse(
                "inverted_bounds", f"bounds min {self.min} is greater than max {self.max}"
            )
        return self


class FieldFormat(BaseModel):
    """The shape an identifier-like string field must have; the processor enforces it.

    ``regex``: the whole value matches ``pattern`` (Python syntax); ``uuid``: a UUID in its
    canonical 8-4-4-4-12 hex form; ``enum``: one of ``values``. An event whose value does
    not fit is dead-lettered (``invalid_format``), so an e-mail typed into an order id
    never reaches a product topic.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["regex", "uuid", "enum"]
    pattern: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    values: Annotated[list[str], Field(min_length=1, max_length=1000)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.kind == "regex") != (self.pattern is not None):
            raise _refuse(
                "format_mismatch", "format 'pattern' is required exactly when kind is 'regex'"
            )
        if (self.kind == "enum") != (self.values is not None):
            raise _refuse(
                "format_mismatch", "format 'values' are required exactly when kind is 'enum'"
            )
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise _refuse(
                    "invalid_format_regex",
                    f"format pattern does not compile ({exc.msg} at position {exc.pos}); "
                    "write a Python regular expression",
                ) from None
        return self


class EventTimeWindow(BaseModel):
    """How far an event's time may lie from its arrival at the processor.

    Events older than ``max_age_seconds`` (default: the product's retention) or more than
    ``max_future_seconds`` ahead of arrival are dead-lettered (``event_time_out_of_window``):
    a time in the year 1 or 9999 is a bug or an attack, and would land in a window no one
    reads or one that has not opened.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_age_seconds: Annotated[int, Field(ge=60)] | None = None
    max_future_seconds: Annotated[int, Field(ge=0, le=86_400)] = 300


RECORDS_PER_PERIOD_LIMIT = 1_000_000  # a larger per-day bound protects no one in practice
WINDOWS_PER_PERIOD_LIMIT = 86_400  # windows of the shortest length (1 s) in one UTC day
PERIOD_SECONDS = {"day": 86_400}  # length of each supported privacy period
# Largest per-period sum cap: beyond 2**53 a float sum no longer holds every integer.
SUM_PER_PERIOD_LIMIT = float(2**53)


class ContributionBounds(BaseModel):
    """How much one subject may contribute to a product's statistics per privacy period.

    The privacy unit of every release is the pseudonymous subject over the period (the
    UTC day): the stream processor counts at most ``max_records_per_period`` of a
    subject's records per period, in at most ``max_windows_per_period`` distinct windows,
    each numeric measure clamped to ``clamp`` (default: the field's bounds), and the
    subject's total of a measure over the period capped at ``max_sum_per_period`` (a record
    that would pass the cap counts only the remainder). Records beyond the bounds are
    truncated (not counted) and reported per window, so a subject's whole day moves a day's
    statistics by a bounded, published amount (docs/contribution-bounds.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    privacy_period: Literal["day"] = Field(
        default="day",
        description="The period the bounds apply to: the UTC day (the only one supported).",
    )
    max_records_per_period: int = Field(
        default=10,
        description=(
            "Records of one subject counted per period (unit: records); the rest are "
            "truncated. Bounds a subject's share of every count and sum of the day."
        ),
    )
    max_windows_per_period: int = Field(
        default=10,
        description=(
            "Distinct stream windows one subject may appear in per period (unit: windows); "
            "a record in a further window is truncated. Bounds how many per-window values "
            "one subject can move."
        ),
    )
    clamp: dict[str, Bounds] = Field(
        default_factory=dict,
        description=(
            "Per-record clamp of numeric measures (field name -> bounds inside the field's "
            "bounds); a measure without one is clamped to its field's bounds."
        ),
    )
    max_sum_per_period: dict[str, Annotated[float, Field(strict=True)]] = Field(
        default_factory=dict,
        description=(
            "Per-subject cap on a measure's total per period (field name -> cap, in the "
            "measure's unit): the user-level L1 bound of every sum of the measure, which is "
            "then min(max_records_per_period x max|clamp|, cap). A counted record that would "
            "pass the cap adds only the remainder; the amount cut is reported."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name in ("max_records_per_period", "max_windows_per_period"):
            value = getattr(self, name)
            if value < 1:
                raise _refuse(
                    "contribution_bound_below_one",
                    f"contribution {name} is {value}; it must be at least 1 (a subject "
                    "whose records never count cannot be served)",
                )
        if self.max_records_per_period > RECORDS_PER_PERIOD_LIMIT:
            raise _refuse(
                "contribution_bound_too_large",
                f"contribution max_records_per_period {self.max_records_per_period} exceeds "
                f"{RECORDS_PER_PERIOD_LIMIT}; a bound that large protects no one: lower it",
            )
        if self.max_windows_per_period > self.max_records_per_period:
            raise _refuse(
                "windows_exceed_records",
                f"contribution max_windows_per_period {self.max_windows_per_period} exceeds "
                f"max_records_per_period {self.max_records_per_period}: a subject appears "
                "in a window only with a counted record; lower max_windows_per_period",
            )
        if self.max_windows_per_period > WINDOWS_PER_PERIOD_LIMIT:
            raise _refuse(
                "windows_exceed_period",
                f"contribution max_windows_per_period {self.max_windows_per_period} exceeds "
                f"the {WINDOWS_PER_PERIOD_LIMIT} one-second windows of a day; lower it",
            )
        for name, cap in self.max_sum_per_period.items():
            at = f"max_sum_per_period.{name}"
            if not math.isfinite(cap) or cap <= 0:
                raise _refuse(
                    "sum_cap_not_positive",
                    f"contribution max_sum_per_period of {name!r} is {cap}; it must be a finite "
                    "number above 0 (a cap of 0 would count no amount at all)",
                    at,
                )
            if cap > SUM_PER_PERIOD_LIMIT:
                raise _refuse(
                    "sum_cap_too_large",
                    f"contribution max_sum_per_period of {name!r} is {cap:g}, above 2**53; "
                    "a cap that large bounds nothing: lower it or remove it",
                    at,
                )
        return self

    @property
    def period_seconds(self) -> int:
        """Length of the privacy period in seconds."""
        return PERIOD_SECONDS[self.privacy_period]


class FieldSpec(BaseModel):
    """One event field: type, meaning, privacy tag, bounds and protection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    type: FieldType
    description: Annotated[str, Field(min_length=1)]
    tag: PrivacyTag
    protection: Protection = Protection.KEEP
    required: bool = True
    bounds: Bounds | None = None
    max_length: Annotated[int, Field(ge=1)] = 256
    generalise: Generalisation | None = None
    allowed_values: Annotated[list[str], Field(min_length=1, max_length=1000)] | None = Field(
        default=None,
        description="Public categories: the only values accepted (group-by keys for DP).",
    )
    examples: list[str | int | float] = Field(
        default_factory=list,
        description="Made-up sample values for documentation and the linter; never real data.",
    )
    format: FieldFormat | None = Field(
        default=None,
        description="Shape of an identifier-like string field (regex, uuid, enum), enforced.",
    )

    @property
    def numeric(self) -> bool:
        """True for int and float fields."""
        return self.type in {FieldType.INT, FieldType.FLOAT}

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.tag is PrivacyTag.DIRECT_IDENTIFIER and self.protection in {
            Protection.KEEP,
            Protection.GENERALISE,
        }:
            raise _refuse(
                "direct_identifier_in_clear",
                f"field {self.name!r} is a direct identifier but protection is "
                f"{self.protection.value!r}; use 'drop' or 'tokenise'",
            )
        if (
            self.tag is PrivacyTag.QUASI_IDENTIFIER
            and self.protection is Protection.KEEP
            and self.allowed_values is None
        ):
            raise _refuse(
                "quasi_identifier_in_clear",
                f"field {self.name!r} is a quasi-identifier kept in clear; use 'generalise', "
                "'tokenise' or 'drop', or declare its coarse public 'allowed_values'",
            )
        if (self.protection is Protection.GENERALISE) != (self.generalise is not None):
            raise _refuse(
                "generalise_mismatch",
                f"field {self.name!r}: 'generalise' settings are required exactly when "
                "protection is 'generalise'",
            )
        kept = self.protection is Protection.KEEP
        if self.numeric and kept and self.bounds is None:
            raise _refuse(
                "unbounded_numeric",
                f"numeric field {self.name!r} reaches the product without bounds; DP "
                "aggregates need them (declare 'bounds', or drop the field)",
            )
        if self.bounds is not None and not self.numeric:
            raise _refuse(
                "bounds_on_non_numeric", f"field {self.name!r}: bounds apply to int/float only"
            )
        if self.format is not None and self.type is not FieldType.STRING:
            raise _refuse(
                "format_on_non_string", f"field {self.name!r}: a format applies to strings only"
            )
        if self.allowed_values is not None:
            if self.type is not FieldType.STRING:
                raise _refuse(
                    "allowed_values_on_non_string",
                    f"field {self.name!r}: allowed_values apply to string fields only",
                )
            if self.tag is PrivacyTag.DIRECT_IDENTIFIER:
                raise _refuse(
                    "allowed_values_on_identifier",
                    f"field {self.name!r}: a direct identifier cannot have public values",
                )
            if len(set(self.allowed_values)) != len(self.allowed_values):
                raise _refuse(
                    "duplicate_allowed_values", f"field {self.name!r} lists a value twice"
                )
            too_long = [v for v in self.allowed_values if len(v) > self.max_length]
            if too_long:
                raise _refuse(
                    "allowed_value_too_long",
                    f"field {self.name!r}: allowed values longer than max_length "
                    f"{self.max_length}: {too_long[:3]}",
                )
        return self


class DataProduct(BaseModel):
    """A published data product: its event schema and its governance facts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=48)]
    version: Annotated[int, Field(ge=1)] = 1
    description: Annotated[str, Field(min_length=1)]
    owner: Annotated[str, Field(min_length=3)]
    purpose: Annotated[str, Field(min_length=1)]
    retention_days: Annotated[int, Field(ge=1)]
    consent: ConsentMode = Field(
        default=ConsentMode.OPT_OUT,
        description=(
            "opt_in: only subjects whose latest consent record for the purpose is a grant are "
            "processed; opt_out: every subject except those who withdrew (objected)."
        ),
    )
    privacy_unit: str
    event_time: str
    event_time_window: EventTimeWindow = Field(
        default_factory=EventTimeWindow,
        description="How far event time may lie before (default: retention) or after arrival.",
    )
    max_event_bytes: Annotated[int, Field(ge=64, le=1_000_000)] = 8192
    fields: Annotated[list[FieldSpec], Field(min_length=1)]
    upstream: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")]] = Field(
        default_factory=list,
        description="Data products (domain.product) this one is derived from, for lineage.",
    )
    contribution: ContributionBounds = Field(
        default_factory=ContributionBounds,
        description=(
            "Per-subject, per-period contribution bounds the stream processor enforces "
            "(records, windows, per-record clamps): the privacy unit is the subject-day."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise _refuse(
                "duplicate_field", f"product {self.name!r} declares fields twice: {duplicates}"
            )
        unit = self.field(self.privacy_unit)
        if unit is None:
            raise _refuse(
                "privacy_unit_unknown",
                f"product {self.name!r}: privacy_unit {self.privacy_unit!r} is not a field",
            )
        if unit.protection is not Protection.TOKENISE or not unit.required:
            raise _refuse(
                "privacy_unit_not_tokenised",
                f"product {self.name!r}: privacy unit {unit.name!r} must be a required, "
                "tokenised field",
            )
        time_field = self.field(self.event_time)
        if (
            time_field is None
            or time_field.type is not FieldType.TIMESTAMP
            or not time_field.required
        ):
            raise _refuse(
                "event_time_invalid",
                f"product {self.name!r}: event_time {self.event_time!r} must name a required "
                "timestamp field",
            )
        self._check_clamps()
        self._check_sum_caps()
        return self

    def _check_clamps(self) -> None:
        for name, clamp in self.contribution.clamp.items():
            spec = self.field(name)
            if spec is None:
                raise _refuse(
                    "clamp_unknown_field",
                    f"product {self.name!r}: contribution clamp names {name!r}, not a field",
                )
            if not spec.numeric:
                raise _refuse(
                    "clamp_on_non_numeric",
                    f"product {self.name!r}: contribution clamp on {name!r}, a "
                    f"{spec.type.value} field; clamps apply to int/float measures only",
                )
            if spec.bounds is None:
                raise _refuse(
                    "clamp_without_bounds",
                    f"product {self.name!r}: contribution clamp on {name!r}, which has no "
                    "bounds (not aggregated); declare its bounds first",
                )
            if clamp.min < spec.bounds.min or clamp.max > spec.bounds.max:
                raise _refuse(
                    "clamp_outside_bounds",
                    f"product {self.name!r}: clamp [{clamp.min:g}, {clamp.max:g}] of {name!r} "
                    f"is not inside its bounds [{spec.bounds.min:g}, {spec.bounds.max:g}]",
                )

    def _check_sum_caps(self) -> None:
        for name, cap in self.contribution.max_sum_per_period.items():
            at = f"contribution.max_sum_per_period.{name}"
            spec = self.field(name)
            if spec is None or not spec.numeric or spec.bounds is None:
                raise _refuse(
                    "sum_cap_unknown_measure",
                    f"product {self.name!r}: max_sum_per_period names {name!r}, which is not a "
                    "bounded int/float field (a measure); cap a measure the product sums",
                    at,
                )
            clamp = self.contribution.clamp.get(name)
            if clamp is None:
                raise _refuse(
                    "sum_cap_without_clamp",
                    f"product {self.name!r}: max_sum_per_period caps {name!r}, which has no "
                    "contribution clamp; declare clamp.{name} first (the cap is chosen "
                    "against the per-record clamp)",
                    at,
                )
            if clamp.min < 0:
                raise _refuse(
                    "sum_cap_negative_measure",
                    f"product {self.name!r}: clamp of {name!r} admits negative values "
                    f"({clamp.min:g}); a per-period cap bounds non-negative measures only",
                    at,
                )
            if cap < clamp.min:
                raise _refuse(
                    "sum_cap_below_clamp",
                    f"product {self.name!r}: max_sum_per_period of {name!r} ({cap:g}) is below "
                    f"its clamp's min {clamp.min:g}: even one counted record would pass it; "
                    "raise the cap or lower clamp.min",
                    at,
                )
            if spec.type is FieldType.INT and cap != math.floor(cap):
                raise _refuse(
                    "sum_cap_not_integral",
                    f"product {self.name!r}: max_sum_per_period of int measure {name!r} is "
                    f"{cap:g}; use a whole number (sums of an int measure stay integers)",
                    at,
                )

    def sum_cap_of(self, name: str) -> float | None:
        """The per-subject, per-period cap on measure ``name``'s total (None: no cap)."""
        return self.contribution.max_sum_per_period.get(name)

    def period_sum_bound(self, name: str) -> float:
        """The most one subject's period adds to a sum of measure ``name`` (its L1 bound):
        ``min(max_records_per_period * max(|clamp.min|, |clamp.max|), max_sum_per_period)``."""
        clamp = self.clamp_of(name)
        largest = max(abs(clamp.min), abs(clamp.max))
        bound = self.contribution.max_records_per_period * largest
        cap = self.sum_cap_of(name)
        return bound if cap is None else min(bound, cap)

    def clamp_of(self, name: str) -> Bounds:
        """The per-record clamp of measure ``name``: the contribution clamp, else the
        field's bounds. Raises ``KeyError`` for a field that is not a bounded measure."""
        clamp = self.contribution.clamp.get(name)
        if clamp is not None:
            return clamp
        spec = self.field(name)
        if spec is None or spec.bounds is None:
            raise KeyError(f"product {self.name!r} has no bounded measure {name!r}")
        return spec.bounds

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name``, or None."""
        return next((f for f in self.fields if f.name == name), None)

    @property
    def max_event_age_seconds(self) -> int:
        """Oldest event time accepted, in seconds before arrival."""
        declared = self.event_time_window.max_age_seconds
        return declared if declared is not None else self.retention_days * 86_400

    @property
    def subject_field(self) -> str:
        """Name of the product-event field holding the privacy unit's token."""
        return token_field_name(self.privacy_unit)


def token_field_name(field_name: str) -> str:
    """Name under which a tokenised field travels in product events."""
    return f"{field_name}_token"


class DomainContract(BaseModel):
    """All data products one domain publishes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=32)]
    description: Annotated[str, Field(min_length=1)]
    owner: Annotated[str, Field(min_length=3)]
    reviewed: date | None = None
    products: Annotated[list[DataProduct], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_products(self) -> Self:
        names = [p.name for p in self.products]
        if len(set(names)) != len(names):
            raise _refuse(
                "duplicate_product", f"domain {self.domain!r} declares a product twice: {names}"
            )
        return self

    def product(self, name: str) -> DataProduct | None:
        """The product called ``name``, or None."""
        return next((p for p in self.products if p.name == name), None)


SCHEMA_ID = "https://privmesh.dev/schemas/domain-contract.json"


def contract_json_schema() -> dict[str, object]:
    """JSON Schema of a contract file, for editors and other tools."""
    schema = DomainContract.model_json_schema()
    return {
        **schema,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "privmesh domain contract",
    }
