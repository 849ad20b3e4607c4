"""The development master key is created once, even by several workers at the same time."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

from streams.keys import development_master_key


def _load(data_dir: str, start: Any, out: mp.Queue) -> None:  # type: ignore[type-arg]
    start.wait()  # every process reaches the key at the same moment
    out.put(development_master_key(Path(data_dir)).hex())


def test_concurrent_first_start_agrees_on_one_key(tmp_path: Path) -> None:
    """Eight processes racing on a fresh data directory all get the same key; no error."""
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    start = ctx.Barrier(8)
    procs = [ctx.Process(target=_load, args=(str(tmp_path), start, out)) for _ in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    assert [proc.exitcode for proc in procs] == [0] * 8
    keys = {out.get(timeout=5) for _ in procs}
    assert len(keys) == 1
    assert (tmp_path / "secrets" / "master.key").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["master.key"]
