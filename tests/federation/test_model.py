"""The framework-free model, training and evaluation of one domain."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from federation.errors import InvalidModelConfig, InvalidTrainingData
from federation.model import (
    TrainConfig,
    build_model,
    evaluate,
    flatten,
    get_weights,
    roc_auc,
    set_weights,
    train,
    unflatten,
)


def separable(rows: int = 4_000, features: int = 5, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    w = rng.normal(size=features)
    y = (x @ w + 0.3 * rng.normal(size=rows) > 0).astype(np.int64)
    return x, y


@pytest.mark.parametrize("kind", ["logistic_regression", "mlp"])
def test_training_learns_a_separable_task(kind: str) -> None:
    """A few epochs reach a high AUC and a lower loss than the untrained model."""
    x, y = separable()
    model = build_model(kind, 5)  # type: ignore[arg-type]
    before = evaluate(model, x, y)
    train(model, x, y, TrainConfig(epochs=5, seed=3))
    after = evaluate(model, x, y)
    assert after.auc > 0.95 and after.loss < before.loss and after.examples == len(y)


def test_training_is_deterministic_for_a_seed() -> None:
    """The same seed and initial weights give the same trained weights."""
    x, y = separable()
    first, second = build_model("mlp", 5), build_model("mlp", 5)
    set_weights(second, get_weights(first))
    for model in (first, second):
        train(model, x, y, TrainConfig(epochs=2, seed=9))
    for a, b in zip(get_weights(first), get_weights(second), strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_round_trip_and_refuse_wrong_shapes() -> None:
    """Weights load back exactly; arrays of another shape or count are refused."""
    model = build_model("mlp", 4, hidden=8)
    weights = [w + 1 for w in get_weights(model)]
    set_weights(model, weights)
    for a, b in zip(get_weights(model), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InvalidModelConfig, match="shape"):
        set_weights(model, [np.zeros((3, 3), np.float32), *weights[1:]])
    with pytest.raises(InvalidModelConfig, match="arrays"):
        set_weights(model, weights[:2])


def test_bad_data_is_refused_with_the_reason() -> None:
    """NaN features, an empty domain, wrong widths and non-binary labels are named."""
    model = build_model("logistic_regression", 3)
    x, y = separable(features=3)
    nan = x.copy()
    nan[5, 1] = np.nan
    cases = [
        ((nan, y), "NaN"),
        ((x[:0], y[:0]), "no training rows"),
        ((x[:, :2], y), "expects"),
        ((x, y * 2), "0 or 1"),
    ]
    for (xs, ys), message in cases:
        with pytest.raises(InvalidTrainingData, match=message):
            train(model, xs, ys, TrainConfig())


def test_config_ranges_are_checked() -> None:
    """Out-of-range training parameters and model kinds are refused."""
    with pytest.raises(InvalidModelConfig, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(InvalidModelConfig, match="learning_rate"):
        TrainConfig(learning_rate=0)
    with pytest.raises(InvalidModelConfig, match="unknown model kind"):
        build_model("forest", 3)  # type: ignore[arg-type]


def test_auc_matches_scikit_learn_with_ties() -> None:
    """The rank AUC equals scikit-learn's on data with many tied scores."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 2_000)
    scores = rng.integers(0, 20, 2_000).astype(np.float64) + y
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(5, np.int64), np.arange(5.0)))


def test_flatten_round_trips_shapes() -> None:
    """Model arrays flatten into one vector and back, in order."""
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7.0], dtype=np.float32)]
    back = unflatten(flatten(arrays), [(2, 3), (1,)])
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))
    with pytest.raises(InvalidModelConfig):
        unflatten(np.zeros(5), [(2, 3)])
