"""Validate a raw event against its contract and turn it into a product event.

Pure: no broker, no I/O. ``ProductTransform.apply`` returns either ``Accepted``
(the pseudonymised product event) or ``Rejected`` (a reason code and a detail
that names the field and the problem but never echoes the raw value, nor the name of a
field the contract does not know: a name can itself be an identifier).

Every value is treated as hostile: text that cannot be encoded as UTF-8 (a lone
surrogate from a ``\\ud800`` escape) or holds NUL is refused here, so nothing downstream
(tokens, JSON, Parquet) can fail on it; event times must lie within the contract's
window around arrival and carry a whole-minute UTC offset; free-text ``non_personal``
fields are scanned for personal-looking values (``domains.pii_patterns``) and
identifier-like fields must match their declared ``format``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from domains.contract import (
    DataProduct,
    FieldSpec,
    FieldType,
    PrivacyTag,
    Protection,
    token_field_name,
)
from domains.pii_patterns import embedded_kind
from streams.compiled import compile_accept
from streams.pseudonymise import TokenSource, generalise, is_ipv4, normalise

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
WRONG_PARTITION = "wrong_partition"
WRONG_KEY = "wrong_key"
PERSONAL_VALUE = "personal_value"
INVALID_FORMAT = "invalid_format"
OUT_OF_WINDOW = "out_of_window"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event, pseudonymised: ``event`` holds no raw identifier.

    ``unit_key`` is the normalised raw privacy-unit value, the partition key ingest
    records must carry; it stays inside the processor (never logged, never sent).
    """

    key: bytes
    event: dict[str, Any]
    subject: str
    event_time: float
    measures: dict[str, float]
    unit_key: bytes = field(default=b"", repr=False)


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
    """The contract-driven transform of one data product.

    Each field's parser and protection are chosen once, from the contract. ``apply``
    first tries the product's compiled accept function (``streams.compiled``: one
    generated function, msgspec decoding); what it does not accept goes through the
    reference path (``apply_reference``: a loop over the prepared steps), which gives
    every rejection its reason. Both accept the same events with the same output.
    """

    def __init__(self, product: DataProduct, tokens: TokenSource) -> None:
        self.product = product
        self._tokens = tokens
        self._names = frozenset(f.name for f in product.fields)
        self._parsers = [(f.name, f.required, _parser_for(f)) for f in product.fields]
        self._steps = [
            (f.name, f.protection, f.type, f.generalise, token_field_name(f.name))
            for f in product.fields
        ]
        self._measures = [
            f.name
            for f in product.fields
            if f.type in {FieldType.INT, FieldType.FLOAT} and f.bounds is not None
        ]
        self._fast = compile_accept(product, tokens, Accepted, _parse_timestamp)

    def _check_window(self, at: float, now: float) -> None:
        product = self.product
        if at < now - product.max_event_age_seconds:
            raise _Invalid(
                OUT_OF_WINDOW,
                f"field {product.event_time!r} is more than {product.max_event_age_seconds} s "
                "before arrival (the contract's event_time_window)",
            )
        if at > now + product.event_time_window.max_future_seconds:
            raise _Invalid(
                OUT_OF_WINDOW,
                f"field {product.event_time!r} is more than "
                f"{product.event_time_window.max_future_seconds} s after arrival "
                "(the contract's event_time_window)",
            )

    @property
    def measure_fields(self) -> list[str]:
        """Bounded numeric fields aggregated per subject and window."""
        return list(self._measures)

    def apply(self, raw: bytes, now: float | None = None) -> Accepted | Rejected:
        """Validate and pseudonymise one raw event arriving at ``now`` (epoch seconds).

        The event time must lie in the contract's window around ``now``; without an
        arrival time (a replay of history, such as a benchmark loader) that check is
        skipped. The stream processor always gives one."""
        if len(raw) > self.product.max_event_bytes:
            return Rejected(
                TOO_LARGE, f"event is {len(raw)} bytes; limit is {self.product.max_event_bytes}"
            )
        try:
            accepted = self._fast(raw, now)
        except Exception:
            accepted = None
        return accepted if accepted is not None else self.apply_reference(raw, now)

    def apply_reference(self, raw: bytes, now: float | None = None) -> Accepted | Rejected:
        """``apply`` without the compiled path: the reference semantics, field by field."""
        if len(raw) > self.product.max_event_bytes:
            return Rejected(
                TOO_LARGE, f"event is {len(raw)} bytes; limit is {self.product.max_event_bytes}"
            )
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge ints, nesting
            return Rejected(MALFORMED_JSON, f"not valid UTF-8 JSON: {type(exc).__name__}")
        if not isinstance(payload, dict):
            return Rejected(NOT_AN_OBJECT, f"event must be a JSON object, got {_kind(payload)}")
        try:
            return self._accept(payload, now)
        except _Invalid as exc:
            return Rejected(exc.reason, exc.detail)

    def _accept(self, payload: dict[str, Any], now: float | None) -> Accepted:
        if not self._names.issuperset(payload):
            unknown = sum(1 for k in payload if k not in self._names)
            raise _Invalid(
                UNKNOWN_FIELD,
                f"{unknown} field(s) not in the contract (names withheld: a name can be an "
                "identifier); send only the contract's fields",
            )
        values: dict[str, Any] = {}
        for name, required, parse in self._parsers:
            raw_value = payload.get(name)
            if raw_value is None:
                if required:
                    raise _Invalid(MISSING_FIELD, f"required field {name!r} is missing")
                continue
            values[name] = parse(raw_value)
        event_time: datetime = values[self.product.event_time]
        if now is not None:
            self._check_window(event_time.timestamp(), now)
        event: dict[str, Any] = {}
        subject = ""
        unit_key = b""
        unit = self.product.privacy_unit
        tokeniser = self._tokens.at(event_time.timestamp())
        for name, protection, kind, rule, token_name in self._steps:
            if name not in values:
                continue
            value = values[name]
            if protection is Protection.DROP:
                continue
            if protection is Protection.TOKENISE:
                token = tokeniser.token(str(value), kind)
                event[token_name] = token
                if name == unit:
                    subject = token
                    unit_key = normalise(str(value), kind).encode()
            elif protection is Protection.GENERALISE:
                assert rule is not None
                event[name] = generalise(value, rule, event_time)
            else:
                event[name] = _wire(value)
        measures = {name: float(values[name]) for name in self._measures if name in values}
        return Accepted(
            key=subject.encode(),
            event=event,
            subject=subject,
            event_time=event_time.timestamp(),
            measures=measures,
            unit_key=unit_key,
        )


