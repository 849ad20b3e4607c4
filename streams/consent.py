"""Consent records and the in-memory consent index the stream processors check.

A consent record (one JSON object on ``<domain>.consent``, keyed ``<purpose>/<subject>``)::

    {"subject": "alice@example.com", "purpose": "sales_analytics",
     "status": "granted" | "withdrawn", "timestamp": "2026-12-02T10:00:00+00:00"}

``subject`` is the raw privacy-unit value, as the domain's consent platform knows it;
the topic is inside the ingestion boundary. The index keeps a keyed digest of the
normalised value per purpose (never the value) with the latest decision and its time:
a record older than the one held is ignored (re-reads and out-of-order delivery are
no-ops), and at equal times a withdrawal wins. ``ConsentIndex.allows`` answers in
about a microsecond, once per accepted event.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from domains.contract import ConsentMode, DataProduct, DomainContract, FieldType
from streams.pseudonymise import normalise

MAX_RECORD_BYTES = 4096
MAX_SUBJECT_CHARS = 320
# A record dated further ahead than this is refused: a future-dated grant would beat
# every withdrawal sent before that time.
MAX_CLOCK_SKEW_SECONDS = 300.0
DIGEST_BYTES = 16

# Reason codes of malformed consent records (``privmesh-reason`` on the consent DLQ).
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
TOO_LARGE = "too_large"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_PURPOSE = "unknown_purpose"
INVALID_STATUS = "invalid_status"
INVALID_TIMESTAMP = "invalid_timestamp"
INVALID_VALUE = "invalid_value"
FUTURE_TIMESTAMP = "future_timestamp"
# Why an accepted event was not processed (counted, never sent anywhere).
CONSENT_MISSING = "consent_missing"
CONSENT_WITHDRAWN = "consent_withdrawn"


class ConsentStatus(StrEnum):
    """A subject's decision for one purpose."""

    GRANTED = "granted"
    WITHDRAWN = "withdrawn"


class MalformedConsent(ValueError):
    """A consent record that cannot be applied; ``reason`` is a code above.

    The message names the field and the problem, never the value (it is logged and
    written to a header).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One validated consent record (holds the raw subject: processor memory only)."""

    subject: str
    purpose: str
    status: ConsentStatus
    timestamp: float

    def __repr__(self) -> str:
        return (
            f"ConsentRecord(subject=<redacted>, purpose={self.purpose!r}, "
            f"status={self.status.value!r}, timestamp={self.timestamp})"
        )


_FIELDS = frozenset({"subject", "purpose", "status", "timestamp"})


def consent_key(purpose: str, subject: str) -> bytes:
    """The Kafka key of a consent record: compaction keeps one per subject and purpose."""
    return f"{purpose}/{subject.strip()}".encode()


def consent_value(subject: str, purpose: str, status: ConsentStatus, timestamp: float) -> bytes:
    """The JSON value of a consent record."""
    record = {
        "subject": subject,
        "purpose": purpose,
        "status": status.value,
        "timestamp": datetime.fromtimestamp(timestamp).astimezone().isoformat(),
    }
    return json.dumps(record, separators=(",", ":")).encode()


def parse_consent(
    raw: bytes | None, purposes: frozenset[str], now: float | None = None
) -> ConsentRecord:
    """Validate one consent record against the domain's declared ``purposes``."""
    if raw is None:
        raise MalformedConsent(MALFORMED_JSON, "empty record (a tombstone is not a decision)")
    if len(raw) > MAX_RECORD_BYTES:
        raise MalformedConsent(TOO_LARGE, f"record is {len(raw)} bytes; limit {MAX_RECORD_BYTES}")
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge ints, nesting
        raise MalformedConsent(MALFORMED_JSON, f"not UTF-8 JSON: {type(exc).__name__}") from None
    if not isinstance(payload, dict):
        raise MalformedConsent(NOT_AN_OBJECT, "a consent record is a JSON object")
    unknown = sum(1 for k in payload if k not in _FIELDS)
    if unknown:
        # Counted, never named: a field's name can be a person's name or number.
        raise MalformedConsent(
            UNKNOWN_FIELD,
            f"{unknown} field(s) not in a consent record (names withheld); "
            f"allowed: {', '.join(sorted(_FIELDS))}",
        )
    missing = sorted(_FIELDS - set(payload))
    if missing:
        raise MalformedConsent(MISSING_FIELD, f"missing field(s): {', '.join(missing)}")
    subject, purpose, status = payload["subject"], payload["purpose"], payload["status"]
    if not isinstance(subject, str) or not subject.strip():
        raise MalformedConsent(WRONG_TYPE, "field 'subject' must be a non-empty string")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise MalformedConsent(WRONG_TYPE, f"field 'subject' is over {MAX_SUBJECT_CHARS} chars")
    if not _encodable(subject):
        raise MalformedConsent(
            INVALID_VALUE,
            "field 'subject' holds NUL or text UTF-8 cannot encode (a lone surrogate)",
        )
    if not isinstance(purpose, str) or purpose not in purposes:
        known = ", ".join(sorted(purposes))
        raise MalformedConsent(
            UNKNOWN_PURPOSE, f"field 'purpose' is not a purpose of this domain (known: {known})"
        )
    if status not in {s.value for s in ConsentStatus}:
        raise MalformedConsent(INVALID_STATUS, "field 'status' must be 'granted' or 'withdrawn'")
    at = _timestamp(payload["timestamp"])
    if at > (now if now is not None else time.time()) + MAX_CLOCK_SKEW_SECONDS:
        raise MalformedConsent(
            FUTURE_TIMESTAMP,
            f"field 'timestamp' is more than {MAX_CLOCK_SKEW_SECONDS:g} s in the future",
        )
    return ConsentRecord(subject, purpose, ConsentStatus(status), at)


