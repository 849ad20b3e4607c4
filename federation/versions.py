"""A registered model version as a usable model: weights, task and feature encoding."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from torch import nn

from federation.features import Encoding
from federation.model import build_model, set_weights
from federation.registry import ModelRegistry
from federation.run_config import RunConfig
from federation.task_specs import TaskSpec


@dataclass(frozen=True)
class LoadedVersion:
    """The model of a version with the task and encoding it was trained with."""

    model: nn.Module
    task: TaskSpec
    encoding: Encoding
    lineage: dict[str, Any]

    def fresh_model(self) -> nn.Module:
        """An untrained model of the version's architecture."""
        return _build(self.lineage, self.encoding)

    @property
    def run_config(self) -> RunConfig:
        """The run configuration the version was trained with."""
        return run_config_of(self.lineage)


def load_version(registry: ModelRegistry, version: str) -> LoadedVersion:
    """``version``'s model, rebuilt from its lineage and weights (UnknownModelVersion when
    the registry does not hold it)."""
    lineage = registry.get(version).lineage
    encoding = Encoding.from_json(json.dumps(lineage["encoding"]))
    model = _build(lineage, encoding)
    set_weights(model, registry.weights(version))
    return LoadedVersion(model, TaskSpec.model_validate(lineage["task_spec"]), encoding, lineage)


def run_config_of(lineage: dict[str, Any]) -> RunConfig:
    """The run configuration of a version's lineage. Versions registered before the whole
    configuration was kept give it back from their ``training`` and ``dp`` facts (the
    learning-rate schedule and trimmed fraction then take their defaults)."""
    raw = lineage.get("run_config")
    if raw is None:
        training, dp = lineage["training"], lineage["dp"]
        raw = {
            "task": lineage["task"],
            "num-server-rounds": int(lineage["rounds"]["planned"]),
            "local-epochs": training["local_epochs"],
            "learning-rate": training["learning_rate"],
            "batch-size": training["batch_size"],
            "max-local-steps": training["max_local_steps"],
            "seed": training["seed"],
            "aggregator": training["aggregator"],
            "server-learning-rate": training["server_learning_rate"],
            "server-momentum": training["server_momentum"],
            "min-domains": dp["min_domains"],
            "clipping-norm": dp["clipping_norm"],
            "dp-noise-multiplier": dp["noise_multiplier"],
            "dp-delta": dp["delta"],
            "dp-clipping": dp["clipping"],
            "secure-aggregation": bool(lineage["secure_aggregation"]["enabled"]),
        }
    return RunConfig.from_flower(raw)


def _build(lineage: dict[str, Any], encoding: Encoding) -> nn.Module:
    return build_model(lineage["model"]["kind"], encoding.width, lineage["model"]["hidden"])
