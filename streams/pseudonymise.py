"""Pure pseudonymisation functions: keyed tokens and quasi-identifier generalisation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, date, datetime
from typing import Protocol

from domains.contract import FieldType, Generalisation

TOKEN_BYTES = 16  # 128-bit tokens
RECENT_TOKENS = 65_536


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
        # Recent identifiers' tokens: subjects recur, and base32 encoding is pure Python
        # (7 us, more than the HMAC). Process memory only; cleared when full.
        self._recent: dict[str, str] = {}

    def token(self, value: str, kind: FieldType = FieldType.STRING) -> str:
        """The pseudonymous token of ``value`` (normalised for its field type)."""
        canonical = normalise(value, kind)
        found = self._recent.get(canonical)
        if found is None:
            digest = hmac.new(self._key, canonical.encode(), hashlib.sha256).digest()
            encoded = base64.b32encode(digest[:TOKEN_BYTES]).decode("ascii").rstrip("=").lower()
            found = self._prefix + encoded
            if len(self._recent) >= RECENT_TOKENS:
                self._recent.clear()
            self._recent[canonical] = found
        return found

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
        return ipv4_prefix(str(value), rule.bits)
    if rule.method == "prefix":
        return str(value)[: rule.length]
    if rule.method == "age_band":
        assert isinstance(value, date)
        return age_band(value, event_time.date(), rule.width)
    assert isinstance(value, datetime)
    epoch = int(value.timestamp())
    return epoch - epoch % rule.seconds


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_PATTERN = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)


def is_ipv4(value: str) -> bool:
    """True for a dotted-quad IPv4 address, as strict as ``ipaddress.IPv4Address``.

    Four decimal octets <= 255 without leading zeros; one regex match, a tenth of the
    cost of ``ipaddress`` on the hot path.
    """
    return IPV4_PATTERN.fullmatch(value) is not None


def ipv4_prefix(value: str, bits: int) -> str:
    """The ``/bits`` network of a valid IPv4 address, e.g. ``"203.0.113.0/24"``."""
    if not is_ipv4(value):
        raise ValueError("not an IPv4 address")
    octets = value.split(".")
    if bits % 8 == 0:  # whole octets: string work only
        kept = bits // 8
        return ".".join(octets[:kept] + ["0"] * (4 - kept)) + f"/{bits}"
    address = int.from_bytes(bytes(int(o) for o in octets), "big")
    network = address & (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    return ".".join(str(b) for b in network.to_bytes(4, "big")) + f"/{bits}"


def age_band(birth: date, on: date, width: int) -> str:
    """Age on ``on`` as a ``width``-year band such as ``"30-39"``."""
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    age = max(age, 0)
    low = age - age % width
    return f"{low}-{low + width - 1}"


def utc_from_epoch(seconds: float) -> datetime:
    """A timezone-aware UTC datetime from epoch seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)
