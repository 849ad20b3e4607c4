"""The arithmetic of privmesh's SecAgg+: exact integer quantisation, masks, neighbourhoods.

Each domain's update (a flat float vector) becomes signed integers ``round(x * scale)``,
multiplied by the domain's integer weight and masked with uint64 streams, so every sum
is taken modulo 2**64 (numpy's uint64 wraps). Signed values live in two's complement:
once the masks cancel, the total reads back as an int64, exactly the weighted sum of the
quantised updates. The only error is rounding, at most ``0.5 / scale`` per element and
client, and nothing is ever clipped here: a value beyond the declared bound is refused
(:class:`~federation.errors.QuantisationRangeExceeded`), never saturated.

Masks are AES-256-CTR keystreams. Flower's SecAgg+ derives its masks from
``numpy.random.RandomState`` seeded with 32 bits folded out of the seed, which a server
could search exhaustively; a block cipher keyed with the full 256-bit secret cannot be.
"""

from __future__ import annotations

import base64
import math
import random
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from federation.errors import InvalidSecAggConfig, QuantisationRangeExceeded

MODULUS_BITS = 64
"""Masked vectors and their sums are taken modulo 2**64 (uint64 arithmetic)."""

_SUM_BITS = 62
"""Weighted quantised sums stay below 2**62 in magnitude: far from int64's sign bit."""

_EXACT_BITS = 52
"""A quantised element is at most 2**52: float64 holds every such integer exactly."""

_ZERO_NONCE = bytes(16)


def flatten(arrays: Sequence[NDArray[np.floating]]) -> NDArray[np.float64]:
    """The arrays as one float64 vector (the order and shapes are the model's)."""
    if not arrays:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(
    vector: NDArray[np.floating], shapes: Sequence[tuple[int, ...]]
) -> list[NDArray[np.float32]]:
    """Split ``vector`` back into float32 arrays of ``shapes``."""
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != len(vector):
        raise InvalidSecAggConfig(
            f"vector of {len(vector)} elements does not fill shapes totalling {sum(sizes)}"
        )
    out: list[NDArray[np.float32]] = []
    start = 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(np.asarray(vector[start : start + size], dtype=np.float32).reshape(shape))
        start += size
    return out


def choose_scale(bound: float, total_weight: int) -> float:
    """The largest power-of-two scale whose weighted sums cannot overflow.

    Every element is at most ``bound`` in magnitude and every weight is a positive
    integer adding up to at most ``total_weight``: then ``|sum(w_i * round(x_i * s))|
    <= total_weight * (bound * s + 1) < 2**62``. The scale is also capped so that a
    quantised element stays an exact float64 integer.
    """
    if not bound > 0 or not math.isfinite(bound):
        raise InvalidSecAggConfig(f"the value bound must be a positive number, got {bound}")
    if total_weight < 1:
        raise InvalidSecAggConfig(f"total weight must be >= 1, got {total_weight}")
    headroom = 2.0**_SUM_BITS / (2.0 * total_weight)  # room for bound*s and the +1
    limit = min(headroom, 2.0**_EXACT_BITS) / bound
    if limit < 1.0:
        raise InvalidSecAggConfig(
            f"bound {bound} with total weight {total_weight} leaves no integer precision; "
            "lower the clipping norm or the example weights"
        )
    return float(2.0 ** math.floor(math.log2(limit)))


def quantise(vector: NDArray[np.floating], scale: float, bound: float) -> NDArray[np.int64]:
    """Round ``vector * scale`` to int64; refuses (never clips) values beyond ``bound``."""
    values = np.asarray(vector, dtype=np.float64)
    if not np.isfinite(values).all():
        raise QuantisationRangeExceeded("the update holds NaN or infinite values")
    largest = float(np.max(np.abs(values))) if len(values) else 0.0
    if largest > bound:
        raise QuantisationRangeExceeded(
            f"an update element of magnitude {largest:.6g} exceeds the secure-aggregation "
            f"bound {bound:.6g}; it would have to be clipped, so the update is refused"
        )
    return np.rint(values * scale).astype(np.int64)


