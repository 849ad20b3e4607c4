"""Daily classes: one hierarchical structure per (class, UTC day), every resolution from
one daily budget (``hierarchy``).

The day's epsilon is committed once, before any node of the day is drawn: only that
payment reveals the day's :class:`DayValues` (the noisy values at each resolution, nodes
drawn on demand). A value is then committed at cost 0 before it is returned. A daily mean
is the composition of two paid days (``releases.mean``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dashboards_api import daily
from dashboards_api.budget import from_micro
from dashboards_api.errors import (
    HorizonChanged,
    InvalidParameters,
    MechanismRefused,
    NoDataYet,
    ResolutionUnavailable,
)
from dashboards_api.hierarchy import DAY_SECONDS, DailyHierarchy, NoisyValue, expected_half_width
from dashboards_api.ledger import LedgerEntry
from dashboards_api.mechanisms import finite_accuracy
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases.body import ReleaseBody
from dashboards_api.releases.commit import Sealed
from dashboards_api.releases.sources import HOUR, DayWindows, completeness, day_of
from dashboards_api.sensitivity import (
    EVENTS,
    NEW_HOUR,
    NEW_PERIOD,
    SUM,
    daily_sensitivities,
    split_epsilon,
)
from feature_repo.names import MAX_RECORDS_PER_PERIOD, MAX_WINDOWS_PER_PERIOD, WINDOW_KEY

if TYPE_CHECKING:
    from dashboards_api.releases.service import ReleaseService

AUTO = "auto"
"""The default resolution of a daily class: the finest that meets its declared accuracy."""


@dataclass(frozen=True)
class DailyRelease:
    """Releases of daily classes (a derived mean through :class:`~.mean.MeanRelease`)."""

    host: ReleaseService
    # Daily structures built on this replica, by stream id (their nodes live in the ledger).
    structures: dict[str, DailyHierarchy] = field(default_factory=dict, repr=False)

    def check(self, qc: QueryClass) -> None:
        """Refuse a daily class whose structure could not release (before it is stored):
        a mean whose parts are not daily sum/count classes of its product and measure, or
        a scale without a finite accuracy."""
        if qc.derived_mean:
            self.mean_parts(qc)
            return
        product = self.host.product_of(qc)
        deltas = daily_sensitivities(qc, product)
        epsilons = split_epsilon(qc, list(deltas))
        for stream, delta in deltas.items():
            if epsilons[stream] <= 0:
                raise MechanismRefused(
                    f"class {qc.id!r}: epsilon_per_release is too small to split over its "
                    f"{len(deltas)} structures; raise it"
                )
            window = HOUR if stream == NEW_HOUR else self.host.window_seconds
            for resolution in _stream_resolutions(qc, stream):
                finite_accuracy(
                    float(expected_half_width(resolution, window, epsilons[stream], delta)),
                    f"daily structure at epsilon {epsilons[stream]}, sensitivity {delta}",
                )

    def data_version(self, qc: QueryClass, end: int, resolution: str | None) -> str:
        """The version of a value at ``resolution`` (``auto`` included) for the window
        starting at ``end``: per resolution and end of the newest window."""
        t_end = end + self.host.window_seconds
        return f"day:{day_of(t_end)}:{resolution or AUTO}:{t_end}"

    def mean_parts(self, qc: QueryClass) -> tuple[QueryClass, QueryClass]:
        """The numerator (daily bounded_sum of the mean's measure) and the denominator (daily
        count_records) of a daily mean, both of its product; else a 422."""
        assert qc.numerator is not None and qc.denominator is not None  # validated
        parts = []
        for role, class_id, aggregate in (
            ("numerator", qc.numerator, "bounded_sum"),
            ("denominator", qc.denominator, "count_records"),
        ):
            part = self.host.classes.get(class_id)
            if (
                part is None
                or part.release != "daily"
                or part.aggregate != aggregate
                or (part.domain, part.product) != (qc.domain, qc.product)
                or (aggregate == "bounded_sum" and part.measure != qc.measure)
            ):
                raise InvalidParameters(
                    f"class {qc.id!r}: its {role} {class_id!r} must be a registered daily "
                    f"{aggregate} of {qc.domain}.{qc.product}"
                    + (f" over {qc.measure!r}" if aggregate == "bounded_sum" else "")
                )
            parts.append(part)
        return parts[0], parts[1]

    def release(self, qc: QueryClass, window_start: int | None, resolution: str) -> ReleaseBody:
        """A daily class's value at ``resolution`` (``auto``: the finest meeting its accuracy)
        for the newest closed window: the day paid first (once), the value committed at
        cost 0 before it is returned."""
        if qc.derived_mean:
            from dashboards_api.releases.mean import MeanRelease

            return MeanRelease(self).release(qc, window_start, resolution)
        host = self.host
        t_end, row = self.end_and_row(qc, window_start)
        self.check_row_bounds(qc, row)
        day_start = day_of(t_end)
        payment, values = self.pay_day(qc, day_start, t_end)  # before any node is drawn
        chosen = self.choose(qc, resolution, values.bounded)
        found = values.at(chosen)
        if found is None:
            raise ResolutionUnavailable(
                f"{qc.id!r} cannot release {chosen!r} now (it needs yesterday's structure, "
                "and the class was not released yesterday); choose 'today'",
                resolution=chosen,
            )
        bounded, noisy = found
        answer = self.answer_fields(qc, chosen, bounded, noisy.start, noisy.end, t_end)
        suppressed = qc.suppress_below is not None and bounded.value < qc.suppress_below
        answer |= {
            "value": None if suppressed else int(bounded.value),
            "ci95": None if suppressed else [int(bounded.low), int(bounded.high)],
            "suppressed": suppressed,
            **completeness(row, host.partitions),  # of the newest window
            "mechanism": "daily_hierarchy_discrete_laplace",
            "sensitivity": payment.answer["sensitivity"],
            "nodes": noisy.nodes,
            "daily_epsilon": {
                "epsilon": from_micro(qc.cost_micro),
                "day_start": _iso(day_start),
                "paid_by_ledger_entry": payment.id,
            },
        }
        version = f"day:{day_start}:{resolution}:{t_end}"
        return host.commit_answer(qc, version, day_start, Sealed(lambda: answer), cost_micro=0)

    def end_and_row(self, qc: QueryClass, window_start: int | None) -> tuple[int, dict[str, Any]]:
        """End of the newest closed window with a complete row (``window_start``'s, when
        given) and that row."""
        row = self.host.newest_row(qc, window_start)
        return int(row[WINDOW_KEY]) + self.host.window_seconds, row

    def check_row_bounds(self, qc: QueryClass, row: dict[str, Any]) -> None:
        """Refuse rows whose processor did not apply per-day bounds at least as tight as the
        contract's (the structure's sensitivity assumes them)."""
        host = self.host
        bounds = host.product_of(qc).contribution
        applied = (row.get(MAX_RECORDS_PER_PERIOD), row.get(MAX_WINDOWS_PER_PERIOD))
        if applied[0] is None or applied[1] is None:
            raise NoDataYet(
                f"the windows of {qc.domain}.{qc.product} carry no per-day contribution bounds "
                "(written by an older processor); a daily class needs them",
                retry_after_seconds=host.window_seconds,
            )
        if int(applied[0]) > bounds.max_records_per_period or (
            int(applied[1]) > bounds.max_windows_per_period
        ):
            raise NoDataYet(
                f"the windows of {qc.domain}.{qc.product} were bounded at {applied[0]} records "
                f"and {applied[1]} windows per subject-day, looser than the contract's "
                f"{bounds.max_records_per_period} and {bounds.max_windows_per_period}; the "
                "processor must run with the current contract",
                retry_after_seconds=host.window_seconds,
            )
        host.check_row_cap(qc, row)

    def pay_day(self, qc: QueryClass, day_start: int, t_end: int) -> tuple[LedgerEntry, DayValues]:
        """Commit (or find) the day's payment of a daily class, its epsilon for every value
        of the day; only then are the day's values (for the window ending ``t_end``)
        revealed, their nodes drawn on demand."""
        host = self.host
        paid = {
            "day_start": _iso(day_start),
            "day_end": _iso(day_start + DAY_SECONDS),
            "epsilon": from_micro(qc.cost_micro),
            "sensitivity": daily_sensitivities(qc, host.product_of(qc)),
        }
        version = f"day:{day_start}"
        # paid already: read back without a write transaction
        found = host.committed.find(qc.id, host.ledger_key(qc, version))
        sealed = Sealed(lambda: DayValues(self, qc, t_end))
        return host.pay(qc, version, day_start, paid, sealed, found)

    def paid(self, qc: QueryClass, day_start: int) -> bool:
        """Whether ``qc`` (this definition) paid for the day starting at ``day_start``."""
        host = self.host
        return host.committed.find(qc.id, host.ledger_key(qc, f"day:{day_start}")) is not None

    def stream_id(self, qc: QueryClass, stream: str, day_start: int) -> str:
        """The node-store name of one stream's structure of ``qc`` for one day."""
        return f"{qc.id}|day:{day_start}|{stream}|{self.host.definition(qc)}"

    def structure(self, qc: QueryClass, stream: str, day_start: int) -> DailyHierarchy:
        """The day's structure of one stream of ``qc`` (only after the day is paid), built
        once per replica (its parameters are part of its stream id's definition hash)."""
        host = self.host
        stream_id = self.stream_id(qc, stream, day_start)
        known = self.structures.get(stream_id)
        if known is not None:
            return known
        deltas = daily_sensitivities(qc, host.product_of(qc))
        epsilon = split_epsilon(qc, list(deltas))[stream]
        window = HOUR if stream == NEW_HOUR else host.window_seconds
        try:
            built = DailyHierarchy(
                window, day_start, epsilon, deltas[stream], host.ledger, stream_id
            )
        except ValueError as exc:
            raise HorizonChanged(
                f"{exc}; the parameters of {qc.id!r} changed inside the day starting "
                f"{_iso(day_start)}: its values resume with the next day",
                retry_after_seconds=max(1, day_start + DAY_SECONDS - int(host.clock())),
            ) from exc
        if len(self.structures) > 4_096:  # days pass: forget the older structures
            self.structures.clear()
        self.structures[stream_id] = built
        return built

    def choose(
        self, qc: QueryClass, resolution: str, value_at: Callable[[str], daily.Bounded | None]
    ) -> str:
        """``resolution``, or for ``auto`` the finest answered resolution whose relative 95%
        half-width meets the class's accuracy (without one: is not too noisy), else the
        coarsest available."""
        if resolution != AUTO:
            return resolution
        relative = qc.accuracy.relative if qc.accuracy is not None else daily.TOO_NOISY_RATIO
        chosen = daily.pick_auto(qc.answered_resolutions, value_at, relative)
        if chosen is None:
            raise ResolutionUnavailable(
                f"{qc.id!r} has no resolution available now", resolution=AUTO
            )
        return chosen

    def answer_fields(
        self,
        qc: QueryClass,
        resolution: str,
        bounded: daily.Bounded,
        start: int,
        end: int,
        t_end: int,
    ) -> dict[str, Any]:
        """The fields every daily answer shares (value and interval set by the caller)."""
        answered = qc.answered_resolutions
        position = answered.index(resolution)
        return {
            "resolution": resolution,
            "resolutions": list(answered),
            "span": daily.span(start, end),
            "window": daily.span(start, end),
            "too_noisy": bounded.too_noisy,
            "coarser": answered[position + 1] if position + 1 < len(answered) else None,
            "suppress_below": qc.suppress_below,
            "newest_window_end": _iso(t_end),
            "epsilon": "0",
            "released_at": datetime.fromtimestamp(self.host.clock(), tz=UTC).isoformat(),
        }


