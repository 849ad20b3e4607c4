"""Shadow models: a replay trains as the federation does, and the shadow attacks see
membership where there is some and none where there is none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from federation.audit import audit_model
from federation.errors import InvalidAuditConfig
from federation.features import Dataset
from federation.model import build_model
from federation.run_config import RunConfig
from federation.shadow import ShadowPlan, replay


def _logistic_rows(rows: int, seed: int) -> Dataset:
    """Rows whose label depends on two features, with label noise to memorise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * rows, 20)).astype(np.float32)
    odds = 1.5 * x[:, 0] + x[:, 1]
    y = (rng.random(2 * rows) < 1 / (1 + np.exp(-odds))).astype(np.int64)
    return Dataset(x[:rows], y[:rows], x[rows:], y[rows:], 0)


def _mlp() -> nn.Module:
    return build_model("mlp", 20, [128])


def _config(epochs: int, **extra: object) -> RunConfig:
    return RunConfig.from_flower(
        {"num-server-rounds": 3, "local-epochs": epochs, "batch-size": 32, "min-domains": 1} | extra
    )


def _train_target(config: RunConfig, data: dict[str, Dataset]) -> nn.Module:
    return replay(_mlp, config, {d: (v.x_train, v.y_train) for d, v in data.items()}, seed=11)


def test_a_replay_with_the_targets_seed_and_rows_is_the_target(airport_data: Path) -> None:
    """Replaying a real SecAgg+ run's recorded configuration on the domains' own training
    rows with its seed gives back its model (to SecAgg+'s quantisation error): the shadows
    train exactly as the federation does."""
    from domains.registry import load_contracts
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.features import load_dataset
    from federation.task_specs import TaskSpec
    from federation.versions import run_config_of
    from tests.federation.test_coordinator import job

    coordinator, _ = job(airport_data, **{"num-server-rounds": 2, "learning-rate-final": 0.01})
    lineage = coordinator.run()
    config = run_config_of(lineage)
    assert config.learning_rate_final == 0.01 and config.rounds == 2
    task = TaskSpec.model_validate(lineage["task_spec"])
    contracts = load_contracts()
    data = {}
    for domain in lineage["domains"]:
        store = DomainFeatureStore(contracts[domain], airport_data, FeatureStoreSettings())
        dataset = load_dataset(store, task, coordinator.encoding)
        data[domain] = (dataset.x_train, dataset.y_train)
    model = replay(
        lambda: build_model(task.model.kind, coordinator.encoding.width, task.model.hidden),
        config,
        data,
        seed=config.train.seed,
    )
    from federation.model import flatten, get_weights

    replayed = flatten(get_weights(model))
    error = np.linalg.norm(replayed - coordinator.weights) / np.linalg.norm(coordinator.weights)
    assert error < 1e-5


def test_versions_without_a_recorded_run_config_are_rebuilt_from_their_facts() -> None:
    """A lineage from before the run configuration was kept: its training and DP facts
    give the same configuration back."""
    from federation.versions import run_config_of

    lineage = {
        "task": "flight_delay",
        "rounds": {"planned": 7, "lost": [3]},
        "training": {
            "local_epochs": 2, "learning_rate": 0.1, "batch_size": 64, "max_local_steps": 0,
            "seed": 3, "aggregator": "fedavgm", "server_learning_rate": 1.5,
            "server_momentum": 0.5,
        },
        "dp": {
            "min_domains": 2, "clipping_norm": 1.0, "noise_multiplier": 0.3, "delta": 1e-5,
            "clipping": "client",
        },
        "secure_aggregation": {"enabled": True},
    }  # fmt: skip
    config = run_config_of(lineage)
    assert (config.rounds, config.train.epochs, config.train.batch_size) == (7, 2, 64)
    assert (config.aggregator, config.server_momentum, config.dp.noise_multiplier) == (
        "fedavgm", 0.5, 0.3,
    )  # fmt: skip


def test_replayed_dp_noise_is_the_configured_scale() -> None:
    """With client-side DP and nothing to learn (zero learning rate), a replayed model
    moves from its start only by the simulated noise: per coordinate, the mean of the
    domains' noise of scale z_u * C / sqrt(n) (z_u: the updates' multiplier once adaptive
    clipping's bits took their share; n: the four domains replayed)."""
    import torch

    from federation.model import flatten, get_weights

    config = _config(
        1, **{"num-server-rounds": 1, "learning-rate": 1e-12, "dp-noise-multiplier": 2.0,
              "clipping-norm": 1.0, "min-domains": 4, "secure-aggregation": False}
    )  # fmt: skip
    data = {d: _logistic_rows(50, i).x_train for i, d in enumerate("abcd")}
    labelled = {d: (x, np.zeros(len(x), np.int64)) for d, x in data.items()}
    torch.manual_seed(5)
    start = flatten(get_weights(_mlp()))
    moved = flatten(get_weights(replay(_mlp, config, labelled, seed=5))) - start
    z_u = config.dp.update_noise_multiplier
    expected = z_u * 1.0 / np.sqrt(4) / np.sqrt(4)  # the mean of 4 domains' noise
    # 2,817 coordinates: the sample std is within 5% of the truth (false failure < 1e-4)
    assert abs(moved.std() / expected - 1) < 0.05


