"""Combining the domains' updates into the next global model, and pooled metrics.

Under SecAgg+ the coordinator only ever holds the (weighted) mean update, so the server
step is FedAvg, FedAvg with server momentum (FedAvgM) or an adaptive optimiser (FedAdam,
FedYogi), applied to that mean. Robust
aggregators (coordinate-wise median, trimmed mean) need each update in clear and are
only offered without secure aggregation (``federation.run_config`` refuses the rest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from federation.dp import clip, gaussian_noise
from federation.errors import NotEnoughParticipants

if TYPE_CHECKING:
    from federation.run_config import RunConfig

Noise = Callable[[NDArray[np.float64], float], NDArray[np.float64]]
"""Adds Gaussian noise of a standard deviation to a vector (OpenDP's, for a release)."""


ADAPTIVE_BETAS = (0.9, 0.99)
"""FedAdam/FedYogi's moment decays (Reddi et al., 2021, and Flower's strategies)."""
ADAPTIVE_TAU = 1e-3
"""Their adaptivity floor: the smallest square-root second moment a step divides by."""


class ServerOptimizer:
    """The server step from the round's mean update ``d``.

    ``fedavg``: ``w += lr * d``; ``fedavgm``: ``v = momentum * v + d``, ``w += lr * v``
    (plain FedAvg: lr 1, no momentum). ``fedadam`` / ``fedyogi`` (Reddi et al., 2021,
    "Adaptive Federated Optimization"): ``m = b1 m + (1 - b1) d``, the second moment
    ``v = b2 v + (1 - b2) d**2`` (Adam) or ``v = v - (1 - b2) d**2 sign(v - d**2)`` (Yogi),
    ``w += lr * m / (sqrt(v) + tau)``. Each needs only the mean update, so all of them
    work under SecAgg+.
    """

    def __init__(self, learning_rate: float, momentum: float, kind: str = "fedavg") -> None:
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.kind = kind
        self._velocity: NDArray[np.float64] | None = None
        self._second: NDArray[np.float64] | None = None

    def step(
        self, weights: NDArray[np.float64], mean_update: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """The next global weights (flat)."""
        if self.kind in ("fedadam", "fedyogi"):
            return weights + self.learning_rate * self._adaptive(mean_update)
        if self.momentum > 0:
            previous = self._velocity if self._velocity is not None else np.zeros_like(mean_update)
            self._velocity = self.momentum * previous + mean_update
            mean_update = self._velocity
        return weights + self.learning_rate * mean_update

    def _adaptive(self, update: NDArray[np.float64]) -> NDArray[np.float64]:
        beta1, beta2 = ADAPTIVE_BETAS
        first = self._velocity if self._velocity is not None else np.zeros_like(update)
        second = self._second if self._second is not None else np.zeros_like(update)
        self._velocity = beta1 * first + (1 - beta1) * update
        square = update**2
        if self.kind == "fedadam":
            self._second = beta2 * second + (1 - beta2) * square
        else:
            self._second = second - (1 - beta2) * square * np.sign(second - square)
        return self._velocity / (np.sqrt(self._second) + ADAPTIVE_TAU)


def fedavg_weight(examples: int, dp: bool) -> int:
    """A domain's FedAvg weight: its training example count, or 1 with DP (uniform
    averaging: a weight would multiply the domain's sensitivity by itself)."""
    return 1 if dp else examples


def weighted_mean(
    updates: Sequence[NDArray[np.float64]], weights: Sequence[int]
) -> NDArray[np.float64]:
    """FedAvg's mean of plaintext updates."""
    if not updates:
        raise NotEnoughParticipants("no update to aggregate")
    total = float(sum(weights))
    return np.sum([u * (w / total) for u, w in zip(updates, weights, strict=True)], axis=0)


def coordinate_median(updates: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
    """Coordinate-wise median of plaintext updates."""
    if not updates:
        raise NotEnoughParticipants("no update to aggregate")
    return np.median(np.stack(updates), axis=0)


def trimmed_mean(updates: Sequence[NDArray[np.float64]], fraction: float) -> NDArray[np.float64]:
    """Coordinate-wise mean after dropping the ``fraction`` largest and smallest values."""
    if not updates:
        raise NotEnoughParticipants("no update to aggregate")
    stacked = np.sort(np.stack(updates), axis=0)
    cut = math.floor(fraction * len(updates))
    kept = stacked[cut : len(updates) - cut]
    return kept.mean(axis=0)


def combine(
    config: RunConfig,
    updates: Sequence[NDArray[np.float64]],
    weights: Sequence[int],
    noise: Noise = gaussian_noise,
    *,
    clipping_norm: float | None = None,
) -> NDArray[np.float64]:
    """The round's mean update under ``config``: server-side DP (clip to the round's
    ``clipping_norm``, sum, ``noise`` of ``z_u * C``), a robust aggregator, or FedAvg's
    weighted mean."""
    dp = config.dp
    if dp.enabled and dp.clipping == "server":
        norm = dp.clipping_norm if clipping_norm is None else clipping_norm
        clipped = [clip(u, norm)[0] for u in updates]
        scale = dp.update_noise_multiplier * norm
        return noise(np.sum(clipped, axis=0), scale) / len(updates)
    if config.aggregator == "median":
        return coordinate_median(updates)
    if config.aggregator == "trimmed_mean":
        return trimmed_mean(updates, config.trimmed_fraction)
    return weighted_mean(updates, weights)


def pooled_auc(positives: NDArray[np.int64], negatives: NDArray[np.int64]) -> float:
    """ROC AUC from per-bin class counts summed over domains (ties within a bin count
    one half); NaN with one class. Its error against the exact pooled AUC is at most the
    share of positive-negative pairs that fall into the same bin."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    wins = float((pos * below).sum() + 0.5 * (pos * neg).sum())
    return wins / float(total_pos * total_neg)