def _timestamp(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value < 32_503_680_000:  # NaN and infinities fail too; huge ints are fine
            raise MalformedConsent(INVALID_TIMESTAMP, "field 'timestamp' is not a plausible epoch")
        return float(value)
    if not isinstance(value, str) or len(value) > 64:
        raise MalformedConsent(
            INVALID_TIMESTAMP, "field 'timestamp' must be ISO 8601 with an offset, or epoch seconds"
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedConsent(INVALID_TIMESTAMP, "field 'timestamp' is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise MalformedConsent(INVALID_TIMESTAMP, "field 'timestamp' has no UTC offset")
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError):  # the year 1 with a positive offset
        raise MalformedConsent(INVALID_TIMESTAMP, "field 'timestamp' is out of range") from None


def _encodable(text: str) -> bool:
    """True when ``text`` has no NUL and UTF-8 can encode it (no lone surrogate)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Change(StrEnum):
    """What applying a record did to the index."""

    NONE = "none"  # stale or repeated: nothing changed
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"  # the subject's features for the purpose must be erased


class ConsentIndex:
    """Latest consent decision per (purpose, subject digest) of one domain."""

    def __init__(self, contract: DomainContract, key: bytes | None = None) -> None:
        if key is not None and len(key) < 32:
            raise ValueError("the consent index key needs 32 bytes")
        self._key = key or secrets.token_bytes(32)
        self.purposes = frozenset(p.purpose for p in contract.products)
        # purpose -> the unit types of the products that declare it (for normalising)
        self._unit_types = {
            purpose: sorted(
                {_unit_type(p) for p in contract.products if p.purpose == purpose}, key=str
            )
            for purpose in self.purposes
        }
        # purpose -> digest -> (timestamp, granted)
        self._states: dict[str, dict[bytes, tuple[float, bool]]] = {p: {} for p in self.purposes}

    def digest(self, unit_key: bytes) -> bytes:
        """Keyed digest of a normalised privacy-unit value."""
        return hashlib.blake2b(unit_key, key=self._key, digest_size=DIGEST_BYTES).digest()

    def apply(self, record: ConsentRecord) -> Change:
        """Record ``record`` if it is newer than what is held; says what changed."""
        states = self._states[record.purpose]
        granted = record.status is ConsentStatus.GRANTED
        change = Change.NONE
        for kind in self._unit_types[record.purpose]:
            digest = self.digest(normalise(record.subject, kind).encode())
            held = states.get(digest)
            if held is not None:
                held_at, held_granted = held
                if record.timestamp < held_at:
                    continue  # stale: a later decision is held
                if record.timestamp == held_at and (granted or not held_granted):
                    continue  # a repeat, or a grant tied with a withdrawal (which wins)
            states[digest] = (record.timestamp, granted)
            if held is None or held[1] != granted:
                change = Change.GRANTED if granted else Change.WITHDRAWN
        return change

    def allows(self, product: DataProduct, unit_key: bytes) -> str | None:
        """None when ``product`` may process the subject of ``unit_key``, else the reason."""
        states = self._states.get(product.purpose)
        held = states.get(self.digest(unit_key)) if states else None
        if held is None:
            return CONSENT_MISSING if product.consent is ConsentMode.OPT_IN else None
        return None if held[1] else CONSENT_WITHDRAWN

    def counts(self) -> dict[str, dict[str, int]]:
        """Subjects per purpose and decision (for metrics; no digests)."""
        return {
            purpose: {
                "granted": sum(1 for _, granted in states.values() if granted),
                "withdrawn": sum(1 for _, granted in states.values() if not granted),
            }
            for purpose, states in sorted(self._states.items())
        }


def _unit_type(product: DataProduct) -> FieldType:
    unit = product.field(product.privacy_unit)
    assert unit is not None  # the contract guarantees it
    return unit.type
