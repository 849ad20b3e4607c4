"""Checks of command-line values, run before a command imports anything slow.

A value no command could use (an empty or non-UTF-8 subject, a tag that is not a privacy
tag, an entity id with no kind) is refused here in milliseconds with ``InvalidCliValue``
(code ``invalid_cli_value``), instead of after Feast or the catalog took seconds to load.
Messages never quote a subject: it is a personal identifier.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

from governance.subjects import check_subject
from infra.errors import InvalidCliValue

MAX_TEXT_CHARS = 1_024  # entity ids, search text: longer is a mistake, not a name


def subject_option(option: str, subject: str) -> str:
    """``subject`` when ``check_subject`` accepts it, else ``InvalidCliValue`` naming
    ``option`` (never the value)."""
    try:
        check_subject(subject)
    except ValueError as exc:
        raise InvalidCliValue(f"{option}: {exc}") from None
    return subject


def text_option(option: str, value: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``value`` when it is non-empty printable UTF-8 text of at most ``max_chars``."""
    if not value.strip():
        raise InvalidCliValue(f"{option} is empty")
    if len(value) > max_chars:
        raise InvalidCliValue(f"{option} is {len(value)} characters long; at most {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidCliValue(
            f"{option} holds text UTF-8 cannot encode (not UTF-8 input)"
        ) from None
    if any(not ch.isprintable() for ch in value):
        raise InvalidCliValue(f"{option} holds a control character (NUL, newline, ...)")
    return value


def one_of(option: str, value: str, choices: Iterable[str]) -> str:
    """``value`` when it is one of ``choices``; else the choices and the closest ones."""
    known = list(choices)
    if value in known:
        return value
    shown = text_option(option, value, 200)  # a long or binary value is not echoed
    close = difflib.get_close_matches(shown.lower(), known, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise InvalidCliValue(f"{option} {shown!r} is not one of {', '.join(known)}{hint}")


def entity_ref(option: str, value: str, kinds: Iterable[str]) -> str:
    """A catalog reference ``kind:name`` (or ``kind:name#column``) whose kind is one of
    ``kinds``: malformed ones are refused before the catalog is assembled."""
    text_option(option, value)
    kind, sep, name = value.partition(":")
    if not sep or not name.strip() or name.startswith("#") or name.endswith("#"):
        raise InvalidCliValue(
            f"{option} {value!r} is not an entity id: write KIND:NAME, e.g. "
            "product:shop.orders or field:shop.orders.zip_code"
        )
    one_of(f"{option}'s kind", kind, kinds)
    return value


def finite(option: str, value: float, low: float, high: float) -> float:
    """``value`` when it is a number in [``low``, ``high``]: ``nan`` and ``inf``, which
    click's ranges let through, are refused."""
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidCliValue(f"{option} must be a number from {low:g} to {high:g}")
    return value
