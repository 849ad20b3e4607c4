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
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_sequence = itertools.count()


def part_files(folder: Path) -> list[Path]:
    """The committed part files of one view's folder, oldest first."""
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def append_part(folder: Path, frame: pd.DataFrame | pa.Table) -> Path | None:
    """Write ``frame`` as a new part file (atomically: temp file, then rename).

    An Arrow table is written as is (its schema fixes the column types, so part files
    written from different batches read back as one dataset); an empty frame writes nothing.
    """
    if isinstance(frame, pa.Table):
        table = frame
    else:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    if table.num_rows == 0:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(table, tmp)
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
    """Remove the rows whose ``column`` is in ``values``; returns how many were removed.

    Only ``column`` is read from each part file to look for the values; a file is read
    whole and rewritten only when it holds one of them.
    """
    removed = 0
    wanted = pa.array(sorted(values), type=pa.string())
    for path in part_files(folder):
        if column not in pq.read_schema(path).names:
            continue
        found = pq.read_table(path, columns=[column])[column]
        count = pc.sum(pc.is_in(found, value_set=wanted)).as_py() or 0
        if not count:
            continue
        table = pq.read_table(path)
        _keep_only(path, table.filter(pc.invert(pc.is_in(table[column], value_set=wanted))))
        removed += count
    return removed


def _keep_only(path: Path, kept: pa.Table) -> None:
    """Replace part file ``path`` by ``kept`` (atomically), or delete it when empty."""
    if kept.num_rows == 0:
        path.unlink()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(kept, tmp)
    tmp.replace(path)


def purge_before(folder: Path, column: str, cutoff: datetime) -> int:
    """Remove the rows whose time ``column`` is before ``cutoff``; returns how many.

    Only ``column`` is read from each part file; a file is rewritten only when it holds
    an expired row, and deleted when every row expired.
    """
    removed = 0
    for path in part_files(folder):
        if column not in pq.read_schema(path).names:
            continue
        times = pq.read_table(path, columns=[column])[column]
        limit = pa.scalar(cutoff, type=times.type)
        expired = pc.fill_null(pc.less(times, limit), False)
        count = pc.sum(expired).as_py() or 0
        if not count:
            continue
        table = pq.read_table(path)
        _keep_only(
            path, table.filter(pc.invert(pc.fill_null(pc.less(table[column], limit), False)))
        )
        removed += count
    return removed


def latest_per_key(folder: Path, key: str, column: str) -> dict[str, datetime]:
    """The latest ``column`` time of each ``key`` value over the folder's part files."""
    latest: dict[str, datetime] = {}
    for path in part_files(folder):
        names = pq.read_schema(path).names
        if key not in names or column not in names:
            continue
        table = pq.read_table(path, columns=[key, column])
        grouped = table.group_by(key).aggregate([(column, "max")])
        for k, t in zip(
            grouped[key].to_pylist(), grouped[f"{column}_max"].to_pylist(), strict=True
        ):
            if t is not None and (k not in latest or t > latest[k]):
                latest[k] = t
    return latest
