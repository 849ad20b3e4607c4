"""DP-FedAvg defaults: noise sized for the round's domains, dropout accounting, adaptive
clipping, and the refusal of a noise level that leaves the model useless."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from federation.dp import (
    NOISE_TO_SIGNAL_LIMIT,
    Accountant,
    AdaptiveClipping,
    DPConfig,
    gaussian_noise,
    noise_floor,
    outlook,
    refuse_useless,
    split_noise_multiplier,
)
from federation.errors import InvalidDPConfig, NoiseDrownsSignal

CONFIG = DPConfig(noise_multiplier=1.5, clipping_norm=2.0, delta=1e-5, min_domains=2)


def test_noise_sized_for_the_domains_taking_part_adds_up_to_the_round_scale() -> None:
    """Six domains each adding OpenDP noise of domain_scale(6) give a sum whose standard
    deviation is z * C (99.9% chi-square interval, false-failure rate 0.1%); sized for
    min-domains = 2 the same sum would hold sqrt(3) times that."""
    size, domains = 20_000, 6
    total = np.zeros(size)
    for _ in range(domains):
        total += gaussian_noise(np.zeros(size), CONFIG.domain_scale(domains))
    low, high = stats.chi2.ppf([0.0005, 0.9995], size - 1)
    expected = CONFIG.sum_noise_scale**2
    assert low * expected / (size - 1) < total.var(ddof=1) < high * expected / (size - 1)
    oversized = CONFIG.domain_noise_scale * math.sqrt(domains)
    assert oversized == pytest.approx(math.sqrt(3) * CONFIG.sum_noise_scale)
    with pytest.raises(InvalidDPConfig):
        CONFIG.domain_scale(0)


def test_a_round_with_dropouts_is_charged_for_the_noise_it_holds() -> None:
    """A round released with m of n vectors holds z*C*sqrt(m/n) and costs n/m times rho;
    full rounds cost what spent() says; impossible counts are refused."""
    accountant = Accountant(CONFIG)
    full = accountant.spent_rounds([(5, 5)] * 3)
    assert full.rho == pytest.approx(accountant.spent(3).rho, rel=1e-9)
    assert full.rho == pytest.approx(3 / (2 * 1.5**2), rel=1e-6)
    dropped = accountant.spent_rounds([(5, 5), (5, 5), (3, 5)])
    assert dropped.rho == pytest.approx((2 + 5 / 3) / (2 * 1.5**2), rel=1e-6)
    assert dropped.epsilon > full.epsilon
    assert accountant.spent_rounds([]).epsilon == 0.0
    for bad in [(0, 5), (6, 5)]:
        with pytest.raises(InvalidDPConfig):
            accountant.spent_rounds([bad])


def test_the_noise_floor_is_the_threshold_or_min_domains() -> None:
    """A released sum holds at least max(threshold, min-domains) vectors' noise."""
    assert noise_floor(3, 2) == 3
    assert noise_floor(2, 4) == 4
    with pytest.raises(InvalidDPConfig):
        noise_floor(0, 2)


@pytest.mark.parametrize("z,bit_noise", [(1.0, 1.0), (3.0, 3.0), (0.5, 2.0)])
def test_the_bits_and_the_update_share_one_round_budget(z: float, bit_noise: float) -> None:
    """rho of the update (sensitivity 1, z_u) plus rho of the centred bits (sensitivity
    1/2, bit_noise) equals the round's 1 / (2 z^2)."""
    z_update = split_noise_multiplier(z, bit_noise)
    assert z_update > z
    assert 1 / (2 * z_update**2) + 0.25 / (2 * bit_noise**2) == pytest.approx(1 / (2 * z**2))


def test_a_bit_noise_that_would_spend_the_whole_budget_is_refused() -> None:
    """Bit noise at or below z / 2 leaves nothing for the update: refused, and so are a
    non-positive norm, quantile or learning rate."""
    with pytest.raises(InvalidDPConfig, match="half the noise multiplier"):
        split_noise_multiplier(2.0, 1.0)
    with pytest.raises(InvalidDPConfig):
        split_noise_multiplier(0.0, 1.0)
    for changes in [{"norm": 0.0}, {"quantile": 1.0}, {"learning_rate": 0.0}]:
        with pytest.raises(InvalidDPConfig):
            AdaptiveClipping(**{"norm": 1.0, "noise_multiplier": 1.0, **changes})


