"""Per-subject, per-window contribution-bounded aggregates (pure, no I/O).

Each subject contributes at most ``max_events_per_subject`` events to a window, each
measure clamped to the contract bounds, so a released window statistic moves by a
bounded amount when one subject is added or removed: the DP layer only adds noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domains.contract import Bounds

MAX_EMPTY_WINDOWS = 1_000  # empty windows released after a gap in the stream, at most


@dataclass(slots=True)
class SubjectTally:
    """One subject's bounded contribution to one window."""

    events: int = 0
    sums: dict[str, float] = field(default_factory=dict)


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


class WindowAggregator:
    """Tumbling event-time windows of ``window_seconds`` with a close ``grace_seconds``."""

    def __init__(
        self,
        window_seconds: int,
        grace_seconds: int,
        max_events_per_subject: int,
        bounds: dict[str, Bounds],
    ) -> None:
        if window_seconds < 1 or grace_seconds < 0 or max_events_per_subject < 1:
            raise ValueError("window >= 1 s, grace >= 0 s and max events >= 1 are required")
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

    @property
    def open_windows(self) -> int:
        """Windows holding at least one tally (lost if the partition moves mid-window)."""
        return sum(1 for tallies in self._windows.values() if tallies)

    def add(self, subject: str, event_time: float, measures: dict[str, float]) -> bool:
        """Count one event; False when it is late (its window is closed) or over the cap."""
        start = self.window_of(event_time)
        if self._next_close is not None and start < self._next_close:
            self.late_events += 1
            return False
        if self._next_close is None:
            self._next_close = start
        tally = self._windows.setdefault(start, {}).setdefault(subject, SubjectTally())
        if tally.events >= self.max_events:
            self.capped_events += 1
            return False
        tally.events += 1
        for name, value in measures.items():
            bound = self.bounds.get(name)
            clamped = min(max(value, bound.min), bound.max) if bound else value
            tally.sums[name] = tally.sums.get(name, 0.0) + clamped
        self._dirty.add((start, subject))
        return True

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
        """Close every window that ended at least ``grace_seconds`` before ``now``.

        Windows are closed in order and without gaps from the first event on, so a
        window in which nothing happened is released as zero rather than skipped.
        """
        horizon = self.window_of(now - self.grace_seconds)
        if self._next_close is None or self._next_close >= horizon:
            return []
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
            closed.append(
                WindowStats(
                    window_start=start,
                    window_end=start + self.window_seconds,
                    distinct_subjects=len(tallies),
                    events=sum(t.events for t in tallies.values()),
                    sums=sums,
                )
            )
        self._next_close = horizon
        return closed
