"""One domain's step of a DP-FedAvg round, without the transport: train from the global
model (with record-level DP: DP-SGD, ``federation.dp_sgd``), take the update, clip it
and (client-side domain-level DP) noise it.

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
from federation.dp_sgd import train_private
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
    bit: float | None = None
    """With adaptive clipping: the domain's centred bit ``||update|| <= C`` (+-1/2) plus
    its share of the bits' Gaussian noise; it travels inside the masked vector."""
    noise_std: float = 0.0
    """The standard deviation of the noise added to each coordinate of ``delta``."""


def local_update(
    model: nn.Module,
    x: NDArray[np.floating],
    y: NDArray[np.integer],
    config: RunConfig,
    round_: int,
    domain: str,
    noise: Noise | None = None,
    *,
    clipping_norm: float | None = None,
    participants: int | None = None,
) -> LocalUpdate:
    """Train ``model`` (holding the round's global weights) in place on (x, y) as round
    ``round_`` of ``config`` prescribes, and return its update from those weights.

    ``clipping_norm``: the round's C (the coordinator's adaptive one; default the
    configured one). ``participants``: the domains that shared keys for the round, whose
    noise together makes the round sum's ``z * C`` (default ``min-domains``, the worst
    case). With adaptive clipping the update's noise uses z_u and the bit gets the rest."""
    noise = noise or gaussian_noise
    start = flatten(get_weights(model))
    local = TrainConfig(
        epochs=config.train.epochs,
        learning_rate=config.learning_rate_for(round_),
        batch_size=config.train.batch_size,
        seed=config.train.seed + 7_919 * round_ + zlib.crc32(domain.encode()) % 7_919,
        max_steps=config.train.max_steps,
    )
    if config.record_dp.enabled:  # DP-SGD: the update is private before it is clipped
        train_private(
            model,
            x,
            y,
            config.record_plan(len(y)),
            learning_rate=local.learning_rate,
            clipping_norm=config.record_dp.clipping_norm,
        )
        loss = float("nan")  # computed from the rows: not released
    else:
        loss = train(model, x, y, local)
    dp = config.dp
    norm = dp.clipping_norm if clipping_norm is None else clipping_norm
    raw = flatten(get_weights(model)) - start
    delta, clipped = clip(raw, norm)
    weight = fedavg_weight(len(y), dp.enabled)
    if not (dp.enabled and dp.clipping == "client"):
        return LocalUpdate(delta, loss, clipped, weight)
    sized_for = dp.min_domains if participants is None else participants
    scale = dp.domain_scale(sized_for, dp.update_noise_multiplier, norm)
    delta = noise(delta, scale)
    adaptive = dp.adaptive_clipping()
    bit = None
    if adaptive is not None:
        adaptive.norm = norm
        centred = np.array([adaptive.bit(float(np.linalg.norm(raw)))])
        bit = float(noise(centred, adaptive.domain_bit_noise(sized_for))[0])
    return LocalUpdate(delta, loss, clipped, weight, bit, scale)
