"""Where releases read their exact, bounded inputs: window rows and product events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, overload

import polars as pl

from dashboards_api.event_aggregates import EventQuery, plan_from_store, scan_events
from dashboards_api.hierarchy import DAY_SECONDS
from dashboards_api.query_classes import QueryClass
from dashboards_api.sensitivity import NEW_HOUR, NEW_PERIOD
from feature_repo.names import (
    DISTINCT_SUBJECTS,
    EVENTS,
    WINDOW_COMPLETE,
    WINDOW_KEY,
    WINDOW_LATE_EVENTS,
    WINDOW_PARTITIONS,
    sum_feature,
)

HOUR = 3_600


class WindowSource(Protocol):
    """Where bounded window aggregates come from (a domain's Feast store)."""

    def window_stats(
        self, product: str, window_starts: list[int], partitions: int = 1
    ) -> list[dict[str, Any]]:
        """Aggregates of the given windows summed over the ingest partitions.

        Windows not yet reported by every partition have None values.
        """
        ...


class EventSource(Protocol):
    """Where a domain's pseudonymised product events come from (its offline store)."""

    def events(self, product: str) -> pl.LazyFrame:
        """A lazy scan of ``product``'s events (NoDataYet when none are stored)."""
        ...

    def exact(
        self, product: str, query: EventQuery, start: datetime, end: datetime
    ) -> pl.LazyFrame:
        """``query``'s bounded exact answer over ``[start, end)`` (``exact_plan``'s frame)."""
        ...


@dataclass(frozen=True)
class StoreEvents:
    """The event part files of a domain's feature store, scanned with polars."""

    folder_of: Callable[[str], Path]

    def events(self, product: str) -> pl.LazyFrame:
        """See :class:`EventSource`."""
        return scan_events(self.folder_of(product))

    def exact(
        self, product: str, query: EventQuery, start: datetime, end: datetime
    ) -> pl.LazyFrame:
        """From the processor's pre-aggregates when they can answer, else the events."""
        return plan_from_store(self.folder_of(product), query, start, end)


class WindowValues(Sequence[int]):
    """The exact per-window values of a continual class's horizon, read on demand.

    The tree reads only the windows of nodes it has not released yet; a window with
    no row counts 0 (no events, or not reported when its node was first released).
    """

    def __init__(
        self, source: WindowSource, qc: QueryClass, horizon: int, window: int, partitions: int
    ) -> None:
        self.source, self.qc, self.horizon = source, qc, horizon
        self.window, self.partitions = window, partitions
        assert qc.horizon_windows is not None
        self.length = qc.horizon_windows

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, int):
            return self[index : index + 1][0]
        starts = [self.horizon + i * self.window for i in range(*index.indices(self.length))]
        out: list[int] = []
        for i in range(0, len(starts), 2_000):
            rows = self.source.window_stats(self.qc.product, starts[i : i + 2_000], self.partitions)
            out += [
                0 if r.get(DISTINCT_SUBJECTS) is None else exact_value(self.qc, r) for r in rows
            ]
        return out


class DayWindows:
    """The exact bounded values of one stream's windows, read from the store an hour of
    windows at a time (a node is drawn once, so each hour is read about once). A window
    with no complete row counts 0: no events, or not every partition had reported it when
    the first node over it was drawn (that node keeps the undercount; the newest window is
    always one with a complete row). The hour stream's "windows" are whole hours."""

    def __init__(
        self,
        source: WindowSource,
        qc: QueryClass,
        stream: str,
        window: int,
        partitions: int,
        t_end: int,
    ) -> None:
        self.source, self.qc, self.stream = source, qc, stream
        self.window, self.partitions, self.t_end = window, partitions, t_end
        self._values: dict[int, int] = {}

    def __call__(self, start: int) -> int:
        if self.stream == NEW_HOUR:
            return sum(self._window(w) for w in range(start, start + HOUR, self.window))
        return self._window(start)

    def _window(self, start: int) -> int:
        if start not in self._values:
            # From this window to the end of its hour (a node's span never crosses an hour
            # boundary unless it is an hour or the day), never past the newest closed window.
            block_end = min(start - start % HOUR + HOUR, max(self.t_end, start + self.window))
            starts = list(range(start, block_end, self.window))
            rows = self.source.window_stats(self.qc.product, starts, self.partitions)
            for row in rows:
                self._values[int(row[WINDOW_KEY])] = self._exact(row)
        return self._values.get(start, 0)

    def _exact(self, row: dict[str, Any]) -> int:
        if row.get(DISTINCT_SUBJECTS) is None:
            return 0
        if self.stream in (NEW_HOUR, NEW_PERIOD):
            return int(row.get(self.stream) or 0)
        return exact_value(self.qc, row)


def day_of(t_end: int) -> int:
    """Start of the UTC day the window ending at ``t_end`` belongs to."""
    return (t_end - 1) // DAY_SECONDS * DAY_SECONDS


def completeness(row: dict[str, Any], partitions: int) -> dict[str, Any]:
    """Whether a window row is complete: every partition's event-time watermark had passed
    the window's end plus grace when it closed, and no late event arrived since. Otherwise
    the answer is ``partial``, with the share of partitions that were complete (rows of a
    processor that did not report it count as incomplete) and the late events counted."""
    total = int(row.get(WINDOW_PARTITIONS) or partitions)
    complete = min(int(row.get(WINDOW_COMPLETE) or 0), total)
    late = int(row.get(WINDOW_LATE_EVENTS) or 0)
    return {
        "partial": complete < total or late > 0,
        "partitions_complete_share": complete / total,
        "late_events": late,
    }


def exact_value(qc: QueryClass, row: dict[str, Any]) -> int:
    """The bounded, exact window statistic ``qc`` releases (an integer)."""
    if qc.aggregate == "count_distinct_subjects":
        return int(row[DISTINCT_SUBJECTS])
    if qc.aggregate == "count_records":
        return int(row[EVENTS])
    assert qc.measure is not None
    return round(float(row[sum_feature(qc.measure)] or 0.0))
