"""Pydantic models of a data-product contract.

The YAML files in ``domains/contracts`` are validated against these models; the
models refuse contradictions (a direct identifier kept in clear, a numeric
sensitive field without bounds, a product without a privacy unit) at load time.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
        if self.min > self.max:
            raise ValueError(f"bounds min {self.min} is greater than max {self.max}")
        return self


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

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.tag is PrivacyTag.DIRECT_IDENTIFIER and self.protection in {
            Protection.KEEP,
            Protection.GENERALISE,
        }:
            raise ValueError(
                f"field {self.name!r} is a direct identifier but protection is "
                f"{self.protection.value!r}; use 'drop' or 'tokenise'"
            )
        if self.tag is PrivacyTag.QUASI_IDENTIFIER and self.protection is Protection.KEEP:
            raise ValueError(
                f"field {self.name!r} is a quasi-identifier kept in clear; "
                "use 'generalise', 'tokenise' or 'drop'"
            )
        if (self.protection is Protection.GENERALISE) != (self.generalise is not None):
            raise ValueError(
                f"field {self.name!r}: 'generalise' settings are required exactly when "
                "protection is 'generalise'"
            )
        numeric = self.type in {FieldType.INT, FieldType.FLOAT}
        if numeric and self.tag is PrivacyTag.SENSITIVE and self.bounds is None:
            raise ValueError(f"sensitive numeric field {self.name!r} has no bounds; DP needs them")
        if self.bounds is not None and not numeric:
            raise ValueError(f"field {self.name!r}: bounds apply to int/float fields only")
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
    privacy_unit: str
    event_time: str
    max_event_bytes: Annotated[int, Field(ge=64, le=1_000_000)] = 8192
    fields: Annotated[list[FieldSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"product {self.name!r} declares fields twice: {duplicates}")
        unit = self.field(self.privacy_unit)
        if unit is None:
            raise ValueError(
                f"product {self.name!r}: privacy_unit {self.privacy_unit!r} is not a field"
            )
        if unit.protection is not Protection.TOKENISE or not unit.required:
            raise ValueError(
                f"product {self.name!r}: privacy unit {unit.name!r} must be a required, "
                "tokenised field"
            )
        time_field = self.field(self.event_time)
        if time_field is None or time_field.type is not FieldType.TIMESTAMP:
            raise ValueError(
                f"product {self.name!r}: event_time {self.event_time!r} must name a timestamp field"
            )
        return self

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name``, or None."""
        return next((f for f in self.fields if f.name == name), None)

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
            raise ValueError(f"domain {self.domain!r} declares a product twice: {names}")
        return self

    def product(self, name: str) -> DataProduct | None:
        """The product called ``name``, or None."""
        return next((p for p in self.products if p.name == name), None)
