"""DP mechanisms, built once per query class from OpenDP (no other noise source)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import opendp.prelude as dp

dp.enable_features("contrib")

CONFIDENCE = 0.95


@dataclass(frozen=True)
class NoisyCount:
    """A released count and its two-sided 95% confidence half-width."""

    value: int
    ci95_half_width: float


class DiscreteLaplaceCount:
    """Discrete Laplace noise on an integer count of sensitivity ``sensitivity``.

    The scale is ``sensitivity / epsilon``; OpenDP's own privacy map confirms that
    one release costs at most ``epsilon`` before the mechanism is used.
    """

    def __init__(self, epsilon: Decimal, sensitivity: int = 1) -> None:
        if epsilon <= 0 or sensitivity < 1:
            raise ValueError("epsilon must be > 0 and sensitivity >= 1")
        self.epsilon = epsilon
        self.sensitivity = sensitivity
        self.scale = float(sensitivity) / float(epsilon)
        self._measurement: Any = dp.m.make_laplace(
            dp.atom_domain(T=int), dp.absolute_distance(T=int), self.scale
        )
        mapped = float(self._measurement.map(sensitivity))
        if mapped > float(epsilon) * (1 + 1e-9):
            raise ValueError(
                f"OpenDP maps this mechanism to epsilon {mapped}, above the declared {epsilon}"
            )
        self.ci95_half_width = float(
            dp.discrete_laplacian_scale_to_accuracy(self.scale, 1 - CONFIDENCE)
        )

    def release(self, exact: int) -> NoisyCount:
        """One noisy release of ``exact`` (spend must be committed before it is returned)."""
        return NoisyCount(int(self._measurement(int(exact))), self.ci95_half_width)


@cache
def discrete_laplace_count(epsilon: Decimal, sensitivity: int = 1) -> DiscreteLaplaceCount:
    """Cached mechanism per (epsilon, sensitivity): built once, used per release."""
    return DiscreteLaplaceCount(epsilon, sensitivity)
