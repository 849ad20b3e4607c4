"""Imports point one way: each package imports only the layers below it.

The layers (README, "Layout"): ``domains`` <- ``feature_repo`` <- ``streams`` and
``federation`` <- ``dashboards_api`` <- ``catalog`` <- ``governance`` <- ``infra``, the
composition root that builds everything from settings. Lazy imports inside functions and
``TYPE_CHECKING`` imports count too: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RANK = {
    "domains": 0,
    "feature_repo": 1,
    "streams": 2,
    "federation": 2,
    "dashboards_api": 3,
    "catalog": 4,
    "governance": 5,
    "infra": 6,
}
# Allowed by rank but refused anyway: the API sums what the feature store holds and gets
# the facts about it (window length, partitions) from the composition root, never from
# the stream processor's or the trainer's code or settings.
FORBIDDEN = {"dashboards_api": {"streams", "federation"}}


def imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> list[Path]:
    return sorted(p for name in RANK for p in (ROOT / name).rglob("*.py"))


def test_the_scan_sees_every_package() -> None:
    """The rule covers the real tree (a renamed package would otherwise escape it)."""
    present = {p.relative_to(ROOT).parts[0] for p in package_modules()}
    assert set(RANK) <= present


@pytest.mark.parametrize("path", package_modules(), ids=module_name)
def test_a_module_imports_only_the_layers_below_it(path: Path) -> None:
    """No import reaches a package at the same rank or above, or one refused for it."""
    own = path.relative_to(ROOT).parts[0]
    wrong = set()
    for name in imports(path):
        top = name.split(".")[0]
        if top == own or top not in RANK:
            continue
        if RANK[top] >= RANK[own] or top in FORBIDDEN.get(own, set()):
            wrong.add(name)
    modules = sorted({".".join(name.split(".")[:2]) for name in wrong})
    assert not wrong, f"{module_name(path)} imports {modules} against the layering"
