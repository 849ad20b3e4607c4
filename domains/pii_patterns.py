"""Detectors of personal-looking values, shared by the linters, the stream processor and
the log mask.

One set of precompiled patterns (e-mail, phone, IPv4, IPv6, payment card with Luhn,
IBAN with its mod-97 check, US social security and UK national insurance numbers) used
three ways:

* ``value_kind(text)``: does a whole value look like one (the contract linter's sample
  values, the PII lint's topic samples);
* ``embedded_kind(text)``: does a free-form string *contain* one (the stream processor
  checks every ``non_personal`` free-text field of every event with it, so it is built
  for the hot path: one precompiled pre-filter search rejects ordinary ids such as
  ``ord-7f3a9c`` in well under a microsecond, and only candidates meet the detectors);
* ``mask(text)``: every occurrence replaced by a marker (the log formatter's second line
  of defence).

In ``domains`` because every layer reads it: streams must not import ``catalog``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|/\d)")
IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")
# International (+CC ...) or written with separators: bare digit runs are ids or epochs.
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d[\d ().-]{7,17}\d"
    r"|\(?0\d{1,4}\)?[ .-]\d{2,4}[ .-]?\d{2,4}(?:[ .-]\d{2,4})?"
    r"|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4})(?![\w])"
)
CARD = re.compile(r"(?<![\d-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d-])")
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
NINO = re.compile(
    r"(?<![A-Za-z0-9])[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
)
# Cheap pre-filter: every match of a detector below contains one of these (an @, digits
# around a separator, a + or ( before a digit, 13 digits in a row, two capitals before two
# digits, or a colon pair), so a value without any cannot hold one: ordinary ids and
# bare digit runs such as ``o-000000123`` stop here.
_CANDIDATE = re.compile(r"@|\d[ ().-]+\d|[+(]\d|\d{13}|[A-Z]{2} ?\d{2}|:[0-9A-Fa-f]*:")

EMAIL_KIND = "an e-mail address"
PHONE_KIND = "a phone number"
IPV4_KIND = "an IPv4 address"
IPV6_KIND = "an IPv6 address"
CARD_KIND = "a payment card number"
IBAN_KIND = "an IBAN"
NATIONAL_ID_KIND = "a national id number"


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn check (payment card numbers do)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    """True when ``text`` (spaces allowed) passes the IBAN mod-97 check."""
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _ipv4_ok(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ipv6_ok(text: str) -> bool:
    if text.count(":") < 2 or not any(c.isalnum() for c in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _card_ok(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _phone_ok(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 9 <= digits <= 15


Check = Callable[[str], bool]


def _has(char: str) -> Check:
    return lambda text: char in text


def _has_upper(text: str) -> bool:
    return text != text.lower()


def _always(text: str) -> bool:
    return True


# (kind, pattern, check of a match, cheap test of the whole text first): in precedence order.
DETECTORS: tuple[tuple[str, re.Pattern[str], Check | None, Check], ...] = (
    (EMAIL_KIND, EMAIL, None, _has("@")),
    (IBAN_KIND, IBAN, iban_ok, _has_upper),
    (CARD_KIND, CARD, _card_ok, _always),
    (NATIONAL_ID_KIND, SSN, None, _has("-")),
    (NATIONAL_ID_KIND, NINO, None, _has_upper),
    (IPV4_KIND, IPV4, _ipv4_ok, _has(".")),
    (IPV6_KIND, IPV6, _ipv6_ok, _has(":")),
    (PHONE_KIND, PHONE, _phone_ok, _always),
)


def embedded_kind(text: str) -> str | None:
    """The kind of personal value ``text`` contains (anywhere in it), or None."""
    if not _CANDIDATE.search(text):
        return None
    for kind, pattern, check, worth in DETECTORS:
        if worth(text):
            for match in pattern.finditer(text):
                if check is None or check(match.group(0)):
                    return kind
    return None


def value_kind(text: str) -> str | None:
    """The kind of personal value the whole of ``text`` (stripped) is, or None."""
    text = text.strip()
    for kind, pattern, check, _ in DETECTORS:
        match = pattern.fullmatch(text)
        if match is not None and (check is None or check(text)):
            return kind
    return None


MASKS: tuple[tuple[re.Pattern[str], Check | None, str], ...] = (
    (EMAIL, None, "<email>"),
    (IBAN, iban_ok, "<iban>"),
    (CARD, _card_ok, "<card>"),
    (SSN, None, "<national-id>"),
    (NINO, None, "<national-id>"),
    (IPV6, lambda t: _ipv6_ok(t) and not ipaddress.IPv6Address(t).is_loopback, "<ipv6>"),
    (PHONE, _phone_ok, "<phone>"),
)


def mask(text: str) -> str:
    """``text`` with every e-mail, IBAN, card, national id, IPv6 and phone replaced by a
    marker (IPv4 is left to the caller, which knows which addresses are its own)."""
    if not _CANDIDATE.search(text):
        return text
    for pattern, check, marker in MASKS:

        def replace(match: re.Match[str], check: Check | None = check, marker: str = marker) -> str:
            found = match.group(0)
            return marker if check is None or check(found) else found

        text = pattern.sub(replace, text)
    return text
