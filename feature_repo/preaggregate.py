"""Per-(subject, minute, public key) pre-aggregates of a product's offline events.

Why: a user-level DP group-by bounds each subject's records, so over raw events it groups
a million rows by a 29-character token, several times slower than a plain group-by by the
public key (docs/dp-api.md, "Benchmark"). Next to every offline event part the processor
writes a *pre-aggregate part* (``streams.feature_push``), and once a UTC day is over it
merges the day's pre-aggregate parts into one *day file*; the DP API
(``dashboards_api.event_aggregates``) answers counts, histograms, sums and means from them
and keeps the events for quantiles and for data written before this existed.

One row per (subject id, minute of event time, value of every group-by-able field):

* ``subject_id``: a 64-bit hash (BLAKE2b) of the subject's pseudonymous token. The token
  is already a keyed HMAC of the identifier, so the hash is a keyed 64-bit pseudonym of
  the identifier and reveals nothing the token does not; it makes the per-subject
  group-by one on integers. Two subjects of one window share an id with probability
  below ``n**2 / 2**65`` (3e-8 for a million subjects): they are then bounded as one
  subject (together at most k records, never more than two separate subjects), and a
  release is ``2 * epsilon``-DP for those two (dashboards_api.event_aggregates).
* ``minute``: epoch seconds of the UTC minute (``BASE_SECONDS``): every event-class window
  (1m, 1h, 1d; ``dashboards_api.query_classes.EVENT_WINDOWS``) is a union of minutes. The
  processor's own 10-second window would only add rows: no class reads 10-second events.
* one column per field with ``allowed_values`` (its value, or null when not public);
* ``records`` (records in the cell) and, per bounded numeric field, ``<m>__n`` (records
  with a value) and ``<m>__sum`` (the sum of the values clamped to the contract's integer
  bounds, floats rounded half to even: ``bounded``, exactly what the event path computes).

The DP API's truncation rule needs only these per-(subject, key) totals over a window
(``dashboards_api.event_aggregates``), so parts merge by summing: a day file is the sum
of the day's parts, and results equal the event path's exactly.

Pre-aggregates hold pseudonymous per-subject data like the events they come from:
erasure (``erase``) and retention (``purge_before``) apply to them as to the events.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from domains.contract import DataProduct, Protection

BASE_SECONDS = 60
DAY_SECONDS = 86_400
SUBJECT_ID = "subject_id"
MINUTE = "minute"
RECORDS = "records"
FIRST = "first_of_subject"
METADATA_KEY = b"privmesh.preaggregate"
LAYOUT_FILE = "layout.json"
FORMAT_VERSION = 1
NULL_SUBJECT_ID = 0  # a record without a subject token (one subject, as in a group-by)


def integer_clamp(product: DataProduct, measure: str) -> tuple[int, int]:
    """Integer bounds enclosing ``measure``'s per-record clamp (``DataProduct.clamp_of``;
    equal for integral bounds): what the pre-aggregates and the event path clamp to."""
    clamp = product.clamp_of(measure)
    return math.floor(clamp.min), math.ceil(clamp.max)


def count_column(measure: str) -> str:
    """Records of a cell with a value of ``measure``."""
    return f"{measure}__n"


def sum_column(measure: str) -> str:
    """Sum of a cell's clamped ``measure`` values."""
    return f"{measure}__sum"


def total_column(column: str, key: str | None) -> str:
    """Day files: the subject's total of ``column`` over the day (over its rows with a
    public value of ``key``, when given), on each of its rows."""
    return f"total__{column}" if key is None else f"total__{column}__{key}"


def preaggregate_folder(events_folder: Path) -> Path:
    """Where the pre-aggregates of the events in ``events_folder`` are kept (a sibling)."""
    name = events_folder.name
    base = name[: -len("_events")] if name.endswith("_events") else name
    return events_folder.with_name(f"{base}_preaggregate")


def day_file(folder: Path, day_start: int) -> Path:
    """The merged pre-aggregate of the UTC day starting at ``day_start``."""
    return folder / f"day-{day_start:012d}.parquet"


