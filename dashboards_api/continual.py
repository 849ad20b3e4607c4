"""Continual release of running totals under one budget: the binary tree mechanism.

A running total over a horizon of ``T`` windows is released after every window. Fresh
noise per refresh would cost ``T`` budgets; the binary tree (Dwork, Naor, Pitassi and
Rothblum 2010; Chan, Shi and Song 2011) costs one. Node ``(level, index)`` is the sum of
windows ``index * 2**level + 1 .. (index + 1) * 2**level``; the total at ``t`` is the sum of
the nodes of the binary representation of ``t`` (at most ``L = T.bit_length()`` of them).
A window lies in at most ``L`` nodes, so the vector of all node sums has L1 sensitivity
``L * sensitivity`` and OpenDP's discrete Laplace at scale ``L * sensitivity / epsilon``
releases every node, hence every total of the horizon, for ``epsilon`` in all.

Each node is noised once (by OpenDP, nothing else) and its noisy sum is kept in a write-once
:class:`NodeStore`, so a prefix read twice, or by two replicas, gives the same answer.
See ``docs/continual-release.md``.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from itertools import accumulate
from typing import Any

import numpy as np
import opendp.prelude as dp

from dashboards_api.ledger import NodeStore
from dashboards_api.mechanisms import CONFIDENCE, vector_laplace

dp.enable_features("contrib")

PARAMETERS_LEVEL = -1
"""Store level reserved for a fingerprint of a stream's horizon parameters (index 0)."""

_EXACT_CI_MAX_SCALE = 4096.0
"""Above this node scale the 95% half-width is rescaled from this scale (relative error < 1e-3)."""


@dataclass(frozen=True)
class NoisyTotal:
    """A released running total at window ``t`` and its two-sided 95% half-width.

    ``nodes`` is how many noisy tree nodes were summed (the number of 1 bits of ``t``).
    """

    t: int
    value: int
    ci95_half_width: float
    nodes: int


class MemoryNodeStore:
    """In-process :class:`NodeStore`: a dict behind a lock (lost when the process ends)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, int, int], int] = {}
        self._lock = threading.Lock()

    def get(self, stream_id: str, level: int, index: int) -> int | None:
        """The stored value of a node, or None when the node was never released."""
        with self._lock:
            return self._values.get((stream_id, level, index))

    def put(self, stream_id: str, level: int, index: int, value: int) -> int:
        """Store ``value`` unless the node already has one; return the value now stored."""
        with self._lock:
            return self._values.setdefault((stream_id, level, index), int(value))

    def __len__(self) -> int:
        """How many values are stored (nodes and parameter fingerprints)."""
        with self._lock:
            return len(self._values)


def levels(horizon: int) -> int:
    """Tree levels a horizon of ``horizon`` windows uses: ``floor(log2 T) + 1``.

    This is the most nodes a window can lie in among the nodes any ``t <= T`` uses, so it is
    the L1 sensitivity multiplier (a level-``k`` node is used only when ``2**k <= T``).
    """
    return horizon.bit_length()


def _last_node(t: int) -> tuple[int, int]:
    """The node that ends at window ``t``: level ``v2(t)``, the smallest of ``t``'s nodes."""
    level = (t & -t).bit_length() - 1
    return level, (t >> level) - 1


def dyadic_nodes(t: int) -> list[tuple[int, int]]:
    """The (level, index) nodes whose disjoint union is windows ``1..t``, smallest first."""
    nodes = []
    rest = t
    while rest > 0:
        nodes.append(_last_node(rest))
        rest -= rest & -rest
    return nodes


def tree_scale(horizon: int, epsilon: Decimal, sensitivity: int) -> float:
    """Node noise scale of the tree: ``levels(T) * sensitivity / epsilon``."""
    return levels(horizon) * sensitivity / float(epsilon)


