"""Reading a YAML file into a pydantic model, with errors that name the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def validation_problems(exc: ValidationError) -> str:
    """Each problem of ``exc`` as ``location: message``, joined by semicolons."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
    )


def load_yaml_model(path: Path, model: type[M], what: str, error: type[Exception]) -> M:
    """``path`` parsed and validated as ``model``; an unreadable file or an invalid one
    raises ``error`` naming the file (and ``what`` it should hold) and every problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(f"{path}: {validation_problems(exc)}") from exc
