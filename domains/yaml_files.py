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


Location = tuple[str | int, ...]


def key_lines(text: str) -> dict[Location, int]:
    """The 1-based line of every mapping key and sequence item in the YAML ``text``, by its
    path (``("products", 0, "fields", 2, "name")``); the document's root is line 1."""
    lines: dict[Location, int] = {(): 1}
    stack: list[tuple[yaml.Node, Location]] = []
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        stack.append((root, ()))
    while stack:
        node, where = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*where, str(key.value))
                lines[here] = key.start_mark.line + 1
                stack.append((value, here))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                here = (*where, index)
                lines[here] = item.start_mark.line + 1
                stack.append((item, here))
    return lines


def line_of(lines: dict[Location, int], where: Location) -> int:
    """The line of ``where``, else of its nearest enclosing key that exists."""
    for end in range(len(where), -1, -1):
        found = lines.get(tuple(where[:end]))
        if found is not None:
            return found
    return 1


def is_empty_yaml(path: Path) -> bool:
    """True if ``path`` holds no YAML document (blank, or comments only: a template that is
    commented out); an unreadable file is not empty (its loader reports it)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) is None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
