"""The arithmetic of privmesh's SecAgg+: exact integer quantisation, masks, neighbourhoods.

Each domain's update (a flat float vector) is multiplied by the domain's share of the
round's weight, ``w_i / W`` (``W``: the weights of the nodes that shared keys), and
becomes signed integers ``round(x * (w_i / W) * scale)`` masked with uint32 streams, so
every sum is taken modulo 2**32 (numpy's uint32 wraps). Signed values live in two's
complement: once the masks cancel, the total reads back as an int32. The shares add up
to at most 1 and every element is at most ``bound``, so the sum of ``n`` contributions is
at most ``bound * scale + n / 2`` in magnitude; :func:`choose_scale` keeps that below
2**31, so the sum cannot wrap. The only error is rounding, at most ``0.5 / scale`` per
element and contributor, and nothing is ever clipped here: a value beyond the declared
bound is refused (:class:`~federation.errors.QuantisationRangeExceeded`), never saturated.

Why 32 bits: ring elements travel as 4 bytes (a float32 update's size) instead of 8, and
masks cost half the keystream. Weights as fractions rather than integer example counts
are what make 32 bits enough: with integer weights, the sum's range grows with the
total example count and the scale (the precision) shrinks by as much.

Masks are AES-256-CTR keystreams (AES-NI: ~4 ms per million elements here). Flower's
SecAgg+ derives its masks from ``numpy.random.RandomState`` seeded with 32 bits folded out
of the seed, which a server could search exhaustively; a block cipher keyed with the full
256-bit secret cannot be, and it is as fast as numpy's own counter-based generators.
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

MODULUS_BITS = 32
"""Masked vectors and their sums are taken modulo 2**32 (uint32 arithmetic)."""

RING = np.uint32
"""The ring elements' dtype."""

_SUM_LIMIT = 2.0**31
"""A decoded sum is an int32: its magnitude stays below 2**31."""

_ZERO_NONCE = bytes(16)


def choose_scale(bound: float, contributors: int) -> float:
    """The largest scale at which the sum of ``contributors`` vectors cannot wrap around
    the ring.

    Every element is at most ``bound`` in magnitude and is multiplied by its node's
    share of the weight (the shares add up to at most 1) before rounding, so
    ``|sum_i round(x_i * s_i * scale)| <= bound * scale + contributors / 2``; the scale
    keeps that below 2**31 (the int32 a sum decodes to), with a margin for the float
    shares' rounding. It is not rounded down to a power of two (that would cost up to
    half the precision): each element of the decoded mean is then off by at most
    ``contributors * 0.5 / scale``, about ``contributors * bound / 2**32``.
    """
    if not bound > 0 or not math.isfinite(bound):
        raise InvalidSecAggConfig(f"the value bound must be a positive number, got {bound}")
    if contributors < 1:
        raise InvalidSecAggConfig(f"contributors must be >= 1, got {contributors}")
    room = _SUM_LIMIT - contributors - 1.0
    limit = room / (bound * (1.0 + 1e-9))
    if not limit >= 1.0:
        raise InvalidSecAggConfig(
            f"bound {bound} with {contributors} contributors leaves no integer precision in "
            "a 32-bit ring; lower the clipping norm"
        )
    return float(limit)


def weight_share(weight: int, total: int) -> float:
    """A node's share ``weight / total`` of the round's weight (both positive integers)."""
    if isinstance(weight, bool) or isinstance(total, bool):
        raise InvalidSecAggConfig("weights are integers, not booleans")
    if not 1 <= weight <= total:
        raise InvalidSecAggConfig(
            f"a weight must be a positive integer no larger than the round's total weight, "
            f"got {weight} of {total}"
        )
    return weight / total


def quantise(
    vector: NDArray[np.floating], scale: float, bound: float, share: float = 1.0
) -> NDArray[np.uint32]:
    """``round(vector * share * scale)`` as ring elements (two's complement); refuses, never
    clips, values beyond ``bound`` (or NaN and infinities)."""
    if not 0.0 < share <= 1.0:
        raise InvalidSecAggConfig(f"a weight share is in (0, 1], got {share}")
    values = np.asarray(vector, dtype=np.float64)
    if not np.isfinite(values).all():
        raise QuantisationRangeExceeded("the update holds NaN or infinite values")
    largest = float(np.max(np.abs(values))) if len(values) else 0.0
    if largest > bound:
        raise QuantisationRangeExceeded(
            f"an update element of magnitude {largest:.6g} exceeds the secure-aggregation "
            f"bound {bound:.6g}; it would have to be clipped, so the update is refused"
        )
    scaled = np.multiply(values, share * scale)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int32).view(RING)


def decode_sum(
    total: NDArray[np.uint32], scale: float, fraction: float = 1.0
) -> NDArray[np.float64]:
    """The weighted mean from the unmasked sum modulo 2**32.

    ``fraction``: the arrived vectors' share of the weight the nodes quantised with (1
    when every node that shared keys sent its vector); dividing by it makes the result
    the weighted mean of the arrived vectors alone.
    """
    if not 0.0 < fraction <= 1.0:
        raise InvalidSecAggConfig(f"the arrived weight fraction is in (0, 1], got {fraction}")
    return total.view(np.int32).astype(np.float64) / (scale * fraction)


def decode_error_bound(scale: float, contributors: int, fraction: float = 1.0) -> float:
    """The largest error of any element of :func:`decode_sum`'s mean: each contributor's
    rounding is at most 0.5 at ``scale``. Relative to the mean's L2 norm the typical error
    is about ``0.29 * sqrt(contributors * length) / (scale * fraction * norm)``: 1e-5 at
    5 contributors, 1M elements and a mean 33 times shorter than the bound."""
    if contributors < 1 or not scale > 0 or not 0.0 < fraction <= 1.0:
        raise InvalidSecAggConfig(
            f"need contributors >= 1, scale > 0 and fraction in (0, 1], got {contributors}, "
            f"{scale} and {fraction}"
        )
    return contributors * 0.5 / (scale * fraction)


def mask_stream(key: bytes, length: int) -> NDArray[np.uint32]:
    """``length`` ring elements of AES-256-CTR keystream under the 32-byte ``key``."""
    if len(key) != 32:
        raise InvalidSecAggConfig(f"mask keys are 32 bytes, got {len(key)}")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()
    size = RING().itemsize * length
    buffer = bytearray(size + 15)  # update_into wants room for a block
    written = encryptor.update_into(bytes(size), buffer)
    if written != size:
        raise InvalidSecAggConfig(f"keystream of {written} bytes, wanted {size}")
    return np.frombuffer(buffer, dtype=RING, count=length)


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
    vector: NDArray[np.uint32], mask: NDArray[np.uint32], sign: int
) -> NDArray[np.uint32]:
    """``vector + sign * mask`` modulo 2**32, in place (``vector`` is returned)."""
    if sign > 0:
        np.add(vector, mask, out=vector)
    else:
        np.subtract(vector, mask, out=vector)
    return vector


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