# ---------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """What a pre-aggregate of one product holds: its group-by-able fields with their
    public values, and its bounded measures with the integer bounds they are clamped to.

    Written into every file; a query uses a file only when its key's categories are
    public values of it and its measure's bounds are the query's.
    """

    subject: str
    time: str
    keys: tuple[tuple[str, tuple[str, ...]], ...]
    measures: tuple[tuple[str, tuple[int, int], bool], ...]  # (name, (lo, hi), is float)

    @classmethod
    def of(cls, product: DataProduct) -> Layout:
        """The layout of ``product``'s events: fields kept in clear with ``allowed_values``
        are keys; bounded numeric fields kept in clear are measures, clamped to the contract's
        per-record clamp (``DataProduct.clamp_of``, widened to integers, as
        ``EventQuery.for_product`` does)."""
        keys = tuple(
            (f.name, tuple(f.allowed_values))
            for f in product.fields
            if f.allowed_values is not None and f.protection is Protection.KEEP
        )
        measures = tuple(
            (
                f.name,
                integer_clamp(product, f.name),
                f.type.value == "float",
            )
            for f in product.fields
            if f.numeric and f.bounds is not None and f.protection is Protection.KEEP
        )
        return cls(product.subject_field, product.event_time, keys, measures)

    def to_json(self) -> str:
        return json.dumps(
            {
                "subject": self.subject,
                "time": self.time,
                "keys": [[k, list(v)] for k, v in self.keys],
                "measures": [[m, list(b), f] for m, b, f in self.measures],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Layout:
        raw = json.loads(text)
        return cls(
            raw["subject"],
            raw["time"],
            tuple((k, tuple(v)) for k, v in raw["keys"]),
            tuple((m, (int(b[0]), int(b[1])), bool(f)) for m, b, f in raw["measures"]),
        )

    @property
    def fingerprint(self) -> str:
        """A short digest of the layout (its folder's name)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def allowed(self, key: str) -> tuple[str, ...] | None:
        return dict(self.keys).get(key)

    def bounds(self, measure: str) -> tuple[int, int] | None:
        return next((b for m, b, _ in self.measures if m == measure), None)

    @property
    def summed(self) -> list[str]:
        """The additive columns: records, and each measure's count and sum."""
        out = [RECORDS]
        for m, _, _ in self.measures:
            out += [count_column(m), sum_column(m)]
        return out

    @property
    def day_schema(self) -> dict[str, pl.DataType]:
        """A day file's columns: the parts' ones, ``FIRST`` (the subject's first row)
        and the subject's day totals (``total_column``)."""
        columns = self.schema | {FIRST: pl.Boolean()}
        for key in [None, *(k for k, _ in self.keys)]:
            columns |= {total_column(c, key): pl.Int64() for c in self.summed}
        return columns

    @property
    def schema(self) -> dict[str, pl.DataType]:
        columns: dict[str, pl.DataType] = {SUBJECT_ID: pl.UInt64(), MINUTE: pl.Int64()}
        columns |= {k: pl.String() for k, _ in self.keys}
        columns[RECORDS] = pl.Int64()
        for m, _, _ in self.measures:
            columns[count_column(m)] = pl.Int64()
            columns[sum_column(m)] = pl.Int64()
        return columns


# ---------------------------------------------------------------------------- values
def bounded(column: str, dtype: pl.DataType, lo: int, hi: int) -> pl.Expr:
    """``column`` clamped to ``[lo, hi]`` as Int64; floats rounded half to even after
    clamping; NaN is no value (null), like a missing one. The event path and the
    pre-aggregates both use this, so their clamped values are the same."""
    value = pl.col(column)
    if dtype.is_float():
        value = pl.when(value.is_nan()).then(None).otherwise(value).clip(lo, hi).round(0)
    elif not dtype.is_integer():
        raise ValueError(f"measure {column!r} is {dtype}, not a number")
    else:
        value = value.clip(lo, hi)
    return value.cast(pl.Int64).alias(column)


def subject_ids(tokens: pl.Series) -> pl.Series:
    """The 64-bit subject id of each token (module docstring); null gives
    ``NULL_SUBJECT_ID``. Hashed once per distinct token."""
    distinct = tokens.drop_nulls().unique()
    ids = {
        t: int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big")
        for t in distinct.to_list()
    }
    mapping = pl.DataFrame(
        {"token": list(ids), "id": list(ids.values())},
        schema={"token": pl.String, "id": pl.UInt64},
    )
    frame = pl.DataFrame({"token": tokens.cast(pl.String)})
    joined = frame.join(mapping, on="token", how="left", maintain_order="left")
    return joined["id"].fill_null(NULL_SUBJECT_ID).alias(SUBJECT_ID)


def preaggregate(events: pa.Table | pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """The pre-aggregate rows of ``events`` (a table of the product's event schema).

    Records without an event time are left out (no window holds them), as is a key
    value that is not public (null), as on the event path.
    """
    frame = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.filter(pl.col(layout.time).is_not_null())
    seconds = pl.col(layout.time).dt.epoch("s")
    columns = [
        subject_ids(frame[layout.subject]),
        frame.select((seconds - seconds % BASE_SECONDS).alias(MINUTE)).to_series(),
    ]
    keyed = frame.with_columns(columns).with_columns(
        pl.when(pl.col(k).is_in(list(values))).then(pl.col(k).cast(pl.String)).alias(k)
        for k, values in layout.keys
    )
    aggs: list[pl.Expr] = [pl.len().cast(pl.Int64).alias(RECORDS)]
    for m, (lo, hi), _ in layout.measures:
        value = bounded(m, frame.schema[m], lo, hi)
        aggs.append(value.count().cast(pl.Int64).alias(count_column(m)))
        aggs.append(value.sum().cast(pl.Int64).alias(sum_column(m)))
    groups = [SUBJECT_ID, MINUTE, *(k for k, _ in layout.keys)]
    return keyed.group_by(groups).agg(aggs).select(list(layout.schema)).sort(groups)


# ---------------------------------------------------------------------------- files
def layout_folder(folder: Path, layout: Layout) -> Path:
    """The sub-folder of one layout: a contract change starts a new one, so the files
    of one folder always share their columns."""
    return folder / f"layout-{layout.fingerprint}"


def write(path: Path, rows: pl.DataFrame, layout: Layout, **facts: object) -> Path:
    """Write ``rows`` to ``path`` atomically, with ``facts`` (the events part it mirrors,
    the parts a day file merges) in the file's metadata; the folder's ``layout.json``
    is written with its first file."""
    table = rows.to_arrow()
    meta = {"version": FORMAT_VERSION, "base_seconds": BASE_SECONDS, **facts}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    described = path.parent / LAYOUT_FILE
    if not described.exists():
        _atomic_text(described, layout.to_json())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_part(folder: Path, events_part: Path, events: pa.Table, layout: Layout) -> Path:
    """The pre-aggregate part of the offline events part ``events_part`` (same name)."""
    rows = preaggregate(events, layout)
    target = layout_folder(folder, layout) / events_part.name
    return write(target, rows, layout, events_part=events_part.name)


def metadata(path: Path) -> dict[str, object]:
    """The facts a file was written with (``write``)."""
    meta = pq.read_schema(path).metadata or {}
    return dict(json.loads(meta[METADATA_KEY]))


def layouts(folder: Path) -> dict[Path, Layout]:
    """Each layout sub-folder of ``folder`` with its layout."""
    if not folder.is_dir():
        return {}
    found = {}
    for described in sorted(folder.glob(f"layout-*/{LAYOUT_FILE}")):
        found[described.parent] = Layout.from_json(described.read_text(encoding="utf-8"))
    return found


def parts(folder: Path) -> list[Path]:
    """The pre-aggregate parts of one layout folder (one per offline events part)."""
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def merge_day(folder: Path, layout: Layout, day_start: int) -> Path | None:
    """Merge the rows of the UTC day starting at ``day_start`` of the parts of one
    layout folder into its day file (rows per subject and key, ``minute`` the day
    start), listing the parts merged. None when no part holds the day."""
    found = parts(folder)
    if not found:
        return None
    day_end = day_start + DAY_SECONDS
    keys = [k for k, _ in layout.keys]
    columns = list(layout.schema)
    totals = [pl.col(SUBJECT_ID).is_first_distinct().alias(FIRST)]
    for key in [None, *keys]:
        public = pl.lit(True) if key is None else pl.col(key).is_not_null()
        totals += [
            pl.when(public)
            .then(pl.col(c))
            .otherwise(0)
            .sum()
            .over(SUBJECT_ID)
            .alias(total_column(c, key))
            for c in layout.summed
        ]
    rows = (
        pl.scan_parquet(found, schema=layout.schema)
        .filter(pl.col(MINUTE) >= day_start, pl.col(MINUTE) < day_end)
        .group_by(SUBJECT_ID, *keys)
        .agg(pl.col(c).sum() for c in layout.summed)
        .with_columns(pl.lit(day_start, pl.Int64).alias(MINUTE))
        .select(columns)
        .sort(SUBJECT_ID, *keys, nulls_last=True)
        .with_columns(totals)
        .select(list(layout.day_schema))
        .collect()
    )
    if rows.height == 0:
        return None
    merged = [p.name for p in found]
    return write(day_file(folder, day_start), rows, layout, span_seconds=DAY_SECONDS, parts=merged)


def merge_closed_days(folder: Path, now: float, settle_seconds: float) -> list[Path]:
    """Day files for the days ended over ``settle_seconds`` before ``now`` that have
    none yet (every layout folder of ``folder``)."""
    written = []
    for sub, layout in layouts(folder).items():
        found = parts(sub)
        if not found:
            continue
        days = (
            pl.scan_parquet(found, schema=layout.schema)
            .select((pl.col(MINUTE) - pl.col(MINUTE) % DAY_SECONDS).unique())
            .collect()
            .to_series()
            .to_list()
        )
        for day in sorted(days):
            if day + DAY_SECONDS + settle_seconds <= now and not day_file(sub, day).exists():
                path = merge_day(sub, layout, day)
                if path is not None:
                    written.append(path)
    return written


# ---------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Window:
    """The pre-aggregate rows of one window in one layout folder (lazy): ``day`` the
    day file's (a whole-day window; columns ``Layout.day_schema``), ``parts`` those of
    the parts it does not merge (``Layout.schema``); ``rows`` all, in the parts' columns."""

    layout: Layout
    day: pl.LazyFrame | None
    parts: pl.LazyFrame | None

    @property
    def rows(self) -> pl.LazyFrame:
        columns = list(self.layout.schema)
        frames = [f.select(columns) for f in (self.day, self.parts) if f is not None]
        return pl.concat(frames) if len(frames) > 1 else frames[0]


def scan_window(events_folder: Path, start: int, end: int) -> list[Window] | None:
    """The pre-aggregate rows of the events in ``[start, end)`` (epoch s), one entry per
    layout folder holding some, or None when they cannot answer it exactly: the window
    is not whole minutes, no pre-aggregate exists, or an events part that may hold an
    event of the window has none (written before pre-aggregates, or its write failed).

    A whole UTC day with a day file reads it plus the parts it did not merge. A part
    counts only once its events part is visible (the processor writes the
    pre-aggregate first), so both paths read the same events.
    """
    folder = preaggregate_folder(events_folder)
    if start % BASE_SECONDS or end % BASE_SECONDS or end <= start:
        return None
    found = layouts(folder)
    if not found:
        return None
    events = {p.name for p in events_folder.glob("part-*.parquet")}
    twinned: set[str] = set()
    out = []
    for sub, layout in found.items():
        twins = {p.name: p for p in parts(sub) if p.name in events}
        twinned |= set(twins)
        merged: set[str] = set()
        whole_day: pl.LazyFrame | None = None
        day = day_file(sub, start)
        if end - start == DAY_SECONDS and start % DAY_SECONDS == 0 and day.exists():
            listed = metadata(day).get("parts", [])
            assert isinstance(listed, list)
            merged = {str(name) for name in listed}
            whole_day = pl.scan_parquet(day, schema=layout.day_schema)
        files = [path for name, path in sorted(twins.items()) if name not in merged]
        rest = None
        if files:
            rest = pl.scan_parquet(files, schema=layout.schema).filter(
                pl.col(MINUTE) >= start, pl.col(MINUTE) < end
            )
        if whole_day is not None or rest is not None:
            out.append(Window(layout, whole_day, rest))
    time_column = next(iter(found.values())).time
    for name in sorted(events - twinned):
        if _may_hold(events_folder / name, time_column, start, end):
            return None
    return out or None


def _may_hold(events_part: Path, time_column: str, start: int, end: int) -> bool:
    """Whether ``events_part`` may hold an event in ``[start, end)`` (from its time
    column's statistics; True when it has none)."""
    try:
        meta = pq.read_metadata(events_part)
        index = meta.schema.to_arrow_schema().get_field_index(time_column)
        if index < 0:
            return True
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(index).statistics
            if stats is None or not stats.has_min_max:
                return True
            if stats.min.timestamp() < end and stats.max.timestamp() >= start:
                return True
    except (OSError, pa.ArrowInvalid, AttributeError):
        return True
    return False


# ---------------------------------------------------------------------------- privacy
def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("layout-*/*.parquet")) if folder.is_dir() else []


def erase(folder: Path, tokens: Iterable[str]) -> int:
    """Remove the rows of the subjects ``tokens`` from every pre-aggregate file under
    ``folder``; returns how many rows went."""
    wanted = subject_ids(pl.Series(sorted(set(tokens)), dtype=pl.String)).to_list()
    return _rewrite(folder, pl.col(SUBJECT_ID).is_in(wanted))


def purge_before(folder: Path, cutoff: float) -> int:
    """Remove the rows of minutes starting before ``cutoff`` (epoch s: the minute that
    holds the cutoff goes whole) and the day files of days starting before it."""
    removed = 0
    for path in _files(folder):
        if path.name.startswith("day-") and int(path.stem.split("-")[1]) < cutoff:
            removed += pq.read_metadata(path).num_rows
            path.unlink()
    return removed + _rewrite(folder, pl.col(MINUTE) < cutoff)


def _rewrite(folder: Path, doomed: pl.Expr) -> int:
    """Rewrite each file without the rows ``doomed`` selects (delete it when empty)."""
    removed = 0
    for path in _files(folder):
        table = pq.read_table(path)
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        gone = int(frame.select(doomed.sum()).item() or 0)
        if not gone:
            continue
        removed += gone
        kept = frame.filter(~doomed)
        if kept.height == 0:
            path.unlink()
            continue
        out = kept.to_arrow().replace_schema_metadata(table.schema.metadata)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(out, tmp)
        tmp.replace(path)
    return removed
