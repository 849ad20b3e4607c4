"""Binary tree continual release: consistency, write-once nodes, privacy map and error.

OpenDP's sampler cannot be seeded, so the statistical tests draw enough samples that each
bound sits at least 6 standard errors from its expectation (normal approximation with the
exact fourth moment; about 2e-9 each), and the simulated ratio test's bound needs one node
noise beyond 15 scales (about 3e-7): the suite's false-failure rate is below 1e-6.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import numpy as np
import opendp.prelude as dp
import pytest

from dashboards_api.continual import (
    PARAMETERS_LEVEL,
    BinaryTreeCounter,
    MemoryNodeStore,
    ci95_half_width,
    dyadic_nodes,
    levels,
    tree_scale,
)

ONE = Decimal("1")


def counter(
    horizon: int = 100,
    epsilon: Decimal = ONE,
    sensitivity: int = 1,
    store: MemoryNodeStore | None = None,
    stream_id: str = "orders",
) -> BinaryTreeCounter:
    """A counter on a fresh in-memory store unless one is given."""
    return BinaryTreeCounter(
        horizon, epsilon, sensitivity, store if store is not None else MemoryNodeStore(), stream_id
    )


def node_sum(values: list[int], level: int, index: int) -> int:
    """The true sum of a node: windows ``index * 2**level + 1 .. (index + 1) * 2**level``."""
    return sum(values[index << level : (index + 1) << level])


def stored(store: MemoryNodeStore, stream_id: str, level: int, index: int) -> int:
    """The stored value of a node that must have been released."""
    value = store.get(stream_id, level, index)
    assert value is not None, f"node {(level, index)} of {stream_id} was never released"
    return value


def moments(scale: float, nodes: int = 1) -> tuple[float, float]:
    """Variance and fourth central moment of a sum of ``nodes`` iid discrete Laplace noises
    (cumulants of a difference of two geometrics: k2 = 2q/(1-q)^2, k4 = 2q(1+4q+q^2)/(1-q)^4)."""
    q = math.exp(-1 / scale)
    k2 = nodes * 2 * q / (1 - q) ** 2
    k4 = nodes * 2 * q * (1 + 4 * q + q * q) / (1 - q) ** 4
    return k2, k4 + 3 * k2 * k2


def test_dyadic_nodes_partition_the_prefix() -> None:
    """The nodes of t are disjoint, cover windows 1..t exactly and number popcount(t)."""
    for t in range(1, 1100):
        windows: list[int] = []
        for level, index in dyadic_nodes(t):
            windows.extend(range((index << level) + 1, ((index + 1) << level) + 1))
        assert sorted(windows) == list(range(1, t + 1))
        assert len(dyadic_nodes(t)) == t.bit_count() <= levels(t)


def test_a_window_lies_in_at_most_levels_released_nodes() -> None:
    """Among all nodes any t <= T uses, a window lies in at most levels(T) of them, and
    window 1 in exactly that many: the L1 sensitivity factor of the node vector is tight."""
    for horizon in (1, 2, 7, 100, 1024, 1500):
        used = {node for t in range(1, horizon + 1) for node in dyadic_nodes(t)}
        depth = [0] * (horizon + 2)
        for level, index in used:
            for window in range((index << level) + 1, ((index + 1) << level) + 1):
                depth[window] += 1
        assert max(depth) == depth[1] == levels(horizon) == math.floor(math.log2(horizon)) + 1


def test_release_is_exact_prefix_plus_stored_node_noise() -> None:
    """A total equals the exact prefix sum plus the stored noise of exactly its dyadic nodes,
    and releasing it again returns the same value."""
    values = [(3 * i) % 5 for i in range(100)]
    store = MemoryNodeStore()
    tree = counter(horizon=100, sensitivity=4, store=store)
    for t in (1, 2, 3, 37, 64, 99, 100):
        released = tree.release(t, values[:t])
        nodes = dyadic_nodes(t)
        noise = sum(stored(store, "orders", *node) - node_sum(values, *node) for node in nodes)
        assert released.value == sum(values[:t]) + noise
        assert released.nodes == len(nodes) == t.bit_count()
        assert tree.release(t, values) == released


def test_release_prefixes_agrees_with_release() -> None:
    """A backfill of every prefix gives the same totals and half-widths as single releases."""
    values = [i % 3 for i in range(300)]
    store = MemoryNodeStore()
    backfill = counter(horizon=300, sensitivity=2, store=store).release_prefixes(values)
    single = counter(horizon=300, sensitivity=2, store=store)
    assert [single.release(t, values) for t in range(1, 301)] == backfill
    assert [total.t for total in backfill] == list(range(1, 301))


def test_each_node_is_drawn_once() -> None:
    """T totals use exactly T nodes (one ends at each t), drawn once and never again."""
    store = MemoryNodeStore()
    tree = counter(horizon=500, store=store)
    first = tree.release_prefixes([1] * 500)
    assert len(store) == 500 + 1  # the nodes and the parameter fingerprint
    assert tree.release_prefixes([1] * 500) == first
    assert [tree.release(t, [1] * 500) for t in (1, 250, 500)] == [first[0], first[249], first[499]]
    assert len(store) == 501


def test_revised_values_do_not_change_released_nodes() -> None:
    """A node's value is fixed at its first release: revising a closed window later cannot
    move a total that reuses the node (no difference of noisy values reveals the revision)."""
    tree = counter(horizon=64)
    values = [1] * 64
    before = tree.release(32, values)
    values[3] = 9
    assert tree.release(32, values) == before


def test_memory_store_is_write_once() -> None:
    """put keeps the first value and returns it; get is None for a node never stored."""
    store = MemoryNodeStore()
    assert store.get("s", 0, 0) is None
    assert store.put("s", 0, 0, 5) == 5
    assert store.put("s", 0, 0, -7) == 5
    assert store.get("s", 0, 0) == 5
    assert store.get("other", 0, 0) is None


def test_concurrent_replicas_agree() -> None:
    """Replicas racing on one store each draw noise, but all publish the first value stored."""
    store = MemoryNodeStore()
    values = [2] * 4096

    def replica(_: int) -> list[int]:
        tree = counter(horizon=4096, store=store)
        return [tree.release(t, values).value for t in (4095, 4096, 1000)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(replica, range(32)))
    assert all(result == results[0] for result in results)


def test_stream_reused_with_other_parameters_is_refused() -> None:
    """A stream_id names one horizon: opening it with another epsilon, horizon or
    sensitivity is refused, the same parameters (1 == 1.0) are accepted."""
    store = MemoryNodeStore()
    counter(horizon=100, epsilon=ONE, store=store)
    counter(horizon=100, epsilon=Decimal("1.0"), store=store)
    assert store.get("orders", PARAMETERS_LEVEL, 0) is not None
    for kwargs in ({"epsilon": Decimal("2")}, {"horizon": 101}, {"sensitivity": 2}):
        with pytest.raises(ValueError, match="new stream_id"):
            counter(**{"horizon": 100, "store": store, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("t", "error", "match"),
    [
        (0, ValueError, "t must be >= 1"),
        (-3, ValueError, "t must be >= 1"),
        (101, ValueError, "past the horizon of 100"),
        (2.0, TypeError, "t must be an int"),
        (True, TypeError, "t must be an int"),
    ],
)
def test_refuses_bad_t(t: object, error: type[Exception], match: str) -> None:
    """A total before window 1, after the horizon, or at a non-integer t is refused."""
    with pytest.raises(error, match=match):
        counter(horizon=100).release(t, [1] * 200)  # type: ignore[arg-type]


def test_refuses_missing_values() -> None:
    """A total at t needs the values of windows 1..t; a backfill needs at least one window."""
    with pytest.raises(ValueError, match=r"needs windows 1\.\.10, got 9 values"):
        counter().release(10, [1] * 9)
    with pytest.raises(ValueError, match="t must be >= 1"):
        counter().release_prefixes([])
    with pytest.raises(ValueError, match="past the horizon"):
        counter(horizon=10).release_prefixes([1] * 11)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"horizon": 0}, ValueError, "horizon must be >= 1"),
        ({"horizon": 10.0}, TypeError, "horizon must be an int"),
        ({"epsilon": Decimal("0")}, ValueError, "epsilon must be a finite decimal > 0"),
        ({"epsilon": Decimal("-1")}, ValueError, "epsilon must be a finite decimal > 0"),
        ({"epsilon": Decimal("NaN")}, ValueError, "epsilon must be a finite decimal > 0"),
        ({"epsilon": Decimal("Infinity")}, ValueError, "epsilon must be a finite decimal > 0"),
        ({"epsilon": 1.0}, TypeError, "epsilon must be a Decimal"),
        ({"sensitivity": 0}, ValueError, "sensitivity must be >= 1"),
        ({"sensitivity": 1.5}, TypeError, "sensitivity must be an int"),
        ({"stream_id": ""}, ValueError, "stream_id must be a non-empty string"),
    ],
)
def test_refuses_bad_parameters(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    """A counter with a non-positive horizon, epsilon or sensitivity, or no stream_id, is
    refused with a message naming the parameter."""
    with pytest.raises(error, match=match):
        counter(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("horizon", "epsilon", "sensitivity"),
    [(1, "1", 1), (1440, "1", 1), (86_400, "1", 1), (86_400, "0.1", 3), (1000, "0.3", 7)],
)
def test_opendp_map_covers_the_whole_horizon(horizon: int, epsilon: str, sensitivity: int) -> None:
    """OpenDP's own map of the node-vector measurement at L1 distance levels * sensitivity
    (one window changed by sensitivity) is not above the declared epsilon, and the scale is
    the textbook one up to float ulps."""
    tree = counter(horizon=horizon, epsilon=Decimal(epsilon), sensitivity=sensitivity)
    assert tree.levels == levels(horizon)
    assert Decimal(float(tree.measurement.map(tree.levels * sensitivity))) <= Decimal(epsilon)
    assert tree.scale >= tree_scale(horizon, Decimal(epsilon), sensitivity)
    assert tree.scale == pytest.approx(tree.levels * sensitivity / float(epsilon), rel=1e-12)


def test_half_width_is_the_exact_quantile() -> None:
    """The 95% half-width is the smallest h with P(|sum of k noises| <= h) >= 0.95, checked
    by direct convolution, and matches OpenDP's single-noise accuracy for k = 1."""
    for scale in (0.3, 1.0, 4.5, 17.0):
        q = math.exp(-1 / scale)
        support = np.arange(-int(80 * scale + 40), int(80 * scale + 40) + 1)
        one = (1 - q) / (1 + q) * q ** np.abs(support)
        pmf = one
        for nodes in range(1, 7):
            if nodes > 1:
                pmf = np.convolve(pmf, one)
            centre = len(pmf) // 2
            cover = [pmf[centre - h : centre + h + 1].sum() for h in range(centre)]
            expected = next(h for h, c in enumerate(cover) if c >= 0.95)
            assert ci95_half_width(scale, nodes) == expected
        accuracy = dp.discrete_laplacian_scale_to_accuracy(scale, 0.05)
        assert abs(ci95_half_width(scale, 1) - accuracy) < 1


