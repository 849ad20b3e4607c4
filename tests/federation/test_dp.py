"""DP-FedAvg: clipping, OpenDP noise (a statistical test), zCDP accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from federation.dp import Accountant, DPConfig, clip, gaussian_noise
from federation.errors import InvalidDPConfig


def test_clipping_bounds_the_norm_and_keeps_short_updates() -> None:
    """Long updates are scaled to the norm (direction kept); short ones are untouched."""
    long = np.array([300.0, 400.0])
    clipped, was = clip(long, 10.0)
    assert was and np.linalg.norm(clipped) == pytest.approx(10.0)
    assert np.allclose(clipped / np.linalg.norm(clipped), long / 500.0)
    short, was = clip(np.array([1.0, 2.0]), 10.0)
    assert not was and np.array_equal(short, [1.0, 2.0])
    with pytest.raises(InvalidDPConfig):
        clip(np.array([np.inf]), 1.0)


def test_opendp_noise_has_the_declared_scale() -> None:
    """20,000 draws at scale 2.5: mean and variance within their 99.9% intervals
    (false-failure rate about 0.2% for the two checks together)."""
    noise = gaussian_noise(np.zeros(20_000), 2.5)
    n = len(noise)
    assert abs(noise.mean()) < stats.norm.ppf(0.9995) * 2.5 / math.sqrt(n)
    low, high = stats.chi2.ppf([0.0005, 0.9995], n - 1)
    variance = noise.var(ddof=1)
    assert low * 6.25 / (n - 1) < variance < high * 6.25 / (n - 1)
    assert np.array_equal(gaussian_noise(np.ones(3), 0.0), np.ones(3))


def test_noise_per_domain_adds_up_to_the_round_scale() -> None:
    """min_domains domains each adding z*C/sqrt(k) give a sum of scale z*C."""
    config = DPConfig(noise_multiplier=1.2, clipping_norm=5.0, delta=1e-5, min_domains=4)
    assert config.domain_noise_scale * math.sqrt(4) == pytest.approx(config.sum_noise_scale)
    assert config.sum_noise_scale == pytest.approx(6.0)


def test_accounting_matches_the_gaussian_mechanism() -> None:
    """rho = R / (2 z^2) (up to OpenDP's conservative rounding); epsilon grows with rounds
    and matches the zCDP conversion bound rho + 2 sqrt(rho ln(1/delta)) from below."""
    config = DPConfig(noise_multiplier=1.1, clipping_norm=10.0, delta=1e-5, min_domains=3)
    accountant = Accountant(config)
    one, ten = accountant.spent(1), accountant.spent(10)
    assert one.rho == pytest.approx(1 / (2 * 1.1**2), rel=1e-6)
    assert ten.rho == pytest.approx(10 * one.rho, rel=1e-6)
    assert one.epsilon < ten.epsilon
    bound = ten.rho + 2 * math.sqrt(ten.rho * math.log(1 / 1e-5))
    assert ten.epsilon <= bound + 1e-9
    assert accountant.spent(0).epsilon == 0.0


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"noise_multiplier": -1.0}, "dp-noise-multiplier"),
        ({"clipping_norm": 0.0}, "clipping-norm"),
        ({"delta": 1.0}, "dp-delta"),
        ({"min_domains": 0}, "min-domains"),
    ],
)
def test_bad_dp_parameters_are_refused(changes: dict[str, float], message: str) -> None:
    """Each invalid parameter is refused, naming the run-config key."""
    values = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 1e-5, "min_domains": 2}
    values.update(changes)
    with pytest.raises(InvalidDPConfig, match=message):
        DPConfig(**values)  # type: ignore[arg-type]
    with pytest.raises(InvalidDPConfig):
        Accountant(DPConfig(0.0, 1.0, 1e-5, 2))
