"""Differentially private federated averaging: clipping, OpenDP noise, accounting.

Privacy unit: one domain's whole contribution to a round (add or remove a domain).
Every domain clips its model update to L2 norm ``clipping_norm`` (C) — the bound that
also limits what any one record or subject inside the domain can change — and, with
client-side DP, adds Gaussian noise from OpenDP of standard deviation
``noise_multiplier * C / sqrt(min_domains)``. Under SecAgg+ the coordinator only sees
the sum of the updates, whose noise has standard deviation at least
``noise_multiplier * C`` whenever at least ``min_domains`` domains are in it (a round
with fewer is abandoned before unmasking). So each released round is a Gaussian
mechanism of sensitivity C and scale ``noise_multiplier * C``: rho = 1 / (2 z^2) in
zero-concentrated DP, composed over rounds and converted to (epsilon, delta) by OpenDP.

DP rounds average the domains uniformly: weighting by example counts would multiply a
domain's sensitivity by its weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from federation.errors import InvalidDPConfig

Clipping = Literal["client", "server"]


@dataclass(frozen=True)
class DPConfig:
    """DP-FedAvg parameters of a run."""

    noise_multiplier: float
    """z: noise standard deviation of a round's sum, in units of ``clipping_norm``."""
    clipping_norm: float
    """C: L2 bound on each domain's update per round (also applied without DP)."""
    delta: float
    """The delta of the reported (epsilon, delta) guarantee."""
    min_domains: int
    """The fewest domains whose noise a released round sum contains."""
    clipping: Clipping = "client"
    """Where updates are clipped and noised: each domain (works with SecAgg+), or the
    coordinator after seeing them in clear (plain aggregation only)."""

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0 or not math.isfinite(self.noise_multiplier):
            raise InvalidDPConfig(
                f"dp-noise-multiplier must be >= 0 (0 disables DP), got {self.noise_multiplier}"
            )
        if not self.clipping_norm > 0 or not math.isfinite(self.clipping_norm):
            raise InvalidDPConfig(f"clipping-norm must be > 0, got {self.clipping_norm}")
        if not 0 < self.delta < 1:
            raise InvalidDPConfig(f"dp-delta must be in (0, 1), got {self.delta}")
        if self.min_domains < 1:
            raise InvalidDPConfig(f"min-domains must be >= 1, got {self.min_domains}")

    @property
    def enabled(self) -> bool:
        """True when rounds are noised."""
        return self.noise_multiplier > 0

    @property
    def domain_noise_scale(self) -> float:
        """Standard deviation of the noise one domain adds per coordinate (client-side)."""
        return self.noise_multiplier * self.clipping_norm / math.sqrt(self.min_domains)

    @property
    def sum_noise_scale(self) -> float:
        """Guaranteed standard deviation of the noise in a released round sum."""
        return self.noise_multiplier * self.clipping_norm


def clip(update: NDArray[np.floating], norm: float) -> tuple[NDArray[np.float64], bool]:
    """``update`` scaled down to L2 norm ``norm`` if longer; and whether it was."""
    vector = np.asarray(update, dtype=np.float64)
    length = float(np.linalg.norm(vector))
    if not math.isfinite(length):
        raise InvalidDPConfig("the update holds NaN or infinite values")
    if length <= norm:
        return vector, False
    return vector * (norm / length), True


def gaussian_noise(vector: NDArray[np.floating], scale: float) -> NDArray[np.float64]:
    """``vector`` plus OpenDP Gaussian noise of standard deviation ``scale`` per element.

    OpenDP samples each element exactly (float32 here: the model's own precision); it
    takes about 30 us per element on this machine, so noise for a 1M-parameter model
    costs about 30 s per round and domain.
    """
    values = np.asarray(vector, dtype=np.float32)
    if scale <= 0:
        return values.astype(np.float64)
    mechanism = _vector_gaussian(len(values), float(scale))
    return np.asarray(mechanism(values), dtype=np.float64)


@cache
def _vector_gaussian(size: int, scale: float):  # type: ignore[no-untyped-def]
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = (
        dp.vector_domain(dp.atom_domain(T="f32", nan=False), size=size),
        dp.l2_distance(T="f32"),
    )
    return space >> dp.m.then_gaussian(scale=scale)


@dataclass(frozen=True)
class PrivacySpent:
    """Privacy loss of some rounds: zCDP rho and the (epsilon, delta) it implies."""

    rounds: int
    rho: float
    epsilon: float
    delta: float


class Accountant:
    """zCDP accounting of DP-FedAvg rounds with OpenDP's composition and conversion."""

    def __init__(self, config: DPConfig) -> None:
        if not config.enabled:
            raise InvalidDPConfig("accounting needs dp-noise-multiplier > 0")
        self.config = config

    def spent(self, rounds: int) -> PrivacySpent:
        """The loss of ``rounds`` released rounds."""
        import opendp.prelude as dp

        dp.enable_features("contrib")
        if rounds < 1:
            return PrivacySpent(0, 0.0, 0.0, self.config.delta)
        space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)
        one = space >> dp.m.then_gaussian(scale=self.config.sum_noise_scale)
        composed = dp.c.make_composition([one] * rounds)
        rho = float(composed.map(self.config.clipping_norm))
        curve = dp.c.make_zCDP_to_approxDP(composed).map(self.config.clipping_norm)
        epsilon = float(curve.epsilon(self.config.delta))
        return PrivacySpent(rounds, rho, epsilon, self.config.delta)