def weighted(quantised: NDArray[np.int64], weight: int) -> NDArray[np.uint64]:
    """``weight * quantised`` modulo 2**64 (two's complement for negative values)."""
    if weight < 1:
        raise InvalidSecAggConfig(f"weights must be positive integers, got {weight}")
    return quantised.view(np.uint64) * np.uint64(weight)


def decode_sum(total: NDArray[np.uint64], scale: float, total_weight: int) -> NDArray[np.float64]:
    """The weighted mean from the unmasked sum ``sum(w_i * q_i)`` modulo 2**64."""
    return total.view(np.int64).astype(np.float64) / (scale * total_weight)


def mask_stream(key: bytes, length: int) -> NDArray[np.uint64]:
    """``length`` uint64 words of AES-256-CTR keystream under the 32-byte ``key``."""
    if len(key) != 32:
        raise InvalidSecAggConfig(f"mask keys are 32 bytes, got {len(key)}")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype=np.uint64).copy()


def pairwise_key(shared_key: bytes) -> bytes:
    """The 32-byte mask key from an ECDH-derived key (Flower's urlsafe base64 form)."""
    return base64.urlsafe_b64decode(shared_key)


def pairwise_sign(own: int, other: int) -> int:
    """+1 when ``own`` adds the pair's mask, -1 when it subtracts it (the other does the
    opposite, so the pair's masks cancel in the sum)."""
    if own == other:
        raise InvalidSecAggConfig("a node has no pairwise mask with itself")
    return 1 if own > other else -1


def apply_mask(
    vector: NDArray[np.uint64], mask: NDArray[np.uint64], sign: int
) -> NDArray[np.uint64]:
    """``vector + sign * mask`` modulo 2**64."""
    return vector + mask if sign > 0 else vector - mask


def neighbourhoods(
    node_ids: Sequence[int], num_shares: int, rng: random.Random
) -> dict[int, list[int]]:
    """SecAgg+'s sparse graph: each node and its ``num_shares - 1`` ring neighbours.

    Nodes are shuffled onto a ring and each one is linked with the ``num_shares // 2``
    nodes on either side (``num_shares`` odd); with ``num_shares >= len(node_ids)`` the
    graph is complete (classic SecAgg). Each neighbourhood includes the node itself.
    """
    ring = list(node_ids)
    rng.shuffle(ring)
    count = len(ring)
    if num_shares >= count:
        return {nid: sorted(ring) for nid in ring}
    half = num_shares // 2
    return {
        nid: sorted({ring[(i + off) % count] for off in range(-half, half + 1)})
        for i, nid in enumerate(ring)
    }


def neighbourhood_size(num_shares: int, nodes: int) -> int:
    """Members of each neighbourhood (the node included) when ``nodes`` take part."""
    return min(num_shares, nodes)


def check_threshold(num_shares: int, threshold: int, nodes: int | None = None) -> None:
    """Refuse thresholds that cannot protect a node's secrets or cannot be met.

    With ``num_shares >= nodes`` the graph is complete (any size); a sparse ring needs
    an odd ``num_shares`` (a node and as many neighbours on each side).
    """
    size = neighbourhood_size(num_shares, nodes if nodes is not None else num_shares)
    if size < 2:
        raise InvalidSecAggConfig(f"secure aggregation needs at least 2 nodes, got {size}")
    if size < (nodes or 0) and num_shares % 2 == 0:
        raise InvalidSecAggConfig(
            f"num-shares must be odd (a node and the same number of ring neighbours on each "
            f"side), got {num_shares}"
        )
    if not size // 2 < threshold <= size:
        raise InvalidSecAggConfig(
            f"the reconstruction threshold must be more than half of the {size} shares and "
            f"at most all of them ({size // 2 + 1}..{size}), got {threshold}: a lower one "
            "would let two disjoint groups reveal both secrets of a node"
        )
