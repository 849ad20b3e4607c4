"""Feast and OpenDP imported for a short-lived CLI command in a fraction of their CPU time.

``import feast`` costs ~8 s of CPU on a small machine, and most of it is not Feast: its
classes are wrapped in typeguard's ``@typechecked``, which re-parses and re-compiles
each decorated class's whole module from source (~5 s), and ``feast.torch_wrapper``
imports PyTorch (~3 s) for tensor outputs no privmesh command asks for. Likewise
``opendp.prelude`` imports scikit-learn (~2 s) for its DP PCA and regression, which
privmesh does not use. A command that reads a feature store or assembles the catalog
calls ``preload_feast()`` / ``preload_opendp()`` first: the library is imported with
typeguard's decorator as the identity (as under ``python -O``, which typeguard documents
as turning it off) and PyTorch and scikit-learn absent (both libraries catch that ImportError
and go without), then everything is put back, so nothing imported later is affected:
``import torch`` or ``import sklearn`` still works afterwards. Feast then runs without
its own run-time argument checks; the objects privmesh builds are typed and tested
(``feature_repo/definitions.py``, mypy). Long-running processes (workers, API) import
both normally. Measured: ``import feast`` 7.9 s -> 1.3 s CPU, ``opendp.prelude`` 2.3 s ->
0.4 s CPU (load average 6-7).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def _without(*modules: str) -> Iterator[None]:
    """``modules`` (not yet imported) unimportable inside the block, importable after."""
    blocked = [m for m in modules if m not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def preload_feast() -> None:
    """Import ``feast`` (once per process) without typeguard instrumentation or PyTorch."""
    if "feast" in sys.modules:
        return
    import typeguard

    original = typeguard.typechecked

    def identity(target: Any = None, **_options: Any) -> Any:
        return (lambda actual: actual) if target is None else target

    typeguard.typechecked = identity
    try:
        with _without("torch"):
            import feast
            import feast.feature_store  # noqa: F401  (the store and its providers)
    finally:
        typeguard.typechecked = original


def preload_opendp() -> None:
    """Import ``opendp.prelude`` (once per process) without scikit-learn."""
    if "opendp.prelude" in sys.modules:
        return
    with _without("sklearn"):
        import opendp.prelude  # noqa: F401
