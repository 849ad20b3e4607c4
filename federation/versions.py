"""A registered model version as a usable model: weights, task and feature encoding."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from torch import nn

from federation.features import Encoding
from federation.registry import ModelRegistry
from federation.task import build_model, set_weights
from federation.tasks import TaskSpec


@dataclass(frozen=True)
class LoadedVersion:
    """The model of a version with the task and encoding it was trained with."""

    model: nn.Module
    task: TaskSpec
    encoding: Encoding
    lineage: dict[str, Any]


def load_version(registry: ModelRegistry, version: str) -> LoadedVersion:
    """``version``'s model, rebuilt from its lineage and weights (UnknownModelVersion when
    the registry does not hold it)."""
    lineage = registry.get(version).lineage
    encoding = Encoding.from_json(json.dumps(lineage["encoding"]))
    model = build_model(lineage["model"]["kind"], encoding.width, lineage["model"]["hidden"])
    set_weights(model, registry.weights(version))
    return LoadedVersion(model, TaskSpec.model_validate(lineage["task_spec"]), encoding, lineage)