def test_one_step_moves_the_norm_geometrically() -> None:
    """All bits below the norm shrink it by exp(-eta/2); all above grow it by exp(eta/2)."""
    clipping = AdaptiveClipping(norm=4.0, noise_multiplier=1.0)
    assert clipping.step(5 * 0.5, 5) == pytest.approx(4.0 * math.exp(-0.1))
    clipping = AdaptiveClipping(norm=4.0, noise_multiplier=1.0)
    assert clipping.step(5 * -0.5, 5) == pytest.approx(4.0 * math.exp(0.1))
    assert clipping.bit(clipping.norm) == 0.5 and clipping.bit(clipping.norm * 1.01) == -0.5
    with pytest.raises(InvalidDPConfig):
        clipping.step(0.0, 0)


def test_adaptive_clipping_finds_the_median_update_norm() -> None:
    """From C = 10 and update norms around 0.5 (lognormal, sigma 0.5), six domains' bits
    noised with OpenDP bring C to the median: the mean log-norm of rounds 80..100 is
    within log(1.5) of log(0.5). Its stationary spread is about 0.08 (AR(1) with
    restoring 0.16 and per-round noise 0.05), so log(1.5) is ~5 sigma: false failures
    below 1e-6. The norms are data (numpy, seeded); the bits' noise is OpenDP's."""
    rng = np.random.default_rng(21)
    domains = 6
    clipping = AdaptiveClipping(norm=10.0, noise_multiplier=1.0)
    history = []
    for _ in range(100):
        norms = rng.lognormal(math.log(0.5), 0.5, domains)
        bits = [clipping.bit(float(n)) for n in norms]
        noised = [
            float(gaussian_noise(np.array([b]), clipping.domain_bit_noise(domains))[0])
            for b in bits
        ]
        history.append(clipping.step(sum(noised), domains))
    assert history[30] < history[0]
    settled = float(np.mean(np.log(history[80:])))
    assert abs(settled - math.log(0.5)) < math.log(1.5)


def test_a_million_parameters_over_five_domains_is_refused_without_force() -> None:
    """At z = 1, 1M parameters, 5 domains and 10 rounds the final model's noise is ~63x
    any signal it can learn: refused (code dp_noise_drowns_signal) unless forced."""
    expected = outlook(CONFIG, participants=5, floor=3, parameters=1_000_000, rounds=10)
    assert expected.per_round == pytest.approx(1.5 * 1000 / 5)
    assert expected.final_model == pytest.approx(expected.per_round / math.sqrt(10))
    assert expected.useless and expected.epsilon_worst > expected.epsilon
    with pytest.raises(NoiseDrownsSignal, match="--force") as refused:
        refuse_useless(expected, force=False)
    assert refused.value.code == "dp_noise_drowns_signal"
    refuse_useless(expected, force=True)


def test_a_small_model_over_six_domains_passes() -> None:
    """A 50-parameter logistic regression over six domains and 30 rounds at z = 1.5 (with
    adaptive clipping's larger update multiplier) stays below the limit."""
    adaptive = AdaptiveClipping(norm=1.0, noise_multiplier=1.5)
    expected = outlook(CONFIG, 6, 3, 50, 30, adaptive)
    assert expected.update_noise_multiplier == pytest.approx(1.5 * 2 / math.sqrt(3))
    assert expected.final_model < NOISE_TO_SIGNAL_LIMIT and not expected.useless
    refuse_useless(expected, force=False)
    assert "noise sized for 6 of 6 domains" in expected.describe()
    oversized = outlook(CONFIG, 6, 3, 50, 30, adaptive, sized_for=2)
    assert oversized.per_round == pytest.approx(math.sqrt(3) * expected.per_round)
    with pytest.raises(InvalidDPConfig):
        outlook(CONFIG, 6, 7, 50, 30)
