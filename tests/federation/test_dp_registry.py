"""The registry records what DP cost: epsilon and the AUC lost against the newest
non-DP version of the same task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federation.registry import ModelRegistry

WEIGHTS = [np.zeros(2, dtype=np.float32)]


def lineage(auc: float, epsilon: float | None) -> dict[str, Any]:
    return {
        "dp": {"enabled": epsilon is not None, "epsilon_total": epsilon},
        "metrics": {"global": {"pooled_auc": auc}},
    }


def test_a_dp_version_records_epsilon_and_its_utility_loss(tmp_path: Path) -> None:
    """DP after two non-DP versions: the loss is against the newest one; a DP version
    is never a baseline; a non-DP version gets no utility entry."""
    registry = ModelRegistry("sqlite", tmp_path)
    registry.register("t", WEIGHTS, lineage(0.70, None), "candidate")
    plain = registry.register("t", WEIGHTS, lineage(0.72, None), "candidate")
    registry.register("other", WEIGHTS, lineage(0.99, None), "candidate")
    first = registry.register("t", WEIGHTS, lineage(0.69, 8.5), "candidate")
    second = registry.register("t", WEIGHTS, lineage(0.68, 9.0), "candidate")
    utility = registry.get(first).lineage["dp"]["utility"]
    assert utility["baseline_version"] == plain and utility["epsilon"] == 8.5
    assert utility["auc_loss"] == pytest.approx(0.03)
    assert registry.get(second).lineage["dp"]["utility"]["baseline_version"] == plain
    assert "utility" not in registry.get(plain).lineage["dp"]


def test_without_a_baseline_the_registry_says_how_to_get_one(tmp_path: Path) -> None:
    """A first DP version has no baseline: the loss is None and the reason names the fix."""
    registry = ModelRegistry("sqlite", tmp_path)
    version = registry.register("t", WEIGHTS, lineage(0.6, 3.0), "candidate")
    utility = registry.get(version).lineage["dp"]["utility"]
    assert utility["auc_loss"] is None and "--dp-noise 0" in utility["reason"]
