"""Exact privacy-budget arithmetic in integer micro-epsilon units.

Budgets and costs are declared as decimal strings ("0.1") and converted once to
integers (100_000 micro-epsilon), so five releases of 0.1 fit a budget of 0.5
exactly: no float drift.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from functools import lru_cache

MICRO = 1_000_000


# Pure and called a few times per answer with a handful of distinct values: remembered
# (typed, so True is not taken for 1).
@lru_cache(maxsize=4_096, typed=True)
def to_micro(value: str | int | Decimal) -> int:
    """Integer micro-epsilon of a decimal epsilon; refuses more than 6 decimal places."""
    try:
        exact = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a decimal number") from exc
    if not exact.is_finite() or exact < 0:
        raise ValueError(f"epsilon must be a finite non-negative decimal, got {value!r}")
    scaled = exact * MICRO
    if scaled != scaled.to_integral_value():
        raise ValueError(f"epsilon {value!r} has more than 6 decimal places")
    return int(scaled)


@lru_cache(maxsize=4_096)
def from_micro(units: int) -> str:
    """Decimal epsilon of integer micro-epsilon units, as an exact plain string ("0.1")."""
    text = format(Decimal(units) / MICRO, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
