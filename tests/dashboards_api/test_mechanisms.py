"""OpenDP discrete Laplace releases match their declared distribution."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from dashboards_api.mechanisms import DiscreteLaplaceCount


def test_refuses_nonpositive_epsilon() -> None:
    """A mechanism with epsilon <= 0 cannot be built."""
    with pytest.raises(ValueError, match="epsilon"):
        DiscreteLaplaceCount(Decimal("0"))


def test_noise_scale_and_coverage() -> None:
    """Over 4000 releases at epsilon 0.5 the noise is centred, has the discrete Laplace
    variance within 15%, and the 95% interval covers the truth at least 93% of the time.

    OpenDP's sampler cannot be seeded; the bounds are > 6 standard errors wide, so the
    false-failure rate is below 1e-8.
    """
    mech = DiscreteLaplaceCount(Decimal("0.5"))
    exact = 1000
    draws = [mech.release(exact).value - exact for _ in range(4000)]
    mean = sum(draws) / len(draws)
    var = sum(d * d for d in draws) / len(draws)
    t = 1 / mech.scale
    expected_var = 2 * math.exp(-t) / (1 - math.exp(-t)) ** 2
    assert abs(mean) < 6 * math.sqrt(expected_var / len(draws))
    assert abs(var / expected_var - 1) < 0.15
    covered = sum(abs(d) <= mech.ci95_half_width for d in draws) / len(draws)
    assert covered >= 0.93


def test_empirical_epsilon_not_above_claim() -> None:
    """Neighbouring counts (100 vs 101): the empirical log-ratio of outcome frequencies
    near the centre stays below the claimed epsilon plus sampling slack."""
    eps = 1.0
    mech = DiscreteLaplaceCount(Decimal("1.0"))
    n = 40_000
    a = [mech.release(100).value for _ in range(n)]
    b = [mech.release(101).value for _ in range(n)]
    worst = 0.0
    for outcome in range(98, 104):
        pa = a.count(outcome) / n
        pb = b.count(outcome) / n
        if pa > 0.02 and pb > 0.02:
            worst = max(worst, abs(math.log(pa / pb)))
    assert worst <= eps + 0.1
