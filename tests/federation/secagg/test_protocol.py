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
    decode_error_bound,
    decode_sum,
    mask_stream,
    neighbourhoods,
    quantise,
    weight_share,
)


@settings(max_examples=200, deadline=None)
@given(
    vectors=st.lists(
        st.lists(st.floats(-10, 10, allow_nan=False), min_size=6, max_size=6),
        min_size=1,
        max_size=8,
    ),
    weights=st.lists(st.integers(1, 10_000_000), min_size=8, max_size=8),
)
def test_weighted_sum_decodes_to_the_plain_weighted_mean(
    vectors: list[list[float]], weights: list[int]
) -> None:
    """sum(q(x_i * w_i / W)) modulo 2**32 decodes to the weighted mean within n * 0.5/scale."""
    weights = weights[: len(vectors)]
    scale = choose_scale(10.0, len(vectors))
    total = np.zeros(6, dtype=np.uint32)
    for vector, weight in zip(vectors, weights, strict=True):
        share = weight_share(weight, sum(weights))
        total = apply_mask(total, quantise(np.array(vector), scale, 10.0, share), +1)
    mean = decode_sum(total, scale)
    plain = np.average(np.array(vectors), axis=0, weights=weights)
    assert np.max(np.abs(mean - plain)) <= len(vectors) * 0.5 / scale + 1e-12 * 10


def test_a_million_parameter_mean_at_the_default_clipping_norm_is_within_1e_5() -> None:
    """Five 1M-element updates of norm ~0.6 (a shared direction plus each domain's own)
    under the default bound 10: the 32-bit mean is within 1e-5 relative of the float
    mean, and no element is off by more than decode_error_bound."""
    rng = np.random.default_rng(5)
    size, bound, weights = 1_000_000, 10.0, [40_000, 55_000, 33_000, 59_000, 47_000]
    common = rng.normal(0, 0.5 / 1000, size)
    updates = [common + rng.normal(0, 0.3 / 1000, size) for _ in weights]
    scale = choose_scale(bound, len(weights))
    total = np.zeros(size, dtype=np.uint32)
    for update, weight in zip(updates, weights, strict=True):
        apply_mask(total, quantise(update, scale, bound, weight_share(weight, sum(weights))), +1)
    mean = decode_sum(total, scale)
    plain = np.average(np.array(updates), axis=0, weights=weights)
    assert np.linalg.norm(mean - plain) / np.linalg.norm(plain) < 1e-5
    assert np.max(np.abs(mean - plain)) <= decode_error_bound(scale, len(weights))
    with pytest.raises(InvalidSecAggConfig):
        decode_error_bound(scale, 0)


def test_the_sum_at_the_bound_does_not_wrap() -> None:
    """Every contributor at +bound (and at -bound), with the largest shares the weights
    allow, sums without wrapping around the 32-bit ring: N x clip x scale < 2**31."""
    for contributors in (1, 2, 5, 100):
        scale = choose_scale(10.0, contributors)
        assert 10.0 * scale + contributors / 2 < 2**31
        for sign in (1.0, -1.0):
            total = np.zeros(3, dtype=np.uint32)
            for _ in range(contributors):
                q = quantise(np.full(3, sign * 10.0), scale, 10.0, 1 / contributors)
                total = apply_mask(total, q, +1)
            assert np.allclose(decode_sum(total, scale), sign * 10.0, rtol=1e-6)


def test_values_beyond_flowers_clipping_range_survive() -> None:
    """Flower clips full parameters to +-8 silently; here a bound of 100 carries 50 exactly."""
    scale = choose_scale(100.0, 2)
    values = np.array([50.0, -99.5, 8.000001])
    total = quantise(values, scale, 100.0, 1 / 3)
    total = apply_mask(total, quantise(values, scale, 100.0, 2 / 3), +1)
    assert np.allclose(decode_sum(total, scale), values, atol=1e-6)


def test_a_value_beyond_the_bound_is_refused_not_clipped() -> None:
    """Quantisation never saturates: it raises, naming the magnitude and the bound; bad
    shares and weights are refused too."""
    with pytest.raises(QuantisationRangeExceeded, match=r"exceeds the secure-aggregation bound"):
        quantise(np.array([0.5, 10.5]), choose_scale(10.0, 1), 10.0)
    for evil in (np.nan, np.inf, -np.inf, 1e308):
        with pytest.raises(QuantisationRangeExceeded):
            quantise(np.array([0.0, evil]), 1.0, 10.0)
    for share in (0.0, -0.5, 1.5, np.nan):
        with pytest.raises(InvalidSecAggConfig):
            quantise(np.zeros(2), 1.0, 10.0, share)
    for weight, total in [(0, 5), (6, 5), (True, 5), (-1, 5)]:
        with pytest.raises(InvalidSecAggConfig):
            weight_share(weight, total)
    with pytest.raises(InvalidSecAggConfig):
        decode_sum(np.zeros(2, dtype=np.uint32), 1.0, 0.0)


def test_scale_leaves_no_room_for_overflow() -> None:
    """The largest sum at the chosen scale stays below 2**31 in magnitude."""
    for bound, count in [(1.0, 1), (10.0, 5), (1e-3, 10_000), (1e6, 17)]:
        scale = choose_scale(bound, count)
        assert bound * scale + count / 2 < 2**31
        assert bound * scale >= 0.999 * 2**31  # and all the room is used
    for bound, count in [(1e40, 2), (float("nan"), 2), (0.0, 2), (1.0, 0)]:
        with pytest.raises(InvalidSecAggConfig):
            choose_scale(bound, count)


def test_masks_cancel_and_hide() -> None:
    """Pairwise masks cancel in the sum; a masked vector alone looks uniform."""
    key = bytes(range(32))
    stream = mask_stream(key, 100_000)
    assert np.array_equal(stream, mask_stream(key, 100_000))
    assert not np.array_equal(stream, mask_stream(bytes(32), 100_000))
    secret = np.zeros(100_000, dtype=np.uint32)
    masked = apply_mask(secret.copy(), stream, +1)
    assert np.array_equal(apply_mask(masked.copy(), stream, -1), secret)
    # The top bit of a masked zero vector is a fair coin (4-sigma bounds: ~6e-5 false failures).
    ones = int((masked >> np.uint32(31)).sum())
    assert abs(ones - 50_000) < 4 * np.sqrt(25_000)
    with pytest.raises(InvalidSecAggConfig):
        mask_stream(b"short", 1)


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
