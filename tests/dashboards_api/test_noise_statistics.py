"""Statistical tests of the noise that ``DiscreteLaplaceCount`` releases.

OpenDP's sampler cannot be seeded, so every assertion is a hypothesis test at a stated
level, and the module's false-failure rate is their union bound: at most 2e-7 (each test
states its share), below the 1e-6 the house style asks for. A correct mechanism fails here
less than once in five million runs; a wrong scale, a wrong interval or a privacy loss
above the declared epsilon fails with overwhelming probability at these sample sizes.

The draws are shared: for each sensitivity ``s`` (1 and 20, at epsilon 1) one fixture makes
``DRAWS`` releases of the exact count ``TRUTH`` (dataset D) and ``DRAWS`` of ``TRUTH + s``
(its neighbour D'). One release costs ~80 us of FFI, so 4 x 50,000 draws take ~16 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import NamedTuple

import numpy as np
import pytest
from scipy import stats

from dashboards_api.mechanisms import DiscreteLaplaceCount

EPSILON = Decimal("1")
TRUTH = 1_000
DRAWS = 50_000  # per dataset and sensitivity
LEVEL = 1e-9  # per one-sided bound or per test statistic (see the module docstring)


class Sample(NamedTuple):
    """Releases of the neighbouring counts ``TRUTH`` and ``TRUTH + sensitivity``."""

    mechanism: DiscreteLaplaceCount
    released_d: np.ndarray
    released_d_prime: np.ndarray

    @property
    def noise(self) -> np.ndarray:
        """Every release minus the exact count it was drawn for."""
        shift = self.mechanism.sensitivity
        return np.concatenate([self.released_d - TRUTH, self.released_d_prime - TRUTH - shift])


@pytest.fixture(scope="module")
def sample() -> Callable[[int], Sample]:
    """Draws per sensitivity, made once per module on first use."""
    made: dict[int, Sample] = {}

    def get(sensitivity: int) -> Sample:
        if sensitivity not in made:
            mech = DiscreteLaplaceCount(EPSILON, sensitivity)
            d = np.fromiter((mech.release(TRUTH).value for _ in range(DRAWS)), np.int64, DRAWS)
            d_prime = np.fromiter(
                (mech.release(TRUTH + sensitivity).value for _ in range(DRAWS)), np.int64, DRAWS
            )
            made[sensitivity] = Sample(mech, d, d_prime)
        return made[sensitivity]

    return get


def cdf(k: float, scale: float) -> float:
    """P(Z <= k) of discrete Laplace noise Z, P(Z = z) proportional to exp(-|z| / scale)."""
    alpha = math.exp(-1 / scale)
    k = math.floor(k)
    if k >= 0:
        return 1 - alpha ** (k + 1) / (1 + alpha)
    return alpha ** (-k) / (1 + alpha)


def coverage(half_width: float, scale: float) -> float:
    """P(|Z| <= half_width) in closed form."""
    return cdf(half_width, scale) - cdf(-math.floor(half_width) - 1, scale)


def clopper_pearson(successes: int, trials: int, level: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds, each failing with probability at most ``level``."""
    low = 0.0 if successes == 0 else float(stats.beta.ppf(level, successes, trials - successes + 1))
    high = (
        1.0
        if successes == trials
        else float(stats.beta.ppf(1 - level, successes + 1, trials - successes))
    )
    return low, high


