"""Global feature standardisation from statistics computed under secure aggregation.

Encoded columns are one-hots and numbers mapped onto [0, 1] by their contract's public
bounds; loose bounds leave a column squeezed near 0 (husband's income in thousands over a
declared 0..1000: mean 0.03) and SGD then barely moves its weight. Standardising each
column to the *pooled* mean and standard deviation of every domain's training rows fixes
the conditioning the same way in every domain (a domain scaling on its own statistics
would train a different model per domain).

Each domain sends the vector ``[mean of x, mean of x**2]`` over its training rows with its
example count as weight; the SecAgg+ round (or plain FedAvg's weighted mean) returns
their example-weighted mean, which is the pooled first and second moment: the coordinator
learns the pooled statistics and the counts it already knows, and no domain's own. Every
element lies in [0, 1] (encoded columns do), so quantisation never has to clip.

The trained model works on standardised inputs; :func:`fold` rewrites its first layer so
the registered weights take the raw encoded columns, as every reader of the registry
(serving, audit, export) expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from federation.errors import InvalidModelConfig, InvalidTrainingData

MIN_STD = 1e-6
"""A column whose pooled standard deviation is below this (a one-hot value no domain holds,
a constant) is only centred, not divided: dividing would blow rounding up."""
MOMENTS_BOUND = 1.0
"""Every moment of an encoded column lies in [0, 1]: the secure-aggregation bound."""


def local_moments(x: NDArray[np.floating]) -> NDArray[np.float64]:
    """A domain's ``[mean of each column, mean of its square]`` over its training rows."""
    rows = np.asarray(x, dtype=np.float64)
    if rows.ndim != 2 or len(rows) == 0:
        raise InvalidTrainingData("standardisation needs at least one training row")
    return np.concatenate([rows.mean(axis=0), (rows**2).mean(axis=0)])


@dataclass(frozen=True)
class Standardisation:
    """Pooled column means and standard deviations; ``x -> (x - mean) / std``."""

    mean: NDArray[np.float64]
    std: NDArray[np.float64]

    @classmethod
    def from_moments(
        cls, moments: NDArray[np.float64], floor: float | None = None
    ) -> Standardisation:
        """From the example-weighted mean of the domains' :func:`local_moments`.
        ``floor``: the least std a column gets (noised moments: ``MIN_DP_STD``)."""
        values = np.asarray(moments, dtype=np.float64)
        if values.ndim != 1 or len(values) % 2 or not np.isfinite(values).all():
            raise InvalidModelConfig("standardisation moments must be 2 x width finite numbers")
        width = len(values) // 2
        mean, square = values[:width], values[width:]
        variance = np.maximum(square - mean**2, 0.0)
        std = np.sqrt(variance)
        if floor is not None:
            return cls(mean, np.maximum(std, floor))
        return cls(mean, np.where(std < MIN_STD, 1.0, std))

    @classmethod
    def from_arrays(cls, arrays: list[NDArray[np.floating]], width: int) -> Standardisation:
        """As carried by a message: ``[mean, std]``; refuses a wrong shape or a std <= 0."""
        if len(arrays) != 2 or any(np.shape(a) != (width,) for a in arrays):
            raise InvalidModelConfig(f"standardisation must be two arrays of {width} numbers")
        mean, std = (np.asarray(a, dtype=np.float64) for a in arrays)
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise InvalidModelConfig("standardisation holds a non-finite mean or a std <= 0")
        return cls(mean, std)

    def arrays(self) -> list[NDArray[np.float64]]:
        """``[mean, std]`` for a message."""
        return [self.mean, self.std]

    def apply(self, x: NDArray[np.floating]) -> NDArray[np.float32]:
        """The standardised rows."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def fold(self, weights: NDArray[np.float64], width: int, hidden: int) -> NDArray[np.float64]:
        """Flat weights of a model trained on standardised inputs, rewritten to take the
        raw columns: its first layer ``W (x - m) / s + b`` becomes ``(W / s) x + (b - W m / s)``.
        ``weights`` starts with that layer's ``hidden x width`` matrix and ``hidden`` biases
        (``state_dict`` order of both model kinds)."""
        out = np.array(weights, dtype=np.float64)
        if len(out) < hidden * (width + 1):
            raise InvalidModelConfig("the weights are shorter than the model's first layer")
        matrix = out[: hidden * width].reshape(hidden, width) / self.std
        bias = out[hidden * width : hidden * (width + 1)] - matrix @ self.mean
        out[: hidden * width] = matrix.ravel()
        out[hidden * width : hidden * (width + 1)] = bias
        return out