Parser = Callable[[object], object]


def _parser_for(spec: FieldSpec) -> Parser:
    """The validating parser of one field (raises ``_Invalid``)."""
    name = spec.name
    bounds = spec.bounds

    def check_bounds(value: float) -> None:
        if bounds is not None and not bounds.min <= value <= bounds.max:
            raise _Invalid(
                OUT_OF_BOUNDS, f"field {name!r} is outside [{bounds.min:g}, {bounds.max:g}]"
            )

    if spec.type is FieldType.INT:

        def parse_int(value: object) -> object:
            if type(value) is not int:  # bool is an int subclass, and not allowed
                raise _Invalid(WRONG_TYPE, f"field {name!r} must be an integer, got {_kind(value)}")
            check_bounds(value)
            return value

        return parse_int
    if spec.type is FieldType.FLOAT:

        def parse_float(value: object) -> object:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Invalid(WRONG_TYPE, f"field {name!r} must be a number, got {_kind(value)}")
            if not -1e308 < value < 1e308:  # NaN, infinities and ints no float can hold
                raise _Invalid(INVALID_VALUE, f"field {name!r} must be a finite float")
            check_bounds(value)
            return float(value)

        return parse_float
    if spec.type is FieldType.TIMESTAMP:
        return lambda value: _parse_timestamp(name, value)
    check_text = _text_parser(spec)

    def parse_text(value: object) -> object:
        if not isinstance(value, str):
            raise _Invalid(WRONG_TYPE, f"field {name!r} must be a string, got {_kind(value)}")
        if len(value) > spec.max_length:
            raise _Invalid(TOO_LONG, f"field {name!r} is longer than {spec.max_length} characters")
        _check_encodable(name, value)
        return check_text(value)

    return parse_text


