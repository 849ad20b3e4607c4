"""Validate a raw event against its contract and turn it into a product event.

Pure: no broker, no I/O. ``ProductTransform.apply`` returns either ``Accepted``
(the pseudonymised product event) or ``Rejected`` (a reason code and a detail
that names the field and the problem but never echoes the raw value).
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from domains.contract import DataProduct, FieldSpec, FieldType, Protection, token_field_name
from streams.pseudonymise import TokenSource, generalise

# Reason codes carried in the dead-letter header ``privmesh-reason``.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
TOO_LARGE = "too_large"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
OUT_OF_BOUNDS = "out_of_bounds"
TOO_LONG = "too_long"
INVALID_VALUE = "invalid_value"
NOT_ALLOWED = "not_allowed"


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event, pseudonymised: ``event`` holds no raw identifier."""

    key: bytes
    event: dict[str, Any]
    subject: str
    event_time: float
    measures: dict[str, float]


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid event: ``reason`` is a code above, ``detail`` names field and problem."""

    reason: str
    detail: str


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ProductTransform:
    """The contract-driven transform of one data product."""

    def __init__(self, product: DataProduct, tokens: TokenSource) -> None:
        self.product = product
        self._tokens = tokens
        self._fields = {f.name: f for f in product.fields}
        self._measures = [
            f.name
            for f in product.fields
            if f.type in {FieldType.INT, FieldType.FLOAT} and f.bounds is not None
        ]

    @property
    def measure_fields(self) -> list[str]:
        """Bounded numeric fields aggregated per subject and window."""
        return list(self._measures)

    def apply(self, raw: bytes) -> Accepted | Rejected:
        """Validate and pseudonymise one raw event."""
        if len(raw) > self.product.max_event_bytes:
            return Rejected(
                TOO_LARGE, f"event is {len(raw)} bytes; limit is {self.product.max_event_bytes}"
            )
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return Rejected(MALFORMED_JSON, f"not valid UTF-8 JSON: {type(exc).__name__}")
        if not isinstance(payload, dict):
            return Rejected(NOT_AN_OBJECT, f"event must be a JSON object, got {_kind(payload)}")
        try:
            return self._accept(payload)
        except _Invalid as exc:
            return Rejected(exc.reason, exc.detail)

    def _accept(self, payload: dict[str, Any]) -> Accepted:
        unknown = sorted(k for k in payload if k not in self._fields)
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5])
            raise _Invalid(UNKNOWN_FIELD, f"fields not in the contract: {shown}")
        values: dict[str, Any] = {}
        for spec in self.product.fields:
            raw_value = payload.get(spec.name)
            if raw_value is None:
                if spec.required:
                    raise _Invalid(MISSING_FIELD, f"required field {spec.name!r} is missing")
                continue
            values[spec.name] = _parse(spec, raw_value)
        event_time: datetime = values[self.product.event_time]
        event: dict[str, Any] = {}
        subject = ""
        tokeniser = self._tokens.at(event_time.timestamp())
        for spec in self.product.fields:
            if spec.name not in values:
                continue
            value = values[spec.name]
            match spec.protection:
                case Protection.DROP:
                    continue
                case Protection.TOKENISE:
                    token = tokeniser.token(str(value), spec.type)
                    event[token_field_name(spec.name)] = token
                    if spec.name == self.product.privacy_unit:
                        subject = token
                case Protection.GENERALISE:
                    assert spec.generalise is not None
                    event[spec.name] = generalise(value, spec.generalise, event_time)
                case Protection.KEEP:
                    event[spec.name] = _wire(value)
        measures = {name: float(values[name]) for name in self._measures if name in values}
        return Accepted(
            key=subject.encode(),
            event=event,
            subject=subject,
            event_time=event_time.timestamp(),
            measures=measures,
        )


def _kind(value: object) -> str:
    return type(value).__name__ if value is not None else "null"


def _wire(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _parse(spec: FieldSpec, value: object) -> object:  # noqa: PLR0911, PLR0912
    name = spec.name
    match spec.type:
        case FieldType.INT:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _Invalid(WRONG_TYPE, f"field {name!r} must be an integer, got {_kind(value)}")
            _check_bounds(spec, value)
            return value
        case FieldType.FLOAT:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Invalid(WRONG_TYPE, f"field {name!r} must be a number, got {_kind(value)}")
            if not math.isfinite(value):
                raise _Invalid(INVALID_VALUE, f"field {name!r} must be finite")
            _check_bounds(spec, value)
            return float(value)
        case FieldType.TIMESTAMP:
            return _parse_timestamp(name, value)
    if not isinstance(value, str):
        raise _Invalid(WRONG_TYPE, f"field {name!r} must be a string, got {_kind(value)}")
    if len(value) > spec.max_length:
        raise _Invalid(TOO_LONG, f"field {name!r} is longer than {spec.max_length} characters")
    match spec.type:
        case FieldType.EMAIL:
            local, at, host = value.strip().rpartition("@")
            if not at or not local or "." not in host:
                raise _Invalid(INVALID_VALUE, f"field {name!r} is not an e-mail address")
            return value
        case FieldType.IPV4:
            try:
                return str(ipaddress.IPv4Address(value))
            except ValueError:
                raise _Invalid(INVALID_VALUE, f"field {name!r} is not an IPv4 address") from None
        case FieldType.DATE:
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise _Invalid(INVALID_VALUE, f"field {name!r} is not an ISO date") from None
    if not value.strip():
        raise _Invalid(INVALID_VALUE, f"field {name!r} is empty")
    if spec.allowed_values is not None and value not in spec.allowed_values:
        raise _Invalid(NOT_ALLOWED, f"field {name!r} is not one of its allowed values")
    return value


def _check_bounds(spec: FieldSpec, value: float) -> None:
    bounds = spec.bounds
    if bounds is not None and not bounds.min <= value <= bounds.max:
        raise _Invalid(
            OUT_OF_BOUNDS, f"field {spec.name!r} is outside [{bounds.min:g}, {bounds.max:g}]"
        )


def _parse_timestamp(name: str, value: object) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or not 0 <= value < 32_503_680_000:
            raise _Invalid(INVALID_VALUE, f"field {name!r} is not a plausible epoch time")
        return datetime.fromtimestamp(value, tz=UTC)
    if not isinstance(value, str) or len(value) > 64:
        raise _Invalid(WRONG_TYPE, f"field {name!r} must be an ISO 8601 time or epoch seconds")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Invalid(INVALID_VALUE, f"field {name!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise _Invalid(INVALID_VALUE, f"field {name!r} has no UTC offset")
    return parsed
