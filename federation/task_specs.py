"""Training tasks: which domains and data product, features, label, model, metric.

Tasks are YAML files in the domain folders (``<domain>/tasks/*.yaml``, see
``domains.folders``), or in the flat folder ``PRIVMESH_FEDERATION_TASKS_DIR`` when it is
set, validated against :class:`TaskSpec`. A task names features by their contract field and
how each is encoded; the encoding's categories and ranges come from the contracts
(``federation.features``), so every domain turns its rows into the same columns.
How long and how hard to train (rounds, epochs, secure aggregation, DP) is the run
configuration's business (``[tool.flwr.app.config]``), not the task's.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domains.folders import domain_set
from domains.yaml_files import is_empty_yaml, load_yaml_model
from federation.errors import InvalidTask, UnknownTask

# The model kinds build_model (federation.model) builds; named here so that reading and
# linting task files does not import torch.
ModelKind = Literal["logistic_regression", "mlp"]

CalendarPart = Literal["month", "day", "weekday", "hour"]
_DEFAULT_PARTS: list[CalendarPart] = ["month", "weekday", "hour"]


class LabelSpec(BaseModel):
    """The binary label: ``field > above``, or ``field == equals``; rows without it are
    left out of training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    above: float | None = None
    equals: str | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> Self:
        if (self.above is None) == (self.equals is None):
            raise ValueError(f"label on {self.field!r} needs exactly one of 'above' or 'equals'")
        return self


class FeatureSpec(BaseModel):
    """One contract field and its encoding.

    ``onehot``: a string field's public ``allowed_values``; ``onehot_range``: an int
    field's bounds, one column per value; ``scale``: a numeric field mapped onto [0, 1]
    by its contract bounds; ``calendar``: a timestamp's ``parts`` one-hot, in ``timezone``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    encode: Literal["onehot", "onehot_range", "scale", "calendar"]
    parts: list[CalendarPart] = Field(default_factory=lambda: list(_DEFAULT_PARTS))
    timezone: str = "UTC"


class ModelSpec(BaseModel):
    """The classifier: logistic regression, or an MLP with ``hidden`` layer widths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ModelKind = "logistic_regression"
    hidden: Annotated[list[Annotated[int, Field(ge=1, le=65_536)]], Field(max_length=8)] = Field(
        default_factory=lambda: [32]
    )


class TaskSpec(BaseModel):
    """A federated training task over one data product that every domain publishes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    description: Annotated[str, Field(min_length=1)]
    domains: Annotated[list[str], Field(min_length=2)]
    product: str
    label: LabelSpec
    features: Annotated[list[FeatureSpec], Field(min_length=1)]
    model: ModelSpec = Field(default_factory=ModelSpec)
    metric: Literal["auc"] = "auc"
    holdout: Annotated[float, Field(gt=0, lt=1)] = 0.2
    since: datetime | None = None
    until: datetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"task {self.name!r} lists a domain twice")
        names = [f.field for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r} encodes a field twice")
        if self.label.field in names:
            raise ValueError(f"task {self.name!r}: the label field is also a feature")
        if self.since and self.until and self.since >= self.until:
            raise ValueError(f"task {self.name!r}: 'since' must be before 'until'")
        return self


def tasks_dir() -> Path | None:
    """The configured flat tasks folder (``PRIVMESH_FEDERATION_TASKS_DIR``), or None."""
    from federation.settings import get_federation_settings

    return get_federation_settings().tasks_dir


def load_task_file(path: Path) -> TaskSpec:
    """Parse and validate one task file; errors name the file and the problem."""
    return load_yaml_model(path, TaskSpec, "task", InvalidTask)


def load_tasks(directory: Path | None = None) -> dict[str, TaskSpec]:
    """Every task by name: of the flat folder ``directory`` (default :func:`tasks_dir`),
    else of the configured domain folders."""
    directory = directory or tasks_dir()
    if directory is not None:
        return _load_directory(directory.resolve())
    return _load_files(domain_set().task_files)


@cache
def _load_directory(directory: Path) -> dict[str, TaskSpec]:
    if not directory.is_dir():
        raise UnknownTask(f"tasks folder {directory} does not exist")
    return _read(tuple(sorted(directory.glob("*.yaml"))))


@cache
def _load_files(paths: tuple[Path, ...]) -> dict[str, TaskSpec]:
    return _read(paths)


def _read(paths: tuple[Path, ...]) -> dict[str, TaskSpec]:
    tasks: dict[str, TaskSpec] = {}
    for path in paths:
        if is_empty_yaml(path):
            continue  # a commented-out task
        task = load_task_file(path)
        if task.name in tasks:
            raise InvalidTask(f"{path}: task {task.name!r} is declared twice")
        tasks[task.name] = task
    return tasks


def get_task(name: str, directory: Path | None = None) -> TaskSpec:
    """The task called ``name``, or UnknownTask listing the known ones."""
    tasks = load_tasks(directory)
    if name not in tasks:
        known = ", ".join(sorted(tasks)) or "none"
        raise UnknownTask(f"unknown task {name!r} (known: {known})")
    return tasks[name]
