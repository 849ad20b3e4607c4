"""Exact budget arithmetic."""

from __future__ import annotations

import pytest

from dashboards_api.budget import from_micro, to_micro


def test_five_tenths_fit_half_exactly() -> None:
    """Five releases of 0.1 sum to exactly a budget of 0.5 (no float drift)."""
    assert 5 * to_micro("0.1") == to_micro("0.5")


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "0.0000001", "abc"])
def test_refuses_bad_epsilons(bad: str) -> None:
    """Negative, non-finite, over-precise and non-numeric epsilons are refused."""
    with pytest.raises(ValueError, match=r"epsilon|decimal"):
        to_micro(bad)


@pytest.mark.parametrize(
    ("units", "text"),
    [(100_000, "0.1"), (100_000_000, "100"), (0, "0"), (1, "0.000001"), (1_500_000, "1.5")],
)
def test_from_micro_is_plain_decimal(units: int, text: str) -> None:
    """Micro-units render as plain decimal strings without exponent."""
    assert from_micro(units) == text