def _exact_half_width(scale: float, nodes: int) -> int:
    """Smallest integer ``h`` with ``P(|S| <= h) >= CONFIDENCE`` for ``S`` a sum of ``nodes``
    iid discrete Laplace(``scale``): the pmf of ``S`` from its characteristic function by FFT
    (the grid wraps only mass beyond ``(32 + 2 * nodes) * scale``, below 1e-12)."""
    q = math.exp(-1.0 / scale)
    radius = math.ceil(scale * (32 + 2 * nodes)) + 1
    size = 1 << max(6, (2 * radius + 1).bit_length())
    theta = 2.0 * np.pi * np.arange(size // 2 + 1) / size
    characteristic = (1.0 - q) ** 2 / (1.0 - 2.0 * q * np.cos(theta) + q * q)
    pmf = np.fft.irfft(characteristic**nodes, n=size)
    coverage = np.concatenate(([pmf[0]], pmf[0] + 2.0 * np.cumsum(pmf[1 : size // 2])))
    return int(np.searchsorted(coverage, CONFIDENCE))


@cache
def ci95_half_width(scale: float, nodes: int) -> float:
    """Two-sided 95% half-width of the sum of ``nodes`` iid discrete Laplace(``scale``) noises.

    Exact (FFT of the characteristic function) up to scale 4096; above, the exact half-width
    at scale 4096 plus one, scaled up (the shape converges, relative error below 1e-3).
    """
    if nodes < 1:
        raise ValueError(f"a total sums at least one node, got nodes={nodes}")
    if scale <= _EXACT_CI_MAX_SCALE:
        return float(_exact_half_width(scale, nodes))
    reference = _exact_half_width(_EXACT_CI_MAX_SCALE, nodes) + 1
    return float(math.ceil(reference * scale / _EXACT_CI_MAX_SCALE))


def fingerprint(parameters: str) -> int:
    """A signed 64-bit digest of a structure's ``parameters`` (fits a BIGINT column), stored
    at :data:`PARAMETERS_LEVEL` so a stream id is never reused with other parameters."""
    digest = hashlib.blake2b(parameters.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_epsilon(epsilon: object) -> Decimal:
    """``epsilon`` if it is a finite positive Decimal, else a TypeError/ValueError."""
    if not isinstance(epsilon, Decimal):
        raise TypeError(f"epsilon must be a Decimal such as Decimal('0.5'), got {epsilon!r}")
    if not epsilon.is_finite() or epsilon <= 0:
        raise ValueError(f"epsilon must be a finite decimal > 0, got {epsilon}")
    return epsilon


def noisy_nodes(
    store: NodeStore,
    stream_id: str,
    measurement: Any,
    nodes: Sequence[tuple[int, int]],
    true_sum: Callable[[tuple[int, int]], int],
) -> dict[tuple[int, int], int]:
    """The stored noisy values of ``nodes`` of ``stream_id``; the ones never drawn are summed
    with ``true_sum`` (complete nodes only: the caller's check), noised in ONE call of the
    OpenDP vector ``measurement``, then stored write-once (a value another replica stored
    first wins, and is the one returned)."""
    found: dict[tuple[int, int], int] = {}
    missing: list[tuple[int, int]] = []
    for node in nodes:
        value = store.get(stream_id, *node)
        if value is None:
            missing.append(node)
        else:
            found[node] = value
    if missing:
        drawn = measurement([int(true_sum(node)) for node in missing])
        for node, noisy in zip(missing, drawn, strict=True):
            found[node] = store.put(stream_id, *node, int(noisy))
    return found


class BinaryTreeCounter:
    """Running totals of one stream over a fixed horizon, every one released for ``epsilon``.

    Parameters:
        horizon: ``T``, the number of windows covered; totals at ``t = 1..T`` may be released.
            A new horizon is a new ``stream_id`` and a new spend of ``epsilon``.
        epsilon: the privacy loss of ALL totals of the horizon together (pure DP); commit it
            to the ledger once, before the first release.
        sensitivity: ``Δ``, the most one protected unit can change the stream in L1
            (``sum_i |x_i - x'_i| <= Δ``); the caller clamps contributions to it.
        store: where node values live (write-once); shared by every replica of the stream.
        stream_id: names the stream and horizon in the store.

    ``levels`` is ``L``; ``measurement`` is the OpenDP measurement that noises node vectors at
    ``scale`` (``L * sensitivity / epsilon``, or a few ulps more), its map checked at build.
    """

    def __init__(
        self,
        horizon: int,
        epsilon: Decimal,
        sensitivity: int,
        store: NodeStore,
        stream_id: str,
    ) -> None:
        self.horizon = check_int("horizon", horizon, 1)
        self.epsilon = check_epsilon(epsilon)
        self.sensitivity = check_int("sensitivity", sensitivity, 1)
        if not isinstance(stream_id, str) or not stream_id:
            raise ValueError(f"stream_id must be a non-empty string, got {stream_id!r}")
        self.store = store
        self.stream_id = stream_id
        self.levels = levels(self.horizon)
        self.measurement, self.scale = vector_laplace(self.levels * self.sensitivity, self.epsilon)
        expected = self._fingerprint()
        if store.put(stream_id, PARAMETERS_LEVEL, 0, expected) != expected:
            raise ValueError(
                f"stream_id {stream_id!r} already holds a horizon with other parameters "
                "(horizon, epsilon or sensitivity); a new horizon needs a new stream_id"
            )

    def _fingerprint(self) -> int:
        """A digest of the horizon's parameters (:func:`fingerprint`)."""
        return fingerprint(
            f"binary-tree-v1|{self.horizon}|{self.epsilon.normalize()}|{self.sensitivity}"
        )

    def ci95_half_width(self, nodes: int) -> float:
        """95% half-width of a total that sums ``nodes`` noisy nodes of this counter."""
        return ci95_half_width(self.scale, nodes)

    def _check_t(self, t: int, values: Sequence[int]) -> int:
        """``t`` if ``1 <= t <= horizon`` and ``values`` covers windows ``1..t``."""
        t = check_int("t", t, 1)
        if t > self.horizon:
            raise ValueError(
                f"t={t} is past the horizon of {self.horizon} windows; totals after the "
                "horizon need a new counter (new stream_id, new epsilon spend)"
            )
        if len(values) < t:
            raise ValueError(f"release at t={t} needs windows 1..{t}, got {len(values)} values")
        return t

    def _node_values(
        self, nodes: Sequence[tuple[int, int]], true_sum: Callable[[int, int], int]
    ) -> dict[tuple[int, int], int]:
        """Stored values of ``nodes``; the missing ones are noised and stored (``noisy_nodes``)."""
        return noisy_nodes(
            self.store, self.stream_id, self.measurement, nodes, lambda node: true_sum(*node)
        )

    def release(self, t: int, values: Sequence[int]) -> NoisyTotal:
        """The noisy total of windows ``1..t``; ``values[i]`` is window ``i + 1``'s true value.

        Only ``values[:t]`` is read, and only for nodes not released before: a node's value
        is fixed when first released, so windows must be closed (final) when passed.
        """
        t = self._check_t(t, values)

        def true_sum(level: int, index: int) -> int:
            return sum(int(v) for v in values[index << level : (index + 1) << level])

        nodes = dyadic_nodes(t)
        found = self._node_values(nodes, true_sum)
        return NoisyTotal(
            t=t,
            value=sum(found[node] for node in nodes),
            ci95_half_width=self.ci95_half_width(len(nodes)),
            nodes=len(nodes),
        )

    def release_prefixes(self, values: Sequence[int]) -> list[NoisyTotal]:
        """The noisy totals at every ``t = 1..len(values)`` (a backfill), drawing all missing
        nodes in one OpenDP call; equal to ``release(t, values)`` for each ``t``."""
        n = self._check_t(len(values), values)
        prefix = [0, *accumulate(int(v) for v in values[:n])]

        def true_sum(level: int, index: int) -> int:
            return prefix[(index + 1) << level] - prefix[index << level]

        # The smallest node of t's decomposition ends at t: exactly one node per t.
        last = [_last_node(t) for t in range(1, n + 1)]
        found = self._node_values(last, true_sum)
        totals = [0] * (n + 1)
        releases = []
        for t in range(1, n + 1):
            totals[t] = totals[t - (t & -t)] + found[last[t - 1]]
            nodes = t.bit_count()
            releases.append(NoisyTotal(t, totals[t], self.ci95_half_width(nodes), nodes))
        return releases