def _text_parser(spec: FieldSpec) -> Callable[[str], object]:
    name = spec.name
    if spec.type is FieldType.EMAIL:

        def email(value: str) -> object:
            local, at, host = value.strip().rpartition("@")
            if not at or not local or "." not in host:
                raise _Invalid(INVALID_VALUE, f"field {name!r} is not an e-mail address")
            return value

        return email
    if spec.type is FieldType.IPV4:

        def ipv4(value: str) -> object:
            if not is_ipv4(value):
                raise _Invalid(INVALID_VALUE, f"field {name!r} is not an IPv4 address")
            return value

        return ipv4
    if spec.type is FieldType.DATE:

        def iso_date(value: str) -> object:
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise _Invalid(INVALID_VALUE, f"field {name!r} is not an ISO date") from None

        return iso_date
    allowed = frozenset(spec.allowed_values) if spec.allowed_values is not None else None
    fits = _format_check(spec)
    # Free text declared non-personal and published as is: its values are checked too.
    scan = (
        spec.tag is PrivacyTag.NON_PERSONAL
        and spec.protection is Protection.KEEP
        and allowed is None
        and (spec.format is None or spec.format.kind == "regex")
    )

    def text(value: str) -> object:
        if not value.strip():
            raise _Invalid(INVALID_VALUE, f"field {name!r} is empty")
        if allowed is not None and value not in allowed:
            raise _Invalid(NOT_ALLOWED, f"field {name!r} is not one of its allowed values")
        if scan:  # before the format: the more telling reason for an e-mail in an id
            kind = embedded_kind(value)
            if kind is not None:
                raise _Invalid(
                    PERSONAL_VALUE,
                    f"field {name!r} is tagged non_personal but holds what looks like {kind}",
                )
        if fits is not None and not fits(value):
            raise _Invalid(INVALID_FORMAT, f"field {name!r} does not match its declared format")
        return value

    return text


def _format_check(spec: FieldSpec) -> Callable[[str], bool] | None:
    """The test of ``spec``'s declared format, compiled once (None: no format)."""
    declared = spec.format
    if declared is None:
        return None
    if declared.kind == "uuid":
        return lambda value: _UUID.fullmatch(value) is not None
    if declared.kind == "enum":
        values = frozenset(declared.values or ())
        return lambda value: value in values
    pattern = re.compile(declared.pattern or "")
    return lambda value: pattern.fullmatch(value) is not None


def _check_encodable(name: str, value: str) -> None:
    """Refuse text that UTF-8 cannot encode (lone surrogates) or that holds NUL."""
    if "\x00" in value:
        raise _Invalid(INVALID_VALUE, f"field {name!r} holds a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(
                INVALID_VALUE, f"field {name!r} holds text UTF-8 cannot encode (a lone surrogate)"
            ) from None


def _kind(value: object) -> str:
    return type(value).__name__ if value is not None else "null"


def _wire(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _parse_timestamp(name: str, value: object) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value < 32_503_680_000:  # NaN and infinities fail too; huge ints are fine
            raise _Invalid(INVALID_VALUE, f"field {name!r} is not a plausible epoch time")
        return datetime.fromtimestamp(value, tz=UTC)
    if not isinstance(value, str) or len(value) > 64:
        raise _Invalid(WRONG_TYPE, f"field {name!r} must be an ISO 8601 time or epoch seconds")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:  # lone surrogates and NUL end here too
        raise _Invalid(INVALID_VALUE, f"field {name!r} is not an ISO 8601 time") from None
    offset = parsed.utcoffset()
    if offset is None:
        raise _Invalid(INVALID_VALUE, f"field {name!r} has no UTC offset")
    if offset.microseconds or offset.seconds % 60:
        # Valid ISO 8601 for Python, but not for Arrow, Kafka tools or most readers.
        raise _Invalid(INVALID_VALUE, f"field {name!r} has a UTC offset of seconds")
    try:
        parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 lies before year 1 in UTC
        raise _Invalid(INVALID_VALUE, f"field {name!r} is outside the years 1-9999") from None
    return parsed
