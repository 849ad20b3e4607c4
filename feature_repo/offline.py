"""The parquet offline store of a domain: append-only part files, historical reads, erasure.

Feast's own ``offline_write_batch`` for file sources rewrites the whole parquet file on
every push (quadratic in history) and needs the file to exist. privmesh instead writes
one part file per flush into a folder per feature view; Feast's file offline store reads
the folder as one dataset, so ``get_historical_features`` works unchanged (point-in-time
joins for training). Erasure rewrites only the part files that hold the subject.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_sequence = itertools.count()


def part_files(folder: Path) -> list[Path]:
    """The committed part files of one view's folder, oldest first."""
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def append_part(folder: Path, frame: pd.DataFrame) -> Path | None:
    """Write ``frame`` as a new part file (atomically: temp file, then rename)."""
    if frame.empty:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    final = folder / name
    tmp.replace(final)
    return final


def read_all(folder: Path) -> pd.DataFrame:
    """Every row of a view's offline history (empty frame when there is none)."""
    files = part_files(folder)
    if not files:
        return pd.DataFrame()
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def erase_rows(folder: Path, column: str, values: set[str]) -> int:
    """Remove the rows whose ``column`` is in ``values``; returns how many were removed."""
    removed = 0
    wanted = pa.array(sorted(values), type=pa.string())
    for path in part_files(folder):
        table = pq.read_table(path)
        if column not in table.column_names:
            continue
        hit = pc.is_in(table[column], value_set=wanted)
        count = pc.sum(hit).as_py() or 0
        if not count:
            continue
        kept = table.filter(pc.invert(hit))
        if kept.num_rows == 0:
            path.unlink()
        else:
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(kept, tmp)
            tmp.replace(path)
        removed += count
    return removed
