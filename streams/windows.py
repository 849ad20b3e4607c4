"""Per-subject, per-window and per-day contribution-bounded aggregates (pure, no I/O).

The privacy unit is the pseudonymous subject over the UTC day (the contract's
``contribution`` block, docs/contribution-bounds.md). Of one subject's records of one UTC
day (the day of the record's window start, in event time) at most
``max_records_per_period`` are counted, in at most ``max_windows_per_period`` distinct
windows (a record in a window the subject already appears in uses no new window), and at
most ``max_events_per_subject`` in any one window; every measure is clamped to the
contract's ``clamp_of(measure)``, and a measure with a ``max_sum_per_period`` adds at most
that much per subject and day (a counted record that would pass it adds only the remainder;
the amount cut is counted per window, ``truncated_sums``). A record beyond a per-day bound
is *truncated*: not counted, but counted per window (``truncated_events``); one beyond the
per-window bound is *capped* (``capped_events``). So a subject's whole day moves the day's
released statistics by a bounded amount when it is added or removed: the DP layer only adds
noise.

Each closed window also says how many subjects had their first counted record of the day
(``new_subjects_period``) and of the UTC hour (``new_subjects_hour``) in it: summed over a
day's windows, one subject contributes at most 1 to the first and at most
``min(24, max_windows_per_period)`` to the second, which is what a distinct count over a
day or an hour needs. The per-day tallies (three integers per subject, plus the day's total
of each capped measure) of a day are
dropped once every window of that day has closed: a late event is never counted, so it
cannot need them.

Windows close on **event time**: a partition's watermark is the newest event time it has
seen (robustly: the highest median of any ``WATERMARK_SPAN`` consecutive event times, so one
event dated minutes ahead, which the contract's event-time window still admits, cannot
close windows whose events are still queued), and a window closes once the watermark has
passed its end plus the grace period (and the wall clock has too). A processor that falls
behind (a loaded machine, a backlog) therefore closes windows late, never early: its
windows are complete when they close.
A partition whose consumer has read to the log end (``caught_up``) has nothing queued: its
watermark advances to the wall clock, so an idle partition's windows close complete. One
that receives nothing for ``idle_seconds`` of wall-clock time without being caught up (a
stalled consumer) closes its windows by the wall clock, marked ``complete=False``. An
event that arrives after its window closed is late: counted per window, and the window is
re-reported (an amendment) with its late count and ``complete=False``, so the DP layer
marks it partial.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from domains.contract import (
    RECORDS_PER_PERIOD_LIMIT,
    WINDOWS_PER_PERIOD_LIMIT,
    Bounds,
    ContributionBounds,
)

MAX_EMPTY_WINDOWS = 1_000  # empty windows released after a gap in the stream, at most
MAX_KEPT_CLOSED = 1_000  # closed windows remembered for late-event amendments
WATERMARK_SPAN = 3  # consecutive event times whose median may advance the watermark
DAY_SECONDS = 86_400
HOUR_SECONDS = 3_600
# With no contract bounds given (tests of the window mechanics): the loosest a contract allows.
UNBOUNDED_PERIOD = ContributionBounds(
    max_records_per_period=RECORDS_PER_PERIOD_LIMIT, max_windows_per_period=WINDOWS_PER_PERIOD_LIMIT
)


@dataclass(slots=True)
class SubjectTally:
    """One subject's bounded contribution to one window.

    ``first_of_day`` / ``first_of_hour``: the subject's first counted record of the UTC
    day / hour is in this window (what ``new_subjects_period`` / ``_hour`` count).
    """

    events: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    first_of_day: bool = False
    first_of_hour: bool = False


@dataclass(slots=True)
class DayTally:
    """One subject's counted contribution to one UTC day: records, distinct windows, the
    hours of the day (bit ``h`` set: a record of hour ``h`` was counted), and the counted
    total of each measure with a per-day cap (``max_sum_per_period``)."""

    records: int = 0
    windows: int = 0
    hours: int = 0
    sums: dict[str, float] = field(default_factory=dict)


# Day start -> subject -> what a restarted processor knows of the subject's day so far (an
# upper bound of what was counted before the restart); read only, shared by partitions.
DaySeed = Mapping[int, Mapping[str, DayTally]]


@dataclass(frozen=True, slots=True)
class SubjectRow:
    """A per-subject feature row for the feature store.

    ``partition`` is the ingest partition the subject's events arrive on (-1: unknown).
    """

    subject: str
    window_start: int
    events: int
    sums: dict[str, float]
    partition: int = -1


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Bounded aggregates of one closed window, input of the DP layer."""

    window_start: int
    window_end: int
    distinct_subjects: int
    events: int
    sums: dict[str, float]
    # True: closed because the partition's event-time watermark passed end + grace.
    complete: bool = True
    # The partition's event-time watermark when the window closed (None: no event yet).
    watermark: float | None = None
    # Events of this window that arrived after it closed (not in the counts above).
    late_events: int = 0
    # Wall-clock time of an amendment (late events after the close); None: first report.
    amended_at: float | None = None
    # Subjects whose first counted record of the UTC day / hour is in this window.
    new_subjects_period: int = 0
    new_subjects_hour: int = 0
    # Records of this window not counted because a per-subject per-day bound was hit.
    truncated_events: int = 0
    # Per capped measure: the amount of this window's counted records cut by the cap.
    truncated_sums: dict[str, float] = field(default_factory=dict)
    # The per-subject per-day bounds applied when counting this window.
    max_records_per_period: int = 0
    max_windows_per_period: int = 0


