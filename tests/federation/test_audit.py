"""The membership-inference audit: the attack's statistics on known cases, a memorising
model is caught, and an audited registry version keeps its result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from federation.audit import audit_model, audit_version, loss_threshold_attack
from federation.features import Dataset
from federation.task import TrainConfig, build_model, train


def test_separated_losses_are_a_perfect_attack() -> None:
    """Members all at loss 0.1, non-members at 0.9: AUC 1, advantage 1, threshold 0.1."""
    result = loss_threshold_attack(np.full(50, 0.1), np.full(70, 0.9))
    assert (result.attack_auc, result.advantage, result.threshold) == (1.0, 1.0, 0.1)
    assert (result.members, result.non_members) == (50, 70)


def test_identical_distributions_give_chance() -> None:
    """Losses from one distribution: AUC near 0.5 and advantage within the KS bound
    (1.63 * sqrt(2 / n) at 1% false failures, n = 4,000)."""
    rng = np.random.default_rng(7)
    result = loss_threshold_attack(rng.exponential(size=4_000), rng.exponential(size=4_000))
    assert abs(result.attack_auc - 0.5) < 0.03
    assert result.advantage < 1.63 * np.sqrt(2 / 4_000)


def test_empty_sides_are_refused() -> None:
    """No members or no non-members: a clear error."""
    with pytest.raises(ValueError, match="at least one member"):
        loss_threshold_attack(np.array([]), np.array([0.3]))


def _random_labels(rows: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * rows, 20)).astype(np.float32)
    y = rng.integers(0, 2, 2 * rows).astype(np.int64)
    return Dataset(x[:rows], y[:rows], x[rows:], y[rows:], 0)


def test_a_memorising_model_is_caught_and_an_untrained_one_is_not() -> None:
    """An MLP fitted for many epochs to random labels memorises its rows: large advantage;
    the same architecture untrained: none to speak of."""
    torch.manual_seed(0)
    data = {"a": _random_labels(300, 1), "b": _random_labels(300, 2)}
    untrained = build_model("mlp", 20, [256])
    before = audit_model(untrained, data, max_rows=300)
    pooled_before = before["pooled"]
    assert isinstance(pooled_before, dict) and pooled_before["advantage"] < 0.15
    memoriser = build_model("mlp", 20, [256])
    x = np.vstack([d.x_train for d in data.values()])
    y = np.concatenate([d.y_train for d in data.values()])
    train(memoriser, x, y, TrainConfig(epochs=200, learning_rate=0.05, batch_size=64))
    after = audit_model(memoriser, data, max_rows=300)
    pooled = after["pooled"]
    assert isinstance(pooled, dict) and pooled["advantage"] > 0.5 and pooled["attack_auc"] > 0.8
    assert set(after["per_domain"]) == {"a", "b"}  # type: ignore[arg-type]


def test_an_audited_version_keeps_its_result(airport_data: Path) -> None:
    """A federated model of the three airports, audited with their stores: the result
    (per domain and pooled) is kept in the registry beside the version."""
    from domains.registry import load_contracts
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.registry import ModelRegistry
    from federation.secagg.protocol import unflatten
    from tests.federation.test_coordinator import job

    coordinator, _ = job(airport_data)
    lineage = coordinator.run()
    registry = ModelRegistry("sqlite", airport_data)
    weights = unflatten(coordinator.weights, coordinator.shapes)
    version = registry.register("flight_delay", weights, lineage, "completed")
    contracts = load_contracts()
    stores = {
        d: DomainFeatureStore(contracts[d], airport_data, FeatureStoreSettings())
        for d in lineage["domains"]
    }
    result = audit_version(registry, version, stores, max_rows=200)
    assert set(result["per_domain"]) == {"ewr", "jfk", "lga"}  # type: ignore[arg-type]
    kept = registry.audits(version)
    assert len(kept) == 1 and kept[0]["kind"] == "membership_inference"
    assert kept[0]["pooled"] == result["pooled"]
    assert 0.0 <= kept[0]["pooled"]["advantage"] < 0.3  # 3 rounds of a small MLP


def test_auditing_an_unknown_version_is_one_line() -> None:
    """`privmesh models audit` of a version that was never registered: one line."""
    from tests.infra.test_cli import assert_one_line_error, run_cli

    result = run_cli("models", "audit", "flight_delay-v999")
    assert_one_line_error(result, "no model version 'flight_delay-v999'", "[unknown_model_version]")
