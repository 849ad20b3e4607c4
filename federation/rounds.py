"""One domain's step of a DP-FedAvg round, without the transport: train from the global
model, take the update, clip it and (client-side DP) noise it.

The SecAgg+ participant (``federation.participant``) sends what this returns; the
membership-inference audit's shadow models (``federation.shadow``) replay whole runs with
it, so both train exactly as a domain does.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from torch import nn

from federation.aggregation import Noise, fedavg_weight
from federation.dp import clip, gaussian_noise
from federation.model import TrainConfig, flatten, get_weights, train
from federation.run_config import RunConfig


@dataclass(frozen=True)
class LocalUpdate:
    """A domain's clipped (and, with client-side DP, noised) model update of one round."""

    delta: NDArray[np.float64]
    loss: float
    """Mean training loss of the last local epoch."""
    clipped: bool
    """Whether clipping shortened the update."""
    weight: int
    """The update's FedAvg weight (``federation.aggregation.fedavg_weight``)."""


def local_update(
    model: nn.Module,
    x: NDArray[np.floating],
    y: NDArray[np.integer],
    config: RunConfig,
    round_: int,
    domain: str,
    noise: Noise = gaussian_noise,
) -> LocalUpdate:
    """Train ``model`` (holding the round's global weights) in place on (x, y) as round
    ``round_`` of ``config`` prescribes, and return its update from those weights."""
    start = flatten(get_weights(model))
    local = TrainConfig(
        epochs=config.train.epochs,
        learning_rate=config.learning_rate_for(round_),
        batch_size=config.train.batch_size,
        seed=config.train.seed + 7_919 * round_ + zlib.crc32(domain.encode()) % 7_919,
        max_steps=config.train.max_steps,
    )
    loss = train(model, x, y, local)
    delta, clipped = clip(flatten(get_weights(model)) - start, config.dp.clipping_norm)
    if config.dp.enabled and config.dp.clipping == "client":
        delta = noise(delta, config.dp.domain_noise_scale)
    return LocalUpdate(delta, loss, clipped, fedavg_weight(len(y), config.dp.enabled))
