"""Restart soundness of the per-subject per-day bounds: today's tallies from the offline files.

The per-day tallies of ``streams.windows`` live in the processor's memory. A processor
that restarts (or takes a partition over in a rebalance) would otherwise start every
subject's day afresh, and a subject could contribute up to the day's bounds once more.
Before it opens a partition's windows, the pipeline therefore rebuilds the tallies of the
days still open from the product's offline event files (every accepted event, written by
``streams.feature_push`` every ``offline_flush_seconds``): per subject, its events of the
day (records), their distinct windows and their hours, and the clamped total of each
measure with a per-day cap (``max_sum_per_period``). Those files hold every accepted
event, counted or not (truncated, capped and late ones too), so the restored tallies are
an upper bound of what was counted: a restart truncates more than needed, never less.

What the files cannot hold is the last ``offline_flush_seconds`` of events before a crash
(a graceful stop writes them): docs/contribution-bounds.md says what that does to the bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from domains.contract import DataProduct, FieldType
from streams.windows import DAY_SECONDS, HOUR_SECONDS, DayTally

log = logging.getLogger("privmesh.streams")


def day_tallies(
    folder: Path, product: DataProduct, window_seconds: int, day_starts: Iterable[int]
) -> dict[int, dict[str, DayTally]]:
    """Per UTC day in ``day_starts`` (epoch s), per subject token: the records of the day in
    ``folder``'s part files, their distinct ``window_seconds`` windows and hours (a bitmask)
    and the clamped total of each capped measure, each capped at the contract's per-day
    bound (more is never needed)."""
    days = sorted(set(day_starts))
    files = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not days or not files:
        return {}
    subject, when = product.subject_field, product.event_time
    bounds = product.contribution
    caps = bounds.max_sum_per_period
    measures = {m: pl.Int64 if _integral(product, m) else pl.Float64 for m in caps}
    seconds = pl.col(when).dt.epoch("s")
    window = seconds - seconds % window_seconds
    day = window - window % DAY_SECONDS
    hour = (pl.col("window") - pl.col("day")) // HOUR_SECONDS
    frame = (
        # only the two columns, whatever else a part file holds (contract versions differ)
        pl.scan_parquet(
            [str(f) for f in files],
            schema={subject: pl.String, when: pl.Datetime("us", "UTC"), **measures},
            extra_columns="ignore",
            missing_columns="insert",  # a part file from before the measure existed
        )
        .select(pl.col(subject).alias("subject"), pl.col(when), *measures)
        .filter(
            pl.col("subject").is_not_null(),
            pl.col(when) >= datetime.fromtimestamp(days[0], UTC),
            pl.col(when) < datetime.fromtimestamp(days[-1] + DAY_SECONDS, UTC),
        )
        .with_columns(window=window, day=day)
        .filter(pl.col("day").is_in(days))
        .group_by("day", "subject")
        .agg(
            records=pl.len().clip(upper_bound=bounds.max_records_per_period),
            windows=pl.col("window").n_unique().clip(upper_bound=bounds.max_windows_per_period),
            # the 24-bit mask of the day's hours with a record: sum of 2**hour, each once
            hours=pl.lit(2, pl.Int64).pow(hour.unique().cast(pl.UInt32)).sum(),
            **{_sum_column(m): _clamped_total(product, m) for m in caps},
        )
        .collect()
    )
    out: dict[int, dict[str, DayTally]] = {}
    for (d,), part in frame.partition_by("day", as_dict=True).items():
        columns = [part[c].to_list() for c in ("subject", "records", "windows", "hours")]
        totals = [
            dict(zip(caps, values, strict=True))
            for values in zip(*(part[_sum_column(m)].to_list() for m in caps), strict=True)
        ]
        tallies = zip(*columns, totals or [{}] * part.height, strict=True)
        out[int(d)] = {s: DayTally(r, w, h, t) for s, r, w, h, t in tallies}
    return out


def _integral(product: DataProduct, measure: str) -> bool:
    spec = product.field(measure)
    return spec is not None and spec.type is FieldType.INT


def _sum_column(measure: str) -> str:
    return f"_sum_{measure}"


def _clamped_total(product: DataProduct, measure: str) -> pl.Expr:
    """The day's total of ``measure``, each value clamped as the processor clamps it (NaN
    and missing as 0), capped at the measure's per-day cap: an upper bound of what was
    counted."""
    clamp, cap = product.clamp_of(measure), product.contribution.max_sum_per_period[measure]
    value = pl.col(measure).cast(pl.Float64).fill_nan(None).clip(clamp.min, clamp.max)
    return value.fill_null(0.0).sum().clip(upper_bound=cap)


class OfflineDayTallies:
    """The pipelines' restore source: tallies from the offline event folder of a product."""

    def __init__(self, events_folder: Callable[[DataProduct], Path], window_seconds: int) -> None:
        self._events_folder = events_folder
        self._window_seconds = window_seconds

    def __call__(
        self, product: DataProduct, day_starts: Iterable[int]
    ) -> dict[int, dict[str, DayTally]]:
        """Tallies of ``product``'s subjects on ``day_starts`` (see ``day_tallies``)."""
        return day_tallies(self._events_folder(product), product, self._window_seconds, day_starts)
