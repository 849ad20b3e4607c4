"""Global standardisation: the pooled statistics equal the centralised ones, they come out
of a real SecAgg+ round that never reveals one domain's moments, and folding them into the
first layer changes no prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from federation.aggregation import weighted_mean
from federation.errors import InvalidModelConfig, InvalidTrainingData
from federation.model import build_model, flatten, get_weights, set_weights
from federation.secagg.client import SecAggClient
from federation.secagg.protocol import choose_scale, decode_sum, quantise, weight_share
from federation.secagg.server import SecAggRound
from federation.standardise import MOMENTS_BOUND, Standardisation, local_moments


def domains(seed: int = 0) -> dict[int, np.ndarray]:
    """Four domains of different sizes and different column distributions (non-IID),
    values in [0, 1] like encoded columns, one column constant everywhere."""
    rng = np.random.default_rng(seed)
    out = {}
    for node, (rows, centre) in enumerate([(50, 0.1), (400, 0.3), (1_200, 0.7), (90, 0.9)], 1):
        x = np.clip(rng.normal(centre, 0.1, size=(rows, 5)), 0, 1)
        x[:, 3] = rng.random(rows) < centre  # a one-hot-like column
        x[:, 4] = 0.25  # constant: only centred, never divided by ~0
        out[node] = x
    return out


def test_pooled_statistics_equal_the_centralised_ones() -> None:
    """The example-weighted mean of the domains' moments gives the mean and std of the
    union of their rows (population std, as numpy's), to rounding."""
    data = domains()
    pooled = Standardisation.from_moments(
        weighted_mean([local_moments(x) for x in data.values()], [len(x) for x in data.values()])
    )
    union = np.vstack(list(data.values()))
    assert np.allclose(pooled.mean, union.mean(axis=0), atol=1e-12)
    assert np.allclose(pooled.std[:4], union.std(axis=0)[:4], atol=1e-9)
    assert pooled.std[4] == 1.0  # the constant column is centred only
    standardised = pooled.apply(union)
    assert np.allclose(standardised[:, :4].mean(axis=0), 0, atol=1e-5)
    assert np.allclose(standardised[:, :4].std(axis=0), 1, atol=1e-5)
    assert np.allclose(standardised[:, 4], 0)


def test_secure_round_reveals_only_the_pooled_moments() -> None:
    """Each domain's moments go through the real SecAgg+ client and server: every vector
    the server receives is masked (far from the domain's own quantised moments), and
    only their unmasked sum decodes, to the centralised statistics within 1e-6."""
    data = domains(1)
    counts = {n: len(x) for n, x in data.items()}
    clients = {n: SecAggClient(n, {}) for n in data}
    keys = {n: c.keygen(0) for n, c in clients.items()}
    round_ = SecAggRound(0, keys, 5, 3, seed=1)
    for n in round_.participants():
        round_.record_shares(n, *clients[n].share_keys(0, 3, round_.keys_for(n)))
    shared = round_.close_sharing()
    scale = choose_scale(MOMENTS_BOUND, len(shared))
    total_weight = sum(counts[n] for n in shared)
    for n in shared:
        clients[n].receive_shares(0, *round_.shares_for(n))
        moments = local_moments(data[n])
        quantised = quantise(moments, scale, MOMENTS_BOUND, weight_share(counts[n], total_weight))
        masked = clients[n].mask(0, quantised)
        own = quantised.view(np.int32).astype(np.float64)
        seen = masked.view(np.int32).astype(np.float64)
        # What leaves the domain is its moments plus a uniform mask: it matches the
        # domain's quantised moments in no element (chance per element 2**-32).
        assert not np.any(seen == own)
        round_.record_masked(n, masked, counts[n])
    for n in round_.close_collect(2):
        round_.record_reveal(n, *clients[n].reveal(0, *round_.unmask_lists(n)))
    total, weight = round_.aggregate()
    pooled = Standardisation.from_moments(decode_sum(total, scale, weight / total_weight))
    union = np.vstack(list(data.values()))
    assert np.allclose(pooled.mean, union.mean(axis=0), atol=1e-6)
    assert np.allclose(pooled.std[:4], union.std(axis=0)[:4], atol=1e-5)


@pytest.mark.parametrize("kind,hidden", [("logistic_regression", 1), ("mlp", 8)])
def test_folding_changes_no_prediction(kind: str, hidden: int) -> None:
    """A model trained on standardised inputs and its folded weights on the raw columns
    give the same logits."""
    data = np.vstack(list(domains(2).values())).astype(np.float32)
    scaling = Standardisation.from_moments(local_moments(data))
    torch.manual_seed(0)
    model = build_model(kind, 5, [hidden])  # type: ignore[arg-type]
    shapes = [w.shape for w in get_weights(model)]
    with torch.no_grad():
        expected = model(torch.from_numpy(scaling.apply(data))).numpy()
    folded = scaling.fold(flatten(get_weights(model)), 5, hidden)
    sizes = np.cumsum([0, *[int(np.prod(s)) for s in shapes]])
    set_weights(
        model,
        [
            folded[a:b].reshape(s).astype(np.float32)
            for a, b, s in zip(sizes, sizes[1:], shapes, strict=False)
        ],
    )
    with torch.no_grad():
        actual = model(torch.from_numpy(data)).numpy()
    assert np.allclose(actual, expected, atol=1e-4)


def test_malformed_statistics_are_refused_with_codes() -> None:
    """Moments of odd length or non-finite values, a carried std <= 0 or of the wrong
    width, and a domain without rows are refused, each with its error code."""
    with pytest.raises(InvalidModelConfig) as odd:
        Standardisation.from_moments(np.zeros(5))
    assert odd.value.code == "invalid_model_config"
    with pytest.raises(InvalidModelConfig):
        Standardisation.from_moments(np.array([0.5, np.nan]))
    with pytest.raises(InvalidModelConfig, match="std <= 0"):
        Standardisation.from_arrays([np.zeros(3), np.array([1.0, 0.0, 1.0])], 3)
    with pytest.raises(InvalidModelConfig, match="two arrays of 4"):
        Standardisation.from_arrays([np.zeros(3), np.ones(3)], 4)
    with pytest.raises(InvalidTrainingData) as empty:
        local_moments(np.zeros((0, 3)))
    assert empty.value.code == "invalid_training_data"