def test_half_width_rescaled_at_large_scale_is_conservative() -> None:
    """Above the exact-FFT scale the half-width is rescaled: never narrower than the exact
    one and within 0.1% of it."""
    from dashboards_api.continual import _exact_half_width

    for nodes in (1, 3, 17):
        exact = _exact_half_width(8192.0, nodes)
        assert exact <= ci95_half_width(8192.0, nodes) <= exact * 1.001


def test_node_noise_has_the_discrete_laplace_law() -> None:
    """16,384 node noises (4 streams, T = 4,096, Δ = 3) are centred, have the discrete
    Laplace variance at scale 13 * 3 within 6 standard errors, and 95% of them lie within
    the single-node half-width (at least 95% minus 6 standard errors)."""
    horizon, sensitivity = 4096, 3
    values = [(5 * i) % (sensitivity + 1) for i in range(horizon)]
    noises: list[int] = []
    for stream in range(4):
        store = MemoryNodeStore()
        tree = counter(horizon, ONE, sensitivity, store, f"s{stream}")
        tree.release_prefixes(values)
        for t in range(1, horizon + 1):
            level, index = dyadic_nodes(t)[0]
            noise = stored(store, f"s{stream}", level, index) - node_sum(values, level, index)
            noises.append(noise)
    assert tree.scale == pytest.approx(39.0)
    var, fourth = moments(tree.scale)
    n = len(noises)
    draws = np.asarray(noises, dtype=np.float64)
    assert abs(draws.mean()) < 6 * math.sqrt(var / n)
    assert abs(np.mean(draws**2) - var) < 6 * math.sqrt((fourth - var * var) / n)
    covered = np.mean(np.abs(draws) <= tree.ci95_half_width(1))
    assert covered >= 0.95 - 6 * math.sqrt(0.95 * 0.05 / n)


def test_total_error_at_a_fixed_t_has_the_predicted_law() -> None:
    """Over 4,000 independent counters (T = t = 1,023, ten nodes) the error of the total is
    centred, has variance 10 * Var(scale 10) within 6 standard errors, and its 95% interval
    covers the truth at least 95% minus 6 standard errors of the time."""
    horizon = 1023
    values = [i % 2 for i in range(horizon)]
    exact = sum(values)
    errors = []
    covered = 0
    for run in range(4000):
        total = counter(horizon, ONE, 1, MemoryNodeStore(), f"run{run}").release(horizon, values)
        errors.append(total.value - exact)
        covered += abs(total.value - exact) <= total.ci95_half_width
    var, fourth = moments(10.0, nodes=10)
    n = len(errors)
    draws = np.asarray(errors, dtype=np.float64)
    assert abs(draws.mean()) < 6 * math.sqrt(var / n)
    assert abs(np.mean(draws**2) - var) < 6 * math.sqrt((fourth - var * var) / n)
    assert covered / n >= 0.95 - 6 * math.sqrt(0.95 * 0.05 / n)