class WindowAggregator:
    """Tumbling event-time windows of ``window_seconds`` with a close ``grace_seconds``.

    ``bounds``: the per-record clamp of each measure (the contract's ``clamp_of``);
    ``contribution``: the per-subject per-day bounds (None: the loosest a contract allows);
    ``seed``: what a restarted processor knows of a subject's day so far (None: nothing).
    """

    def __init__(
        self,
        window_seconds: int,
        grace_seconds: int,
        max_events_per_subject: int,
        bounds: dict[str, Bounds],
        idle_seconds: float | None = None,
        *,
        contribution: ContributionBounds | None = None,
        seed: DaySeed | None = None,
    ) -> None:
        if window_seconds < 1 or grace_seconds < 0 or max_events_per_subject < 1:
            raise ValueError("window >= 1 s, grace >= 0 s and max events >= 1 are required")
        self.contribution = UNBOUNDED_PERIOD if contribution is None else contribution
        self._max_records = self.contribution.max_records_per_period
        self._max_windows = self.contribution.max_windows_per_period
        self._seeds = dict(seed or {})  # this aggregator's view: days are dropped from it
        # day start -> subject -> what the subject has counted that day (open days only)
        self._days: dict[int, dict[str, DayTally]] = {}
        self._truncated_by_window: dict[int, int] = {}
        self.truncated_events = 0
        self._caps = dict(self.contribution.max_sum_per_period)
        self._cut_by_window: dict[int, dict[str, float]] = {}
        self.truncated_sums: dict[str, float] = dict.fromkeys(self._caps, 0.0)
        if idle_seconds is not None and idle_seconds <= 0:
            raise ValueError("idle_seconds must be > 0 (or None: one window plus the grace)")
        # Wall-clock seconds without any event after which windows close by the wall clock
        # (marked incomplete): an idle partition still reports its windows.
        self.idle_seconds = (
            float(window_seconds + grace_seconds) if idle_seconds is None else idle_seconds
        )
        self.watermark: float | None = None  # newest (robust) event time seen on this partition
        self._recent: deque[float] = deque(maxlen=WATERMARK_SPAN)
        self._arrived = False  # an event arrived since the last close_ready
        self._last_arrival: float | None = None  # wall clock of the close_ready that saw it
        self._closed: dict[int, WindowStats] = {}  # recent closed windows, for amendments
        self._late_by_window: dict[int, int] = {}
        self._amend: set[int] = set()
        self.incomplete_windows = 0
        self.window_seconds = window_seconds
        self.grace_seconds = grace_seconds
        self.max_events = max_events_per_subject
        self.bounds = dict(bounds)
        self._windows: dict[int, dict[str, SubjectTally]] = {}
        self._dirty: set[tuple[int, str]] = set()
        self._next_close: int | None = None  # start of the oldest window still open
        self.late_events = 0
        self.capped_events = 0

    def window_of(self, event_time: float) -> int:
        """Start (epoch seconds) of the window containing ``event_time``."""
        start = int(event_time)
        return start - start % self.window_seconds

    def open_at(self, now: float) -> None:
        """Start releasing windows from the one containing ``now``, events or not.

        A worker calls this when it is assigned a partition, so an idle partition still
        reports (empty) windows and the DP layer can tell "nothing happened" from "no data".
        """
        if self._next_close is None:
            self._next_close = self.window_of(now)

    def caught_up(self, now: float) -> None:
        """The consumer has read everything the partition held at ``now`` (its position is
        the log end): nothing is queued, so the watermark advances to ``now`` and an idle
        partition's windows close complete (events still on their way from a producer are
        what the grace period is for)."""
        if self.watermark is None or now > self.watermark:
            self.watermark = now

    @property
    def open_windows(self) -> int:
        """Windows holding at least one tally (lost if the partition moves mid-window)."""
        return sum(1 for tallies in self._windows.values() if tallies)

    def add(self, subject: str, event_time: float, measures: dict[str, float]) -> bool:
        """Count one event; False when it is late (its window is closed), over the
        per-window cap or beyond a per-day bound (truncated).

        Raises ``ValueError`` (before any state changes) for an event time that is not a
        finite number or a measure that is NaN: an infinite or huge measure is clamped.
        """
        if not math.isfinite(event_time):
            raise ValueError("event time must be a finite number of epoch seconds")
        for value in measures.values():
            if math.isnan(value):
                raise ValueError("a measure is NaN; it cannot be clamped")
        start = self.window_of(event_time)
        self._arrived = True
        self._recent.append(event_time)
        progress = sorted(self._recent)[(len(self._recent) - 1) // 2]
        if self.watermark is None or progress > self.watermark:
            self.watermark = progress
        if self._next_close is not None and start < self._next_close:
            self.late_events += 1
            if start in self._closed:
                self._late_by_window[start] = self._late_by_window.get(start, 0) + 1
                self._amend.add(start)
            return False
        if self._next_close is None:
            self._next_close = start
        window = self._windows.setdefault(start, {})
        tally = window.get(subject)
        if tally is not None and tally.events >= self.max_events:
            self.capped_events += 1
            return False
        day_start = start - start % DAY_SECONDS
        tallies = self._days.get(day_start)
        day = tallies.get(subject) if tallies is not None else None
        if day is None:
            day = self._new_day_tally(day_start, subject)
        if day.records >= self._max_records or (tally is None and day.windows >= self._max_windows):
            self.truncated_events += 1
            self._truncated_by_window[start] = self._truncated_by_window.get(start, 0) + 1
            return False
        if tally is None:
            tally = window[subject] = SubjectTally()
            day.windows += 1
        hour = 1 << ((start - day_start) // HOUR_SECONDS)
        tally.first_of_day |= day.records == 0
        tally.first_of_hour |= not (day.hours & hour)
        day.records += 1
        day.hours |= hour
        tally.events += 1
        self._count_measures(start, day, tally, measures)
        self._dirty.add((start, subject))
        return True

    def _count_measures(
        self, start: int, day: DayTally, tally: SubjectTally, measures: dict[str, float]
    ) -> None:
        """Add a counted record's measures: each clamped, a capped one within the cap."""
        for name, value in measures.items():
            bound = self.bounds.get(name)
            clamped = min(max(value, bound.min), bound.max) if bound else value
            if name in self._caps:
                clamped = self._capped(start, day, name, clamped)
            tally.sums[name] = tally.sums.get(name, 0.0) + clamped

    def _capped(self, start: int, day: DayTally, name: str, value: float) -> float:
        """What ``value`` adds to the day's total of capped measure ``name``: at most the
        room left under the cap; the rest is counted as cut (per window and in total)."""
        counted = day.sums.get(name, 0.0)
        kept = min(value, max(self._caps[name] - counted, 0.0))
        day.sums[name] = counted + kept
        if kept < value:
            cut = self._cut_by_window.setdefault(start, {})
            cut[name] = cut.get(name, 0.0) + (value - kept)
            self.truncated_sums[name] += value - kept
        return kept

    def _new_day_tally(self, day_start: int, subject: str) -> DayTally:
        """A new tally of the subject's day: from the restart seed when it has one."""
        seeded = self._seeds.get(day_start, {}).get(subject)
        # a copy: seeds are shared
        day = DayTally() if seeded is None else replace(seeded, sums=dict(seeded.sums))
        self._days.setdefault(day_start, {})[subject] = day
        return day

    @property
    def tallied_days(self) -> dict[int, int]:
        """Day start -> subjects with a per-day tally (days with a window still open)."""
        return {day: len(tallies) for day, tallies in self._days.items()}

    def forget(self, subjects: set[str]) -> int:
        """Drop every open-window tally of ``subjects`` (erasure); returns how many."""
        dropped = 0
        for tallies in self._windows.values():
            for subject in subjects & tallies.keys():
                del tallies[subject]
                dropped += 1
        self._dirty = {(w, s) for w, s in self._dirty if s not in subjects}
        return dropped

    def drain_subject_rows(self) -> list[SubjectRow]:
        """Rows of subjects whose tallies changed since the last drain."""
        rows = [
            SubjectRow(subject, start, tally.events, dict(tally.sums))
            for start, subject in self._dirty
            if (tally := self._windows.get(start, {}).get(subject)) is not None
        ]
        self._dirty.clear()
        return rows

    def close_ready(self, now: float) -> list[WindowStats]:
        """Close every window whose end plus ``grace_seconds`` the partition's event-time
        watermark has passed (and the wall clock ``now`` too); after ``idle_seconds`` without
        events, close by the wall clock, marked incomplete. Also returns amendments of
        closed windows that received late events since the last call.

        Windows are closed in order and without gaps from the first event on, so a
        window in which nothing happened is released as zero rather than skipped.
        """
        if self._arrived or self._last_arrival is None:
            self._last_arrival, self._arrived = now, False
        amended = self._amendments(now)
        by_wall = self.window_of(now - self.grace_seconds)
        by_events = (
            None if self.watermark is None else self.window_of(self.watermark - self.grace_seconds)
        )
        horizon = by_wall if by_events is None else min(by_events, by_wall)
        if now - self._last_arrival >= self.idle_seconds:
            horizon = by_wall
        if self._next_close is None or self._next_close >= horizon:
            return amended
        closed: list[WindowStats] = []
        recent = max(self._next_close, horizon - MAX_EMPTY_WINDOWS * self.window_seconds)
        starts = {s for s in self._windows if s < horizon}
        starts.update(range(recent, horizon, self.window_seconds))
        for start in sorted(starts):
            tallies = self._windows.pop(start, {})
            sums: dict[str, float] = dict.fromkeys(self.bounds, 0.0)
            for tally in tallies.values():
                for name, value in tally.sums.items():
                    sums[name] = sums.get(name, 0.0) + value
            complete = by_events is not None and start < by_events
            self.incomplete_windows += not complete
            stats = WindowStats(
                window_start=start,
                window_end=start + self.window_seconds,
                distinct_subjects=len(tallies),
                events=sum(t.events for t in tallies.values()),
                sums=sums,
                complete=complete,
                watermark=self.watermark,
                new_subjects_period=sum(t.first_of_day for t in tallies.values()),
                new_subjects_hour=sum(t.first_of_hour for t in tallies.values()),
                truncated_events=self._truncated_by_window.pop(start, 0),
                truncated_sums=self._cut_by_window.pop(start, {}),
                max_records_per_period=self.contribution.max_records_per_period,
                max_windows_per_period=self.contribution.max_windows_per_period,
            )
            closed.append(stats)
            self._closed[start] = stats
        self._next_close = horizon
        # A day whose every window has closed needs its tallies no more (late events are
        # not counted); a window straddling midnight belongs to the day of its start.
        for day_start in [d for d in self._days if d + DAY_SECONDS <= horizon]:
            del self._days[day_start]
        for day_start in [d for d in self._seeds if d + DAY_SECONDS <= horizon]:
            del self._seeds[day_start]
        for start in sorted(self._closed)[:-MAX_KEPT_CLOSED]:
            del self._closed[start]
            self._late_by_window.pop(start, None)
        return closed + amended

    def _amendments(self, now: float) -> list[WindowStats]:
        """Closed windows with new late events: re-reported incomplete with their count."""
        out = []
        for start in sorted(self._amend):
            if start in self._closed:
                stats = replace(
                    self._closed[start],
                    complete=False,
                    late_events=self._late_by_window.get(start, 0),
                    amended_at=now,
                )
                self._closed[start] = stats
                out.append(stats)
        self._amend.clear()
        return out
