"""Feast imported for a short-lived CLI command in about a sixth of its usual CPU time.

``import feast`` costs ~8 s of CPU on a small machine, and most of it is not Feast: its
classes are wrapped in typeguard's ``@typechecked``, which re-parses and re-compiles
each decorated class's whole module from source (~5 s), and ``feast.torch_wrapper``
imports PyTorch (~3 s) for tensor outputs no privmesh command asks for. A command that
reads a feature store (``dsr access``, the catalog, ...) calls ``preload_feast()`` first:
Feast is imported with typeguard's decorator as the identity (as under ``python -O``,
which typeguard documents as turning it off) and PyTorch absent, then both are put back,
so nothing imported later is affected and ``import torch`` still works. Feast then runs
without its own run-time argument checks; the objects privmesh builds are typed and
tested (``feature_repo/definitions.py``, mypy). Long-running processes (workers, API)
import Feast normally.
"""

from __future__ import annotations

import sys
from typing import Any

_TORCH = "torch"


def preload_feast() -> None:
    """Import ``feast`` (once per process) without typeguard instrumentation or PyTorch."""
    if "feast" in sys.modules:
        return
    import typeguard

    original = typeguard.typechecked
    block_torch = _TORCH not in sys.modules

    def identity(target: Any = None, **_options: Any) -> Any:
        return (lambda actual: actual) if target is None else target

    typeguard.typechecked = identity
    if block_torch:
        sys.modules[_TORCH] = None  # type: ignore[assignment]  # import fails: Feast skips it
    try:
        import feast
        import feast.feature_store  # noqa: F401  (the store and its providers)
    finally:
        typeguard.typechecked = original
        if block_torch and sys.modules.get(_TORCH, ...) is None:
            del sys.modules[_TORCH]
