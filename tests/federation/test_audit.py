"""The membership-inference audit: the attack's statistics on known cases, a memorising
model is caught, and an audited registry version keeps its result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from federation.audit import audit_model, audit_version, loss_threshold_attack, score_attack
from federation.features import Dataset
from federation.model import TrainConfig, build_model, train


def test_separated_losses_are_a_perfect_attack() -> None:
    """Members all at loss 0.1, non-members at 0.9: AUC 1, advantage 1, threshold 0.1."""
    result = loss_threshold_attack(np.full(50, 0.1), np.full(70, 0.9))
    assert (result.attack_auc, result.advantage, result.threshold) == (1.0, 1.0, 0.1)
    assert result.tpr_at_1pct_fpr == 1.0
    assert (result.members, result.non_members) == (50, 70)


def test_identical_distributions_give_chance() -> None:
    """Losses from one distribution: AUC near 0.5 and advantage within the KS bound
    (1.63 * sqrt(2 / n) at 1% false failures, n = 4,000)."""
    rng = np.random.default_rng(7)
    result = loss_threshold_attack(rng.exponential(size=4_000), rng.exponential(size=4_000))
    assert abs(result.attack_auc - 0.5) < 0.03
    assert result.advantage < 1.63 * np.sqrt(2 / 4_000)


def test_tpr_at_low_fpr_counts_members_above_the_top_non_members() -> None:
    """Scores 0..99 for non-members: at most one of them (1%) may be accused, which
    allows the threshold 99; members 99..198 are then all caught, members 90..189 not."""
    result = score_attack(np.arange(99, 199, dtype=float), np.arange(100, dtype=float))
    assert result.tpr_at_1pct_fpr == 1.0
    result = score_attack(np.arange(90, 190, dtype=float), np.arange(100, dtype=float))
    assert result.tpr_at_1pct_fpr == 0.91  # threshold 99: members 99..189


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
    assert set(after["per_domain"]) == {"a", "b"}  # type: ignore[call-overload]


def _registered_version(data_dir: Path) -> str:
    """A federated model of the three airports (3 SecAgg+ rounds), registered."""
    from federation.model import unflatten
    from federation.registry import ModelRegistry
    from tests.federation.test_coordinator import job

    coordinator, _ = job(data_dir)
    lineage = coordinator.run()
    weights = unflatten(coordinator.weights, coordinator.shapes)
    return ModelRegistry("sqlite", data_dir).register("flight_delay", weights, lineage, "completed")


def test_an_audited_version_keeps_its_result(airport_data: Path) -> None:
    """A federated model of the three airports, audited with their stores: the result
    (per domain and pooled, for every attack) is kept in the registry beside the version."""
    from domains.registry import load_contracts
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.registry import ModelRegistry

    version = _registered_version(airport_data)
    registry = ModelRegistry("sqlite", airport_data)
    contracts = load_contracts()
    stores = {
        d: DomainFeatureStore(contracts[d], airport_data, FeatureStoreSettings())
        for d in ("ewr", "jfk", "lga")
    }
    result = audit_version(registry, version, stores, max_rows=200, shadows=2)
    assert set(result["per_domain"]) == {"ewr", "jfk", "lga"}  # type: ignore[call-overload]
    assert set(result["attacks"]) == {  # type: ignore[call-overload]
        "loss_threshold", "shadow_model", "shadow_calibrated",
    }  # fmt: skip
    kept = registry.audits(version)
    assert len(kept) == 1 and kept[0]["kind"] == "membership_inference"
    assert kept[0]["pooled"] == result["pooled"] and kept[0]["shadows"] == 2
    for attack in kept[0]["attacks"].values():  # 3 rounds of a small MLP
        assert 0.0 <= attack["pooled"]["advantage"] < 0.3
        assert attack["pooled"]["members"] == attack["pooled"]["non_members"] == 600


def test_the_audit_command_prints_every_attack_and_keeps_the_result(airport_data: Path) -> None:
    """`privmesh models audit VERSION --shadows 2`: a table row per attack, the strongest
    attack per domain, and the audit in the registry; `--shadows 1` is one line."""
    from federation.registry import ModelRegistry
    from tests.infra.test_cli import assert_one_line_error, run_cli

    version = _registered_version(airport_data)
    env = {"PRIVMESH_DATA_DIR": str(airport_data), "COLUMNS": "200"}
    result = run_cli(
        "models", "audit", version, "--max-rows", "100", "--shadows", "2", env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for needle in ("loss_threshold", "shadow_model", "shadow_calibrated", "ewr", "TPR at 1% FPR"):
        assert needle in result.stdout, result.stdout
    (kept,) = ModelRegistry("sqlite", airport_data).audits(version)
    assert kept["shadows"] == 2 and f"strongest attack ({kept['attack']})" in result.stdout
    refused = run_cli("models", "audit", version, "--shadows", "1", env=env)
    assert_one_line_error(refused, "at least 2 shadow models", "[invalid_audit_config]")
    assert len(ModelRegistry("sqlite", airport_data).audits(version)) == 1


def test_auditing_an_unknown_version_is_one_line() -> None:
    """`privmesh models audit` of a version that was never registered: one line."""
    from tests.infra.test_cli import assert_one_line_error, run_cli

    result = run_cli("models", "audit", "flight_delay-v999")
    assert_one_line_error(result, "no model version 'flight_delay-v999'", "[unknown_model_version]")