def test_a_replay_clips_each_round_with_the_targets_norm() -> None:
    """Without DP, a replay whose target clipped round 1 at 0.001 (adaptive clipping's
    record) moves the model by at most 0.001 in that round, however far training goes."""
    import torch

    from federation.model import flatten, get_weights

    config = _config(
        1, **{"num-server-rounds": 1, "learning-rate": 0.5, "clipping-norm": 10.0,
              "secure-aggregation": False, "standardise": False}
    )  # fmt: skip
    data = {d: _logistic_rows(50, i).x_train for i, d in enumerate("ab")}
    labelled = {d: (x, (x[:, 0] > 0).astype(np.int64)) for d, x in data.items()}
    torch.manual_seed(5)
    start = flatten(get_weights(_mlp()))
    moved = flatten(get_weights(replay(_mlp, config, labelled, 5, clipping_norms={1: 1e-3})))
    assert 0 < np.linalg.norm(moved - start) <= 1e-3 + 1e-9


def test_shadow_attacks_catch_a_memorising_model() -> None:
    """A model trained 30 local epochs per round on 600 noisy rows per domain memorises:
    both shadow attacks find members (AUC well above 0.5, positive advantage beyond the
    chance bound), and calibrating by shadows beats the plain loss threshold's AUC."""
    data = {"a": _logistic_rows(600, 1), "b": _logistic_rows(600, 2)}
    config = _config(30)
    target = _train_target(config, data)
    result = audit_model(target, data, 600, plan=ShadowPlan(_mlp, config, shadows=4))
    attacks = result["attacks"]
    assert isinstance(attacks, dict) and set(attacks) == {
        "loss_threshold", "shadow_model", "shadow_calibrated",
    }  # fmt: skip
    chance = 1.63 * np.sqrt(2 / 1_200)  # KS bound at 1% false failures, 1,200 of each
    for name in ("shadow_model", "shadow_calibrated"):
        pooled = attacks[name]["pooled"]
        assert pooled["attack_auc"] > 0.56 and pooled["advantage"] > chance, name
        assert pooled["members"] == pooled["non_members"] == 1_200
        assert set(attacks[name]["per_domain"]) == {"a", "b"}
    calibrated = attacks["shadow_calibrated"]["pooled"]["attack_auc"]
    assert calibrated > attacks["loss_threshold"]["pooled"]["attack_auc"]
    strongest = result["attack"]
    assert result["pooled"] == attacks[strongest]["pooled"]
    assert all(
        result["pooled"]["advantage"] >= a["pooled"]["advantage"]  # type: ignore[index]
        for a in attacks.values()
    )


def test_shadow_attacks_see_nothing_in_a_model_that_did_not_train_on_its_members() -> None:
    """The "members" of a model trained on other rows are members only by name: every
    shadow attack stays within chance (AUC near 0.5, advantage under the KS bound)."""
    data = {"a": _logistic_rows(600, 1), "b": _logistic_rows(600, 2)}
    config = _config(30)
    elsewhere = {d: _logistic_rows(600, 10 + i) for i, d in enumerate(data)}
    target = _train_target(config, elsewhere)
    result = audit_model(target, data, 600, plan=ShadowPlan(_mlp, config, shadows=3))
    chance = 1.63 * np.sqrt(2 / 1_200)
    attacks = result["attacks"]
    assert isinstance(attacks, dict)
    for name, attack in attacks.items():
        assert abs(attack["pooled"]["attack_auc"] - 0.5) < 0.05, name
        assert attack["pooled"]["advantage"] < chance, name


def test_one_shadow_is_refused() -> None:
    """The calibrated attack estimates a spread: fewer than two shadows is a clear error."""
    with pytest.raises(InvalidAuditConfig, match="at least 2 shadow models"):
        ShadowPlan(_mlp, _config(1), shadows=1)


def test_a_replay_stops_where_the_target_kept_its_model() -> None:
    """A target stopped by validation keeps an earlier round's model: replaying a 3-round
    configuration with kept_rounds=1 gives the 1-round replay, not the 3-round one."""
    rng = np.random.default_rng(0)
    data = {
        d: (rng.random((200, 4)).astype(np.float32), rng.integers(0, 2, 200).astype(np.int64))
        for d in ("a", "b")
    }

    def make() -> nn.Module:
        return build_model("logistic_regression", 4)

    def flat(model: nn.Module) -> np.ndarray:
        return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])

    three = RunConfig.from_flower({"num-server-rounds": 3})
    one = RunConfig.from_flower({"num-server-rounds": 1})
    kept = flat(replay(make, three, data, seed=1, kept_rounds=1))
    assert np.allclose(kept, flat(replay(make, one, data, seed=1)), atol=1e-6)
    assert not np.allclose(kept, flat(replay(make, three, data, seed=1)), atol=1e-4)