class DayValues:
    """A paid day's noisy values of one daily class for the window ending ``t_end``, by
    resolution (clamped to the statistic's public bounds), drawn on demand and kept.

    Only :meth:`DailyRelease.pay_day` makes one, as what its committed payment reveals.
    """

    def __init__(self, strategy: DailyRelease, qc: QueryClass, t_end: int) -> None:
        self.strategy, self.qc, self.t_end = strategy, qc, t_end
        self._values: dict[str, tuple[daily.Bounded, NoisyValue] | None] = {}

    def at(self, resolution: str) -> tuple[daily.Bounded, NoisyValue] | None:
        """The clamped value at ``resolution`` and its noisy value (None: not available
        now)."""
        if resolution not in self._values:
            try:
                noisy = self._noisy(resolution)
            except ResolutionUnavailable:
                self._values[resolution] = None
            else:
                self._values[resolution] = (self._bounded(noisy), noisy)
        return self._values[resolution]

    def bounded(self, resolution: str) -> daily.Bounded | None:
        """The clamped value at ``resolution`` (None: not available now)."""
        found = self.at(resolution)
        return None if found is None else found[0]

    def _noisy(self, resolution: str) -> NoisyValue:
        strategy, qc, t_end = self.strategy, self.qc, self.t_end
        host = strategy.host
        day_start = day_of(t_end)
        stream = _stream_of(qc, resolution)
        windows = DayWindows(
            host.sources[qc.domain], qc, stream, host.window_seconds, host.partitions, t_end
        )
        today = strategy.structure(qc, stream, day_start)
        yesterday = day_start - DAY_SECONDS
        previous = strategy.structures.get(strategy.stream_id(qc, stream, yesterday))
        if previous is None and strategy.paid(qc, yesterday):
            previous = strategy.structure(qc, stream, yesterday)
        if stream == NEW_HOUR:
            hour_end = t_end - t_end % HOUR
            if hour_end == day_start:  # no complete hour today: yesterday's last one
                if previous is None:
                    raise ResolutionUnavailable(
                        f"no hour of today is complete and {qc.id!r} was not released "
                        "yesterday; choose 'today'",
                        resolution=resolution,
                    )
                return previous.value("1h", hour_end, windows)
            return today.value("1h", hour_end, windows, previous)
        return today.value(resolution, t_end, windows, previous)

    def _bounded(self, noisy: NoisyValue) -> daily.Bounded:
        """``noisy`` clamped to the public bounds of the class's statistic: counts >= 0; a
        sum >= 0 (<= 0) when its measure's clamp is non-negative (non-positive)."""
        qc = self.qc
        low: float | None = 0.0
        high: float | None = None
        if qc.aggregate == "bounded_sum":
            assert qc.measure is not None
            clamp = self.strategy.host.product_of(qc).clamp_of(qc.measure)
            low = 0.0 if clamp.min >= 0 else None
            high = 0.0 if clamp.max <= 0 else None
        return daily.clamp(noisy.value, noisy.ci95_half_width, low, high)


def _stream_of(qc: QueryClass, resolution: str) -> str:
    """The window-row stream a daily ``qc`` reads at ``resolution``."""
    if qc.aggregate == "count_distinct_subjects":
        return NEW_HOUR if resolution == "1h" else NEW_PERIOD
    return EVENTS if qc.aggregate == "count_records" else SUM


def _stream_resolutions(qc: QueryClass, stream: str) -> list[str]:
    """The resolutions of ``qc`` read from ``stream`` (as that stream's structure names
    them: the hour stream's windows are hours)."""
    if stream == NEW_HOUR:
        return ["window"]
    return [r for r in qc.answered_resolutions if _stream_of(qc, r) == stream]


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
