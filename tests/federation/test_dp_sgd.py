"""Record-level DP-SGD inside each domain: calibration, per-row sensitivity, noise, moments."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from federation.dp import gaussian_noise
from federation.dp_sgd import (
    RecordDP,
    moments_bound,
    noisy_moments,
    plan,
    train_private,
)
from federation.errors import InvalidDPConfig, InvalidModelConfig
from federation.model import build_model, flatten, get_weights, set_weights
from federation.run_config import RunConfig

DP = RecordDP(epsilon=3.0, delta=1e-5)


@pytest.mark.parametrize("rows", [200, 2_000, 50_000])
def test_each_domain_calibrates_its_noise_to_the_target(rows: int) -> None:
    """Whatever its size, a domain's epsilon over the planned run is at most the target
    and within 2% of it (the smallest noise that meets it); a smaller domain, sampled at
    a higher rate, needs more noise."""
    domain = plan(DP, rows, batch_size=64, epochs=1, max_steps=0, rounds=20, statistics=True)
    assert 0.98 * DP.epsilon <= domain.epsilon() <= DP.epsilon
    assert domain.sample_rate == pytest.approx(min(1.0, 64 / rows))
    assert domain.epsilon(rounds=5) < domain.epsilon()
    bigger = plan(DP, rows * 4, batch_size=64, epochs=1, max_steps=0, rounds=20, statistics=True)
    assert bigger.noise_multiplier < domain.noise_multiplier


def test_a_target_no_noise_can_meet_is_refused_with_the_reason() -> None:
    tiny = RecordDP(epsilon=0.01, delta=1e-5)
    with pytest.raises(InvalidDPConfig, match="standardisation round alone"):
        plan(tiny, 1_000, batch_size=64, epochs=1, max_steps=0, rounds=10, statistics=True)
    with pytest.raises(InvalidDPConfig, match="no noise multiplier"):
        plan(tiny, 5, batch_size=64, epochs=50, max_steps=0, rounds=10_000, statistics=False)


def _one_step(x: np.ndarray, y: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    torch.manual_seed(0)
    model = build_model("logistic_regression", x.shape[1])
    set_weights(model, [np.zeros((1, x.shape[1]), np.float32), np.zeros(1, np.float32)])
    domain = plan(DP, len(y), batch_size=len(y), epochs=1, max_steps=1, rounds=1, statistics=False)
    domain = dataclasses.replace(domain, noise_multiplier=noise)
    train_private(model, x, y, domain, learning_rate=1.0, clipping_norm=1.0, seed=seed)
    return flatten(get_weights(model))


def test_one_row_moves_a_step_by_at_most_the_clipping_norm_over_the_batch() -> None:
    """Without noise and with every row sampled (rate 1), replacing one row by an extreme
    one changes the step by at most lr * 2C / B (the row's clipped gradient leaves, another
    enters); plain SGD moves by the row's raw gradient, hundreds of times more."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    other = x.copy()
    other[0] = 1e3
    y_other = y.copy()
    y_other[0] = 1 - y[0]
    gap = float(np.linalg.norm(_one_step(x, y, 0.0) - _one_step(other, y_other, 0.0)))
    assert 0 < gap <= 2 * 1.0 / 50 * (1 + 1e-5)

    def sgd(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        model = build_model("logistic_regression", 4)
        set_weights(model, [np.zeros((1, 4), np.float32), np.zeros(1, np.float32)])
        loss = torch.nn.BCEWithLogitsLoss()(
            model(torch.as_tensor(features)),
            torch.as_tensor(labels, dtype=torch.float32).reshape(-1, 1),
        )
        loss.backward()
        return np.concatenate([p.grad.numpy().ravel() for p in model.parameters()])  # type: ignore[union-attr]

    assert np.linalg.norm(sgd(x, y) - sgd(other, y_other)) > 100 * gap


def test_the_step_carries_gaussian_noise_of_sigma_c_over_the_batch() -> None:
    """With noise multiplier 2 on a zero-signal batch, each coordinate of the step has
    standard deviation lr * 2 * C / B: over 400 steps x 5 coordinates, the sample std is
    within 10% (false-failure rate below 1e-6: a chi-square with 2,000 degrees of freedom)."""
    x = np.zeros((20, 4), np.float32)
    y = np.zeros(20, np.int64)
    steps = np.array([_one_step(x, y, 2.0, seed=s) for s in range(400)])
    # zero features: the weight gradients are 0, the bias gradient is sigmoid(0) - 0 = 0.5
    steps[:, -1] += 0.5 / 1.0 * 1.0  # remove the clipped signal of the bias (0.5 < C)
    assert np.std(steps) == pytest.approx(2.0 * 1.0 / 20, rel=0.1)


def test_noised_moments_clip_each_row_and_noise_the_sum() -> None:
    """A row far outside [0, 1] counts with at most the bound; the noise has std
    sigma * bound / rows per moment."""
    rows = np.full((100, 3), 0.5)
    rows[0] = 1e6
    exact = noisy_moments(rows, moments_bound(3), 0.0, gaussian_noise)
    clean = noisy_moments(np.full((100, 3), 0.5), moments_bound(3), 0.0, gaussian_noise)
    assert np.linalg.norm((exact - clean) * 100) <= 2 * moments_bound(3)
    draws = np.array(
        [noisy_moments(np.full((100, 3), 0.5), 1.0, 4.0, gaussian_noise) for _ in range(200)]
    )
    assert np.std(draws - clean) == pytest.approx(4.0 / 100, rel=0.15)


def test_run_config_turns_record_level_dp_on_with_dp_epsilon() -> None:
    config = RunConfig.from_flower({"dp-epsilon": 5.0})
    assert config.record_dp.enabled and not config.dp.enabled and config.private
    assert config.standardises  # from noised moments
    domain = config.record_plan(10_000)
    assert domain.epsilon() <= 5.0 and domain.rounds == config.rounds
    with pytest.raises(InvalidModelConfig, match="two DP modes"):
        RunConfig.from_flower({"dp-epsilon": 5.0, "dp-noise-multiplier": 1.0})
    for hostile in (-1.0, float("nan"), float("inf"), 1e308, 0.001):
        with pytest.raises(InvalidDPConfig):
            RunConfig.from_flower({"dp-epsilon": hostile})
    for hostile in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidDPConfig):
            RunConfig.from_flower({"dp-epsilon": 5.0, "dp-record-clipping-norm": hostile})


def test_a_record_dp_job_trains_and_registers_each_domains_epsilon(airport_data: Path) -> None:
    """In process, with the real participant code: each domain trains with DP-SGD, the
    training losses stay home, the columns are standardised from noised moments, and the
    lineage holds each domain's plan and the epsilon its rows spent (at most the target)."""
    from tests.federation.test_coordinator import job

    coordinator, _ = job(airport_data, **{"num-server-rounds": 2, "dp-epsilon": 4.0})
    lineage = coordinator.run()
    dp = lineage["dp"]
    assert dp["enabled"] and dp["unit"].startswith("one training row")
    assert set(dp["domains"]) == set(lineage["domains"])
    for domain in dp["domains"].values():
        assert 0 < domain["epsilon_spent"] <= domain["epsilon_planned"] <= 4.0
        assert domain["rounds_trained"] == 2
    assert dp["epsilon_total"] == max(d["epsilon_spent"] for d in dp["domains"].values())
    assert coordinator.standardisation is not None
    assert all(r.train_loss is None or np.isnan(r.train_loss) for r in coordinator.rounds)
    assert lineage["rounds"]["completed"] == 2
