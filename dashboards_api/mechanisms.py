"""DP mechanisms, built once per query class from OpenDP (no other noise source)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import opendp.prelude as dp

dp.enable_features("contrib")

CONFIDENCE = 0.95


class NonFiniteAccuracy(ValueError):
    """A mechanism whose scale gives no finite, non-negative accuracy (a scale so small or
    so large that OpenDP's accuracy is -inf, inf or NaN): it must never release."""


def finite_accuracy(half_width: float, what: str) -> float:
    """``half_width`` when it is a finite non-negative accuracy, else NonFiniteAccuracy."""
    if not math.isfinite(half_width) or half_width < 0:
        raise NonFiniteAccuracy(
            f"{what}: OpenDP gives the noise scale no finite accuracy ({half_width}); "
            "lower epsilon_per_release"
        )
    return half_width


@dataclass(frozen=True)
class NoisyCount:
    """A released count and its two-sided 95% confidence half-width."""

    value: int
    ci95_half_width: float


def calibrate(
    build: Callable[[float], Any],
    scale: float,
    cost: Callable[[Any], Decimal],
    epsilon: Decimal,
) -> tuple[Any, float]:
    """The measurement ``build(scale)`` at the smallest float scale from ``scale`` up whose
    ``cost`` (OpenDP's privacy map, as an exact Decimal) is not above ``epsilon``; returns
    (measurement, scale). A scale computed in floats can map a few ulps above the declared
    epsilon, so it is raised ulp by ulp until OpenDP's map agrees.
    """
    for _ in range(64):
        measurement = build(scale)
        spent = cost(measurement)
        if spent <= epsilon:
            return measurement, scale
        scale = math.nextafter(scale, math.inf)
    raise ValueError(
        f"OpenDP maps this mechanism to epsilon {spent} at scale {scale}, above the declared "
        f"{epsilon}"
    )


def laplace_within(
    input_domain: Any, input_metric: Any, d_in: int, epsilon: Decimal
) -> tuple[Any, float]:
    """OpenDP (discrete) Laplace on ``input_domain`` whose privacy map at ``d_in`` is not
    above ``epsilon``, from the scale ``d_in / epsilon`` up; returns (measurement, scale)."""
    return calibrate(
        lambda scale: dp.m.make_laplace(input_domain, input_metric, scale),
        d_in / float(epsilon),
        lambda measurement: Decimal(float(measurement.map(d_in))),
        epsilon,
    )


@cache
def vector_laplace(sensitivity: int, epsilon: Decimal) -> tuple[Any, float]:
    """THE vector discrete Laplace every vector release uses (tree and hierarchy nodes,
    event-level groups, the bounds advisor's bins): OpenDP discrete Laplace on i64 vectors
    (sums may pass i32), checked by OpenDP's map: a vector of L1 sensitivity
    ``sensitivity`` costs at most ``epsilon``. Built once per (sensitivity, epsilon);
    returns (measurement, scale)."""
    return laplace_within(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), sensitivity, epsilon
    )


class DiscreteLaplaceCount:
    """Discrete Laplace noise on an integer count of sensitivity ``sensitivity``.

    The scale is ``sensitivity / epsilon`` (or a few ulps more); OpenDP's own privacy map
    confirms that one release costs at most ``epsilon`` before the mechanism is used.
    """

    def __init__(self, epsilon: Decimal, sensitivity: int = 1) -> None:
        if epsilon <= 0 or sensitivity < 1:
            raise ValueError("epsilon must be > 0 and sensitivity >= 1")
        self.epsilon = epsilon
        self.sensitivity = sensitivity
        # 64-bit integers: window sums of cents pass 2**31.
        self._measurement, self.scale = laplace_within(
            dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), sensitivity, epsilon
        )
        self.ci95_half_width = finite_accuracy(
            float(dp.discrete_laplacian_scale_to_accuracy(self.scale, 1 - CONFIDENCE)),
            f"discrete Laplace at epsilon {epsilon}, sensitivity {sensitivity}",
        )

    def release(self, exact: int) -> NoisyCount:
        """One noisy release of ``exact`` (spend must be committed before it is returned)."""
        return NoisyCount(int(self._measurement(int(exact))), self.ci95_half_width)


@cache
def discrete_laplace_count(epsilon: Decimal, sensitivity: int = 1) -> DiscreteLaplaceCount:
    """Cached mechanism per (epsilon, sensitivity): built once, used per release."""
    return DiscreteLaplaceCount(epsilon, sensitivity)
