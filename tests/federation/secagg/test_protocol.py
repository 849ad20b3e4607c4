"""SecAgg+ arithmetic: exact quantisation, no clipping, masks, neighbourhoods."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.errors import InvalidSecAggConfig, QuantisationRangeExceeded
from federation.secagg.protocol import (
    apply_mask,
    check_threshold,
    choose_scale,
    decode_sum,
    flatten,
    mask_stream,
    neighbourhoods,
    quantise,
    unflatten,
    weighted,
)


@settings(max_examples=200, deadline=None)
@given(
    vectors=st.lists(
        st.lists(st.floats(-10, 10, allow_nan=False), min_size=6, max_size=6),
        min_size=1,
        max_size=8,
    ),
    weights=st.lists(st.integers(1, 1_000_000), min_size=8, max_size=8),
)
def test_weighted_sum_decodes_to_the_plain_weighted_mean(
    vectors: list[list[float]], weights: list[int]
) -> None:
    """sum(w_i * q_i) modulo 2**64 decodes to the weighted mean within 0.5/scale."""
    weights = weights[: len(vectors)]
    scale = choose_scale(10.0, sum(weights))
    total = np.zeros(6, dtype=np.uint64)
    for vector, weight in zip(vectors, weights, strict=True):
        total = total + weighted(quantise(np.array(vector), scale, 10.0), weight)
    mean = decode_sum(total, scale, sum(weights))
    plain = np.average(np.array(vectors), axis=0, weights=weights)
    assert np.max(np.abs(mean - plain)) <= 0.5 / scale + 1e-12 * np.max(np.abs(plain), initial=1)


def test_values_beyond_flowers_clipping_range_survive() -> None:
    """Flower clips full parameters to +-8 silently; here a bound of 100 carries 50 exactly."""
    scale = choose_scale(100.0, 3)
    q = quantise(np.array([50.0, -99.5, 8.000001]), scale, 100.0)
    total = weighted(q, 1) + weighted(q, 2)
    assert np.allclose(decode_sum(total, scale, 3), [50.0, -99.5, 8.000001], atol=1e-9)


def test_a_value_beyond_the_bound_is_refused_not_clipped() -> None:
    """Quantisation never saturates: it raises, naming the magnitude and the bound."""
    with pytest.raises(QuantisationRangeExceeded, match=r"exceeds the secure-aggregation bound"):
        quantise(np.array([0.5, 10.5]), choose_scale(10.0, 1), 10.0)
    with pytest.raises(QuantisationRangeExceeded, match="NaN"):
        quantise(np.array([np.nan]), 1.0, 10.0)


def test_scale_leaves_no_room_for_overflow() -> None:
    """The largest weighted sum at the chosen scale stays below 2**62 in magnitude."""
    for bound, total in [(1.0, 1), (10.0, 336_776), (1e-3, 10**9), (1e6, 17)]:
        scale = choose_scale(bound, total)
        assert total * (bound * scale + 1) < 2**62
        assert bound * scale <= 2**52
    with pytest.raises(InvalidSecAggConfig):
        choose_scale(1e40, 2**40)


def test_masks_cancel_and_hide() -> None:
    """Pairwise masks cancel in the sum; a masked vector alone looks uniform."""
    key = bytes(range(32))
    stream = mask_stream(key, 100_000)
    assert np.array_equal(stream, mask_stream(key, 100_000))
    assert not np.array_equal(stream, mask_stream(bytes(32), 100_000))
    secret = np.zeros(100_000, dtype=np.uint64)
    masked = apply_mask(secret, stream, +1)
    assert np.array_equal(apply_mask(masked, stream, -1), secret)
    # The top bit of a masked zero vector is a fair coin (4-sigma bounds: ~6e-5 false failures).
    ones = int((masked >> np.uint64(63)).sum())
    assert abs(ones - 50_000) < 4 * np.sqrt(25_000)
    with pytest.raises(InvalidSecAggConfig):
        mask_stream(b"short", 1)


def test_flatten_round_trips_shapes() -> None:
    """Model arrays flatten into one vector and back, in order."""
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7.0], dtype=np.float32)]
    back = unflatten(flatten(arrays), [(2, 3), (1,)])
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))
    with pytest.raises(InvalidSecAggConfig):
        unflatten(np.zeros(5), [(2, 3)])


@pytest.mark.parametrize("count,shares", [(5, 5), (9, 5), (12, 3), (4, 7)])
def test_neighbourhoods_are_symmetric_and_sized(count: int, shares: int) -> None:
    """Each node has min(shares, count) members including itself; the relation is mutual."""
    nodes = list(range(100, 100 + count))
    graph = neighbourhoods(nodes, shares, random.Random(3))
    for node, members in graph.items():
        assert node in members and len(members) == min(shares, count)
        assert all(node in graph[m] for m in members)


def test_thresholds_must_keep_an_honest_majority() -> None:
    """A threshold at or below half the shares (or above them) is refused; a complete
    graph may have any size, a ring needs an odd number of shares."""
    check_threshold(5, 3)
    check_threshold(5, 2, nodes=2)  # two domains: both are needed
    check_threshold(4, 3, nodes=4)  # complete graph of four
    for shares, threshold, nodes in [(5, 2, 5), (5, 6, 9), (4, 3, 9), (5, 1, 2), (3, 2, 1)]:
        with pytest.raises(InvalidSecAggConfig):
            check_threshold(shares, threshold, nodes)
