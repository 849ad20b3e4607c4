"""Pure pseudonymisation functions: keyed tokens and quasi-identifier generalisation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from datetime import UTC, date, datetime
from typing import Protocol

from domains.contract import FieldType, Generalisation

TOKEN_BYTES = 16  # 128-bit tokens


class Tokeniser:
    """Keyed HMAC-SHA256 tokens, truncated to 128 bits, prefixed with the key version.

    The same identifier gives the same token within a domain and key version, and
    unrelated tokens in two domains (their keys are derived independently).
    """

    def __init__(self, key: bytes, version: int) -> None:
        if len(key) < 32:
            raise ValueError(f"token key is {len(key)} bytes; 32 are required")
        self._key = key
        self._prefix = f"k{version}."

    def token(self, value: str, kind: FieldType = FieldType.STRING) -> str:
        """The pseudonymous token of ``value`` (normalised for its field type)."""
        digest = hmac.new(self._key, normalise(value, kind).encode(), hashlib.sha256).digest()
        encoded = base64.b32encode(digest[:TOKEN_BYTES]).decode("ascii").rstrip("=").lower()
        return self._prefix + encoded

    def at(self, event_time: float) -> Tokeniser:
        """This tokeniser (a single key version applies at every event time)."""
        return self

    def __repr__(self) -> str:
        return f"Tokeniser(prefix={self._prefix!r}, key=<redacted>)"


class TokenSource(Protocol):
    """Gives the tokeniser for an event time (one key version, or a rotating key ring)."""

    def at(self, event_time: float) -> Tokeniser:
        """The tokeniser that applies to an event at ``event_time``."""
        ...


def normalise(value: str, kind: FieldType) -> str:
    """Canonical form so that trivially different spellings share a token."""
    stripped = value.strip()
    return stripped.lower() if kind is FieldType.EMAIL else stripped


def generalise(value: object, rule: Generalisation, event_time: datetime) -> str | int:
    """Coarsen a validated quasi-identifier value as ``rule`` declares."""
    if rule.method == "ipv4_prefix":
        network = ipaddress.IPv4Network(f"{value}/{rule.bits}", strict=False)
        return str(network)
    if rule.method == "prefix":
        return str(value)[: rule.length]
    if rule.method == "age_band":
        assert isinstance(value, date)
        return age_band(value, event_time.date(), rule.width)
    assert isinstance(value, datetime)
    epoch = int(value.timestamp())
    return epoch - epoch % rule.seconds


def age_band(birth: date, on: date, width: int) -> str:
    """Age on ``on`` as a ``width``-year band such as ``"30-39"``."""
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    age = max(age, 0)
    low = age - age % width
    return f"{low}-{low + width - 1}"


def utc_from_epoch(seconds: float) -> datetime:
    """A timezone-aware UTC datetime from epoch seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)