@pytest.mark.parametrize("sensitivity", [1, 20])
def test_noise_is_discrete_laplace_of_the_claimed_scale(
    sample: Callable[[int], Sample], sensitivity: int
) -> None:
    """Release minus truth follows discrete Laplace with scale sensitivity / epsilon: a
    chi-square goodness-of-fit over bins with >= 50 expected draws, and P(noise = 0) against
    (1 - a) / (1 + a), a = exp(-1 / scale). False failure <= 2e-9 per sensitivity."""
    s = sample(sensitivity)
    scale = s.mechanism.scale
    assert scale == pytest.approx(sensitivity / float(EPSILON), rel=1e-12)  # or a few ulps more
    noise = s.noise
    n = noise.size
    # Bins of width ceil(scale / 4) centred on 0, out to where a bin expects < 50 draws;
    # the two tails beyond are one bin each. Fixed by (scale, n) before looking at the data.
    width = math.ceil(scale / 4)
    edges = [-(width // 2)]  # bin i is [edges[i], edges[i + 1]); the tails are open

    def enough(low: int, high: int) -> bool:  # the bin [low, high) and the tail beyond it
        inner = cdf(high - 1, scale) - cdf(low - 1, scale)
        tail = cdf(low - 1, scale) if high <= 0 else 1 - cdf(high - 1, scale)
        return min(inner, tail) * n >= 50

    while enough(edges[0] - width, edges[0]):
        edges.insert(0, edges[0] - width)
    while enough(edges[-1], edges[-1] + width):
        edges.append(edges[-1] + width)
    probabilities = np.diff([0.0, *(cdf(e - 1, scale) for e in edges), 1.0])
    observed = np.bincount(np.searchsorted(edges, noise, side="right"), minlength=len(edges) + 1)
    assert len(observed) >= 8 and probabilities.min() * n >= 50
    chi2 = stats.chisquare(observed, probabilities * n)
    assert chi2.pvalue >= LEVEL, f"noise is not discrete Laplace({scale}): {chi2}"

    alpha = math.exp(-1 / scale)
    p_zero = (1 - alpha) / (1 + alpha)
    low, high = clopper_pearson(int((noise == 0).sum()), n, LEVEL / 2)
    assert low <= p_zero <= high, f"P(noise=0) in [{low:.5f}, {high:.5f}], claimed {p_zero:.5f}"


@pytest.mark.parametrize("sensitivity", [1, 20])
def test_claimed_95_percent_interval_covers_the_truth(
    sample: Callable[[int], Sample], sensitivity: int
) -> None:
    """The claimed interval value +- ci95_half_width is the narrowest integer interval with
    coverage >= 95% (so the tolerance above 95% is discreteness only, <= 2.5 points here),
    and releases cover the exact count at that rate. False failure <= 1e-9 per sensitivity."""
    s = sample(sensitivity)
    half_width, scale = s.mechanism.ci95_half_width, s.mechanism.scale
    claimed = coverage(half_width, scale)
    assert 0.95 <= claimed <= 0.975
    assert coverage(math.floor(half_width) - 1, scale) < 0.95  # not wider than needed
    covered = int((np.abs(s.noise) <= half_width).sum())
    low, high = clopper_pearson(covered, s.noise.size, LEVEL / 2)
    assert low <= claimed <= high, f"coverage in [{low:.4f}, {high:.4f}], claimed {claimed:.4f}"


@pytest.mark.parametrize("sensitivity", [1, 20])
def test_empirical_epsilon_lower_bound_stays_below_the_claim(
    sample: Callable[[int], Sample], sensitivity: int
) -> None:
    """Epsilon audit on neighbours D = TRUTH and D' = TRUTH + sensitivity: for every output
    bin and both directions, log(CP lower bound of P[M(D) in bin] / CP upper bound of
    P[M(D') in bin]) is a lower confidence bound on the privacy loss of that event; the largest
    over bins with >= 100 draws on each side must not exceed the declared epsilon.

    Candidate bins are fixed in advance (21 bins of width ``sensitivity`` aligned on the truth,
    two directions, two bounds each at 1e-9), so the false failure is <= 8.4e-8 per
    sensitivity. The audit has power: the true loss on every bin below the truth is exactly
    epsilon, and the bound found must reach 0.8 epsilon (expected ~0.9; falling short needs a
    deviation of more than 10 standard errors).
    """
    s = sample(sensitivity)
    epsilon = float(EPSILON)
    n = DRAWS
    # Bin j holds outputs in [TRUTH + (j - 1) * sensitivity + 1, TRUTH + j * sensitivity].
    index_d = np.floor_divide(s.released_d - TRUTH - 1, sensitivity) + 1
    index_d_prime = np.floor_divide(s.released_d_prime - TRUTH - 1, sensitivity) + 1
    worst, where = -math.inf, None
    for j in range(-10, 11):
        count_d = int((index_d == j).sum())
        count_d_prime = int((index_d_prime == j).sum())
        if min(count_d, count_d_prime) < 100:
            continue
        low_d, high_d = clopper_pearson(count_d, n, LEVEL)
        low_d_prime, high_d_prime = clopper_pearson(count_d_prime, n, LEVEL)
        for bound, direction in (
            (math.log(low_d / high_d_prime), "D/D'"),
            (math.log(low_d_prime / high_d), "D'/D"),
        ):
            if bound > worst:
                worst, where = bound, (j, direction, count_d, count_d_prime)
    assert worst <= epsilon, f"privacy loss >= {worst:.4f} > {epsilon} at bin {where}"
    assert worst >= 0.8 * epsilon, (
        f"no power, or more noise than claimed: best lower bound {worst:.4f} at {where}"
    )
