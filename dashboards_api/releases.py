"""The release path: read bounded aggregates, draw noise, commit to the ledger, answer."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Protocol, overload

import polars as pl

from dashboards_api import daily
from dashboards_api.budget import from_micro, to_micro
from dashboards_api.cache import CommittedReleases
from dashboards_api.continual import BinaryTreeCounter, ci95_half_width, levels, tree_scale
from dashboards_api.errors import (
    BudgetExhausted,
    HorizonChanged,
    InvalidParameters,
    MechanismRefused,
    NoDataYet,
    PolicyLimitExceeded,
    ResolutionUnavailable,
    UnknownQueryClass,
    WindowNotFound,
)
from dashboards_api.event_aggregates import (
    EventQuery,
    mechanisms_for,
    plan_from_store,
    scan_events,
)
from dashboards_api.event_aggregates import release as release_events
from dashboards_api.hierarchy import DAY_SECONDS, DailyHierarchy, NoisyValue, expected_half_width
from dashboards_api.ledger import Commit, Ledger, period_of
from dashboards_api.mechanisms import NonFiniteAccuracy, discrete_laplace_count, finite_accuracy
from dashboards_api.policy import PolicyCell
from dashboards_api.query_classes import EVENT_WINDOWS, ProductBudget, QueryClass
from dashboards_api.sensitivity import (
    NEW_HOUR,
    NEW_PERIOD,
    daily_sensitivities,
    sensitivity,
    split_epsilon,
)
from domains.contract import DataProduct, DomainContract
from feature_repo.names import (
    CONTRIBUTION_BOUND,
    MAX_RECORDS_PER_PERIOD,
    MAX_WINDOWS_PER_PERIOD,
    WINDOW_COMPLETE,
    WINDOW_LATE_EVENTS,
    sum_cap_feature,
    sum_feature,
)

AUTO = "auto"
"""The default resolution of a daily class: the finest that meets its declared accuracy."""
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


@dataclass(frozen=True)
class ReleaseService:
    """Answers registered query classes through the ledger.

    ``classes`` may change at run time (domain owners manage their classes); the
    dict is replaced entry by entry, never mutated while a release reads it.
    """

    classes: dict[str, QueryClass]
    sources: dict[str, WindowSource]
    ledger: Ledger
    window_seconds: int
    grace_seconds: int
    lookback_windows: int
    contracts: dict[str, DomainContract]
    partitions: int = 1
    clock: Callable[[], float] = time.time
    product_budgets: dict[str, ProductBudget] = field(default_factory=dict)
    history_windows: int = 8_640
    events: dict[str, EventSource] = field(default_factory=dict)
    # Event-level windows are released once their events are surely in the offline store:
    # grace plus two offline flushes of the processor.
    events_settle_seconds: int = 70
    # The governance policy in force (the class registry reloads it from the ledger).
    policy: PolicyCell = field(default_factory=PolicyCell)
    _definitions: dict[str, tuple[QueryClass, str]] = field(
        default_factory=dict, init=False, repr=False
    )
    # Daily structures built on this replica, by stream id (their nodes live in the ledger).
    _structures: dict[str, DailyHierarchy] = field(default_factory=dict, init=False, repr=False)
    # Releases this replica knows are committed, and each class's spend (see cache.py).
    committed: CommittedReleases = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Own the dict: domain owners' changes must not leak into a caller's (cached) one.
        object.__setattr__(self, "classes", dict(self.classes))
        object.__setattr__(self, "committed", CommittedReleases(self.ledger))

    def query_class(self, class_id: str) -> QueryClass:
        """The registered class, or UnknownQueryClass naming the known ones."""
        qc = self.classes.get(class_id)
        if qc is None:
            known = ", ".join(sorted(self.classes)) or "none"
            raise UnknownQueryClass(f"no query class {class_id!r}; registered: {known}")
        return qc

    def period(self) -> str:
        """The current budget period."""
        return period_of(datetime.fromtimestamp(self.clock(), tz=UTC))

    def budget(self, qc: QueryClass) -> dict[str, Any]:
        """Budget state of ``qc`` in the current period."""
        period = self.period()
        return budget_view(qc, period, self.committed.spent(qc.id, period), self.class_budget(qc))

    def class_budget(self, qc: QueryClass) -> int:
        """``qc``'s daily budget in micro-epsilon, capped by the governance policy."""
        return self.policy.current.class_budget_micro(qc)

    def product_total(self, domain: str, product: str) -> int | None:
        """A data product's daily total in micro-epsilon: the declared one, else the
        policy's default, capped by the policy (None: neither declares one)."""
        declared = self.product_budgets.get(f"{domain}.{product}")
        return self.policy.current.product_total_micro(
            None if declared is None else declared.budget_micro
        )

    def product_budget(self, domain: str, product: str) -> dict[str, Any] | None:
        """Total budget state of a data product in the current period (None: no total)."""
        key = f"{domain}.{product}"
        total = self.product_total(domain, product)
        if total is None:
            return None
        period = self.period()
        spent = self.ledger.product_spent(key, period)
        return {
            "product": key,
            "period": period,
            "epsilon_spent": from_micro(spent),
            "epsilon_remaining": from_micro(max(total - spent, 0)),
            "epsilon_budget": from_micro(total),
        }

    def definition(self, qc: QueryClass) -> str:
        """The hash of everything that shapes ``qc``'s answers (its contract included),
        computed once per class object (classes are immutable; a redefinition is a new one)."""
        known = self._definitions.get(qc.id)
        if known is not None and known[0] is qc:
            return known[1]
        contract = self.contracts.get(qc.domain)
        digest = qc.definition_hash(None if contract is None else contract.product(qc.product))
        self._definitions[qc.id] = (qc, digest)
        return digest

    def ledger_key(self, qc: QueryClass, data_version: str) -> str:
        """The ledger's key of a release: the data version and the class definition, so an
        answer is reused only for the very definition that produced it."""
        return f"{data_version}{DEFINITION_SEPARATOR}{self.definition(qc)}"

    def check_policy(self, qc: QueryClass) -> None:
        """Refuse ``qc`` when the governance policy in force caps it below its cost, or its
        product has no daily total (nothing is drawn or committed)."""
        self.policy.current.check_class(qc)
        if self.product_total(qc.domain, qc.product) is None:
            raise PolicyLimitExceeded(
                f"data product {qc.domain}.{qc.product} has no daily total; declare one under "
                "'products:' or set the policy's default_product_budget_per_day",
                limit="default_product_budget_per_day",
                limit_value=None,
            )

    def check_mechanism(self, qc: QueryClass) -> None:
        """Refuse ``qc`` when its mechanism has no finite accuracy at its epsilon (built as a
        release would build it; a window class at the smallest sensitivity, 1)."""
        try:
            if qc.release == "daily":
                self._check_daily(qc)
            elif qc.source == "events":
                mechanisms_for(event_query(qc, self.product_of(qc)))
            elif qc.release == "continual":
                continual_accuracy(qc, 1)
            else:
                discrete_laplace_count(qc.epsilon_per_release, 1)
        except NonFiniteAccuracy as exc:
            raise MechanismRefused(f"class {qc.id!r}: {exc}") from exc

    def last_closed(self) -> int:
        """Start (epoch s) of the newest stream window past its grace period."""
        latest = int(self.clock()) - self.grace_seconds
        latest -= latest % self.window_seconds
        return latest - self.window_seconds

    def window_length(self, qc: QueryClass) -> int:
        """Seconds of one window of ``qc``."""
        return EVENT_WINDOWS.get(qc.window, self.window_seconds)

    def due(self, qc: QueryClass) -> int:
        """Start of the newest closed window ``qc`` can release (what live streams push)."""
        if qc.source != "events":
            return self.last_closed()
        length = self.window_length(qc)
        settled = int(self.clock()) - self.events_settle_seconds
        return settled - settled % length - length

    def data_version(
        self, qc: QueryClass, window_start: int | None, resolution: str | None = None
    ) -> str:
        """The version a release of ``qc`` at ``window_start`` (default: newest) is stored as
        (a daily class: per resolution, ``auto`` included, and end of the newest window)."""
        end = self.due(qc) if window_start is None else window_start
        if qc.release == "daily":
            t_end = end + self.window_seconds
            return f"day:{day_of(t_end)}:{resolution or AUTO}:{t_end}"
        if qc.source == "events":
            return f"events-{qc.window}:{end}"
        if qc.release == "continual":
            assert qc.horizon_windows is not None  # validated with the class
            horizon = end - end % (qc.horizon_windows * self.window_seconds)
            return f"running:{horizon}:{(end - horizon) // self.window_seconds + 1}"
        return f"window:{end}"

    def cached(
        self, class_id: str, window_start: int | None = None, resolution: str | None = None
    ) -> dict[str, Any] | None:
        """The stored answer when this release was already made, else None: the committed
        release this replica remembers or, failing that, the ledger's (index reads only:
        cheap enough for the event loop). Nothing uncommitted is ever remembered."""
        qc = self.query_class(class_id)
        resolution = self._check_resolution(qc, resolution)
        if window_start is not None:
            self._check_window(qc, window_start)
        version = self.data_version(qc, window_start, resolution)
        hit = self.committed.find(qc.id, self.ledger_key(qc, version))
        if hit is None:
            return None
        spent = self.committed.spent(qc.id, hit.period)
        body = response_of(qc, Commit(hit, True, spent), hit.period, self.class_budget(qc))
        return self.with_user_level(qc, body)

    def release(
        self, class_id: str, window_start: int | None = None, resolution: str | None = None
    ) -> dict[str, Any]:
        """The DP answer of ``class_id`` for ``window_start`` (default: the last closed);
        a daily class at ``resolution`` (default ``auto``)."""
        # Answer reuse first: a released window is read back without touching the store.
        reused = self.cached(class_id, window_start, resolution)
        if reused is not None:
            return reused
        return self.release_new(class_id, window_start, resolution)

    def release_new(
        self, class_id: str, window_start: int | None = None, resolution: str | None = None
    ) -> dict[str, Any]:
        """The release after :meth:`cached` found none: store read, noise, commit (which
        still returns the stored answer if another request committed it meanwhile)."""
        qc = self.query_class(class_id)
        resolution = self._check_resolution(qc, resolution)
        if window_start is not None:
            self._check_window(qc, window_start)
        self.check_policy(qc)
        try:
            if qc.release == "daily":
                body = self._release_daily(qc, window_start, resolution or AUTO)
            else:
                body = self._release_fresh(qc, window_start)
        except NonFiniteAccuracy as exc:  # raised before anything is committed
            raise MechanismRefused(f"class {qc.id!r}: {exc}") from exc
        return self.with_user_level(qc, body)

    def with_user_level(self, qc: QueryClass, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with what a consumer needs to read it at user level: the privacy unit,
        the class's and the product's epsilon per subject per UTC day, and when the class's
        budget runs out at its current cadence (none of it is stored with the answer)."""
        total = self.product_total(qc.domain, qc.product)
        unit = privacy_unit_of(qc)
        budget = body.get("budget") or self.budget(qc)
        spent = to_micro(budget["epsilon_spent"])
        return {
            **body,
            "privacy_unit": unit,
            "user_level": {
                "period": "UTC day",
                # a subject_window class bounds a subject's loss per window, not per day
                "epsilon_per_subject_per_day": None
                if unit == "subject_window"
                else from_micro(self.class_budget(qc)),
                "product_total": None if total is None else from_micro(total),
            },
            "budget_lasts_until": daily.budget_lasts_until(
                self.clock(), qc.release == "daily", spent, to_micro(budget["epsilon_budget"])
            ),
        }

    def _check_resolution(self, qc: QueryClass, resolution: str | None) -> str | None:
        """``resolution`` if ``qc`` answers it (None or ``auto``: automatic), else a 422
        naming the ones it answers and why the others are refused."""
        if qc.release != "daily":
            if resolution not in (None, AUTO):
                raise InvalidParameters(
                    f"class {qc.id!r} releases one value per window; 'resolution' is for "
                    "daily classes"
                )
            return None
        if resolution in (None, AUTO) or resolution in qc.answered_resolutions:
            return resolution
        reason = (
            " (a distinct count is a sum of subjects new to an hour or to the day: a window, "
            "a minute or a sliding 24 h of it counts no distinct subjects)"
            if qc.aggregate == "count_distinct_subjects"
            else ""
        )
        raise InvalidParameters(
            f"class {qc.id!r} does not answer resolution {resolution!r}; it answers "
            f"{', '.join((AUTO, *qc.answered_resolutions))}{reason}",
            resolution=resolution,
            resolutions=[AUTO, *qc.answered_resolutions],
        )

    def _release_fresh(self, qc: QueryClass, window_start: int | None) -> dict[str, Any]:
        if qc.source == "events":
            return self._release_events(qc, window_start)
        if qc.release == "continual":
            return self._release_running(qc, window_start)
        row = self._newest_row(qc, window_start)
        start = int(row["window_start"])
        bound = row.get(CONTRIBUTION_BOUND)
        self._check_row_cap(qc, row)
        sens = sensitivity(qc, self.product_of(qc), bound)
        noisy = discrete_laplace_count(qc.epsilon_per_release, sens).release(exact_value(qc, row))
        suppressed = qc.suppress_below is not None and noisy.value < qc.suppress_below
        answer = {
            "value": None if suppressed else noisy.value,
            "ci95": None
            if suppressed
            else [noisy.value - noisy.ci95_half_width, noisy.value + noisy.ci95_half_width],
            "suppressed": suppressed,
            "suppress_below": qc.suppress_below,
            "window": {"start": _iso(start), "end": _iso(start + self.window_seconds)},
            **completeness(row, self.partitions),
            "mechanism": qc.noise,
            "sensitivity": sens,
            "contribution_bound": bound,
            "epsilon": from_micro(qc.cost_micro),
            "released_at": datetime.fromtimestamp(self.clock(), tz=UTC).isoformat(),
        }
        return self._commit(qc, f"window:{start}", answer, start)

    def _release_events(self, qc: QueryClass, window_start: int | None) -> dict[str, Any]:
        """An event-level class: a user-level bounded polars plan over the domain's
        pseudonymised events, then OpenDP noise (``event_aggregates``)."""
        start = self.due(qc) if window_start is None else window_start
        end = start + self.window_length(qc)
        source = self.events.get(qc.domain)
        if source is None:
            raise NoDataYet(f"no event store configured for domain {qc.domain!r}")
        query = event_query(qc, self.product_of(qc))
        frame = source.exact(
            qc.product,
            query,
            datetime.fromtimestamp(start, tz=UTC),
            datetime.fromtimestamp(end, tz=UTC),
        )
        noisy = release_events(query, frame, qc.suppress_below)
        groups = [
            {
                "key": g.key,
                "value": g.value,
                "ci95": None
                if g.value is None or g.ci95_half_width is None or noisy.ci95_unit != "value"
                else [g.value - g.ci95_half_width, g.value + g.ci95_half_width],
                "suppressed": g.suppressed,
            }
            for g in noisy.groups
        ]
        answer: dict[str, Any] = {
            "value": None if qc.group_by else groups[0]["value"],
            "ci95": None if qc.group_by else groups[0]["ci95"],
            "suppressed": any(g["suppressed"] for g in groups),
            "suppress_below": qc.suppress_below,
            "window": {"start": _iso(start), "end": _iso(end)},
            "mechanism": qc.noise,
            "max_records_per_subject": qc.max_records_per_subject,
            "epsilon": from_micro(qc.cost_micro),
            "released_at": datetime.fromtimestamp(self.clock(), tz=UTC).isoformat(),
        }
        if qc.group_by:
            answer |= {"group_by": qc.group_by, "groups": groups}
        if noisy.ci95_unit == "rank":
            # The exponential mechanism bounds the chosen candidate's rank error, not its value.
            answer["rank_ci95_half_width"] = noisy.groups[0].ci95_half_width
        return self._commit(qc, self.data_version(qc, start), answer, start)

    def _release_running(self, qc: QueryClass, window_start: int | None) -> dict[str, Any]:
        """The running total of a continual class up to ``window_start`` (binary tree).

        The horizon's epsilon is committed once, before its first total; every total of
        the horizon is then committed at cost 0 before it is returned.
        """
        assert qc.horizon_windows is not None  # validated with the class
        end = self.last_closed() if window_start is None else window_start
        span = qc.horizon_windows * self.window_seconds
        horizon = end - end % span
        t = (end - horizon) // self.window_seconds + 1
        version = f"running:{horizon}:{t}"
        source = self.sources[qc.domain]
        row = source.window_stats(qc.product, [end], self.partitions)[0]
        if row.get("distinct_subjects") is None:
            if window_start is not None:
                raise WindowNotFound(f"window {_iso(end)} of {qc.domain}.{qc.product} has no data")
            raise NoDataYet(
                f"the last closed window of {qc.domain}.{qc.product} has not been reported",
                retry_after_seconds=self.window_seconds,
            )
        bound = row.get(CONTRIBUTION_BOUND)
        self._check_row_cap(qc, row)
        sens = sensitivity(qc, self.product_of(qc), bound)
        paid = {
            "horizon_start": _iso(horizon),
            "horizon_end": _iso(horizon + span),
            "horizon_windows": qc.horizon_windows,
            "epsilon": from_micro(qc.cost_micro),
        }
        continual_accuracy(qc, sens)  # before the horizon is paid for
        # reused when already paid for
        payment = self._commit(qc, f"horizon:{horizon}", paid, horizon)
        try:
            counter = BinaryTreeCounter(
                qc.horizon_windows,
                qc.epsilon_per_release,
                sens,
                self.ledger,
                f"{qc.id}|{horizon}|{self.definition(qc)}",
            )
        except ValueError as exc:
            raise HorizonChanged(
                f"{exc}; the contribution bound or epsilon of {qc.id!r} changed inside the "
                f"horizon starting {_iso(horizon)}: running totals resume with the next horizon",
                retry_after_seconds=horizon + span - int(self.clock()),
            ) from exc
        values = WindowValues(source, qc, horizon, self.window_seconds, self.partitions)
        noisy = counter.release(t, values)
        answer = {
            "value": noisy.value,
            "ci95": [noisy.value - noisy.ci95_half_width, noisy.value + noisy.ci95_half_width],
            "suppressed": False,
            "suppress_below": None,
            "window": {"start": _iso(horizon), "end": _iso(end + self.window_seconds)},
            **completeness(row, self.partitions),  # of the newest window of the total
            "running_total": {"t": t, **paid, "tree_nodes": noisy.nodes},
            # This total is post-processing of the horizon's tree, paid for once at the
            # horizon's first total: it draws on the horizon's epsilon, t of its
            # horizon_windows totals released so far.
            "horizon_epsilon": {
                "epsilon": from_micro(qc.cost_micro),
                "paid_by_ledger_entry": payment["ledger_entry"],
                "totals_released": t,
                "share_drawn": t / qc.horizon_windows,
            },
            "mechanism": "binary_tree_discrete_laplace",
            "privacy_unit": qc.privacy_unit,
            "sensitivity": sens,
            "contribution_bound": bound,
            "epsilon": "0",
            "released_at": datetime.fromtimestamp(self.clock(), tz=UTC).isoformat(),
        }
        return self._commit(qc, version, answer, horizon, cost_micro=0)

    # ---- daily classes: one hierarchical structure per (class, UTC day) ----

    def _check_daily(self, qc: QueryClass) -> None:
        """Refuse a daily class whose structure could not release (before it is stored):
        a mean whose parts are not daily sum/count classes of its product and measure, or
        a scale without a finite accuracy."""
        if qc.derived_mean:
            self._mean_parts(qc)
            return
        product = self.product_of(qc)
        deltas = daily_sensitivities(qc, product)
        epsilons = split_epsilon(qc, list(deltas))
        for stream, delta in deltas.items():
            if epsilons[stream] <= 0:
                raise MechanismRefused(
                    f"class {qc.id!r}: epsilon_per_release is too small to split over its "
                    f"{len(deltas)} structures; raise it"
                )
            window = HOUR if stream == NEW_HOUR else self.window_seconds
            for resolution in _stream_resolutions(qc, stream):
                finite_accuracy(
                    float(expected_half_width(resolution, window, epsilons[stream], delta)),
                    f"daily structure at epsilon {epsilons[stream]}, sensitivity {delta}",
                )

    def _mean_parts(self, qc: QueryClass) -> tuple[QueryClass, QueryClass]:
        """The numerator (daily bounded_sum of the mean's measure) and the denominator (daily
        count_records) of a daily mean, both of its product; else a 422."""
        assert qc.numerator is not None and qc.denominator is not None  # validated
        parts = []
        for role, class_id, aggregate in (
            ("numerator", qc.numerator, "bounded_sum"),
            ("denominator", qc.denominator, "count_records"),
        ):
            part = self.classes.get(class_id)
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

    def _newest_row(self, qc: QueryClass, window_start: int | None) -> dict[str, Any]:
        """The window row of ``window_start`` or, when None, of the newest closed window of
        the last ``lookback_windows`` that every ingest partition reported."""
        candidates = (
            [window_start]
            if window_start is not None
            else [
                self.last_closed() - self.window_seconds * i for i in range(self.lookback_windows)
            ]
        )
        rows = self.sources[qc.domain].window_stats(qc.product, candidates, self.partitions)
        row = next((r for r in rows if r.get("distinct_subjects") is not None), None)
        if row is None:
            if window_start is not None:
                raise WindowNotFound(
                    f"window {_iso(window_start)} of {qc.domain}.{qc.product} has no complete "
                    "aggregates (no events, or not every ingest partition reported it)"
                )
            raise NoDataYet(
                f"no closed window of {qc.domain}.{qc.product} in the last "
                f"{self.lookback_windows} windows; is the stream processor running?",
                retry_after_seconds=self.window_seconds,
            )
        return row

    def _daily_end(self, qc: QueryClass, window_start: int | None) -> tuple[int, dict[str, Any]]:
        """End of the newest closed window with a complete row (``window_start``'s, when
        given) and that row."""
        row = self._newest_row(qc, window_start)
        return int(row["window_start"]) + self.window_seconds, row

    def _check_row_bounds(self, qc: QueryClass, row: dict[str, Any]) -> None:
        """Refuse rows whose processor did not apply per-day bounds at least as tight as the
        contract's (the structure's sensitivity assumes them)."""
        bounds = self.product_of(qc).contribution
        applied = (row.get(MAX_RECORDS_PER_PERIOD), row.get(MAX_WINDOWS_PER_PERIOD))
        if applied[0] is None or applied[1] is None:
            raise NoDataYet(
                f"the windows of {qc.domain}.{qc.product} carry no per-day contribution bounds "
                "(written by an older processor); a daily class needs them",
                retry_after_seconds=self.window_seconds,
            )
        if int(applied[0]) > bounds.max_records_per_period or (
            int(applied[1]) > bounds.max_windows_per_period
        ):
            raise NoDataYet(
                f"the windows of {qc.domain}.{qc.product} were bounded at {applied[0]} records "
                f"and {applied[1]} windows per subject-day, looser than the contract's "
                f"{bounds.max_records_per_period} and {bounds.max_windows_per_period}; the "
                "processor must run with the current contract",
                retry_after_seconds=self.window_seconds,
            )
        self._check_row_cap(qc, row)

    def _check_row_cap(self, qc: QueryClass, row: dict[str, Any]) -> None:
        """Refuse rows of a capped measure whose processor did not apply a per-day cap at
        least as tight as the contract's ``max_sum_per_period`` (a sum's or mean's
        sensitivity assumes it: an older processor or contract would have written uncapped
        sums)."""
        if qc.measure is None or qc.aggregate == "count_distinct_subjects":
            return
        cap = self.product_of(qc).sum_cap_of(qc.measure)
        if cap is None:
            return
        applied = row.get(sum_cap_feature(qc.measure))
        if applied is None or float(applied) > cap:
            done = "no per-day cap" if applied is None else f"a per-day cap of {applied:g}"
            raise NoDataYet(
                f"the windows of {qc.domain}.{qc.product} were counted with {done} on "
                f"{qc.measure}, looser than the contract's max_sum_per_period {cap:g}; the "
                "processor must run with the current contract",
                retry_after_seconds=self.window_seconds,
            )

    def _pay_day(self, qc: QueryClass, day_start: int) -> dict[str, Any]:
        """Commit (or find) the day's payment of a daily class: its epsilon for every value
        of the day, before any node of the day is drawn."""
        paid = {
            "day_start": _iso(day_start),
            "day_end": _iso(day_start + DAY_SECONDS),
            "epsilon": from_micro(qc.cost_micro),
            "sensitivity": daily_sensitivities(qc, self.product_of(qc)),
        }
        found = self.committed.find(qc.id, self.ledger_key(qc, f"day:{day_start}"))
        if found is not None:  # paid already: read back without a write transaction
            return {**found.answer, "ledger_entry": found.id}
        return self._commit(qc, f"day:{day_start}", paid, day_start)

    def _paid(self, qc: QueryClass, day_start: int) -> bool:
        """Whether ``qc`` (this definition) paid for the day starting at ``day_start``."""
        return self.committed.find(qc.id, self.ledger_key(qc, f"day:{day_start}")) is not None

    def _stream_id(self, qc: QueryClass, stream: str, day_start: int) -> str:
        """The node-store name of one stream's structure of ``qc`` for one day."""
        return f"{qc.id}|day:{day_start}|{stream}|{self.definition(qc)}"

    def _structure(self, qc: QueryClass, stream: str, day_start: int) -> DailyHierarchy:
        """The day's structure of one stream of ``qc`` (only after the day is paid), built
        once per replica (its parameters are part of its stream id's definition hash)."""
        stream_id = self._stream_id(qc, stream, day_start)
        known = self._structures.get(stream_id)
        if known is not None:
            return known
        deltas = daily_sensitivities(qc, self.product_of(qc))
        epsilon = split_epsilon(qc, list(deltas))[stream]
        window = HOUR if stream == NEW_HOUR else self.window_seconds
        try:
            built = DailyHierarchy(
                window, day_start, epsilon, deltas[stream], self.ledger, stream_id
            )
        except ValueError as exc:
            raise HorizonChanged(
                f"{exc}; the parameters of {qc.id!r} changed inside the day starting "
                f"{_iso(day_start)}: its values resume with the next day",
                retry_after_seconds=max(1, day_start + DAY_SECONDS - int(self.clock())),
            ) from exc
        if len(self._structures) > 4_096:  # days pass: forget the older structures
            self._structures.clear()
        self._structures[stream_id] = built
        return built

    def _noisy(self, qc: QueryClass, resolution: str, t_end: int) -> NoisyValue:
        """The noisy value of a paid daily class at ``resolution`` for ``t_end``."""
        day_start = day_of(t_end)
        stream = _stream_of(qc, resolution)
        windows = DayWindows(
            self.sources[qc.domain], qc, stream, self.window_seconds, self.partitions, t_end
        )
        today = self._structure(qc, stream, day_start)
        yesterday = day_start - DAY_SECONDS
        previous = self._structures.get(self._stream_id(qc, stream, yesterday))
        if previous is None and self._paid(qc, yesterday):
            previous = self._structure(qc, stream, yesterday)
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

    def _bounded(self, qc: QueryClass, noisy: NoisyValue) -> daily.Bounded:
        """``noisy`` clamped to the public bounds of ``qc``'s statistic: counts >= 0; a sum
        >= 0 (<= 0) when its measure's clamp is non-negative (non-positive)."""
        low: float | None = 0.0
        high: float | None = None
        if qc.aggregate == "bounded_sum":
            assert qc.measure is not None
            clamp = self.product_of(qc).clamp_of(qc.measure)
            low = 0.0 if clamp.min >= 0 else None
            high = 0.0 if clamp.max <= 0 else None
        return daily.clamp(noisy.value, noisy.ci95_half_width, low, high)

    def _daily_value(
        self, qc: QueryClass, resolution: str, t_end: int
    ) -> tuple[daily.Bounded, NoisyValue] | None:
        """A paid class's clamped value at ``resolution`` (None: not available now)."""
        try:
            noisy = self._noisy(qc, resolution, t_end)
        except ResolutionUnavailable:
            return None
        return self._bounded(qc, noisy), noisy

    def _release_daily(
        self, qc: QueryClass, window_start: int | None, resolution: str
    ) -> dict[str, Any]:
        """A daily class's value at ``resolution`` (``auto``: the finest meeting its accuracy)
        for the newest closed window: the day paid first (once), the value committed at
        cost 0 before it is returned."""
        if qc.derived_mean:
            return self._release_mean(qc, window_start, resolution)
        t_end, row = self._daily_end(qc, window_start)
        self._check_row_bounds(qc, row)
        day_start = day_of(t_end)
        payment = self._pay_day(qc, day_start)  # before any node of the day is drawn
        values: dict[str, tuple[daily.Bounded, NoisyValue] | None] = {}

        def value_at(r: str) -> daily.Bounded | None:
            if r not in values:
                values[r] = self._daily_value(qc, r, t_end)
            found = values[r]
            return None if found is None else found[0]

        chosen = self._choose(qc, resolution, value_at)
        found = values[chosen] if chosen in values else self._daily_value(qc, chosen, t_end)
        if found is None:
            raise ResolutionUnavailable(
                f"{qc.id!r} cannot release {chosen!r} now (it needs yesterday's structure, "
                "and the class was not released yesterday); choose 'today'",
                resolution=chosen,
            )
        bounded, noisy = found
        answer = self._daily_answer(qc, chosen, bounded, noisy.start, noisy.end, t_end)
        suppressed = qc.suppress_below is not None and bounded.value < qc.suppress_below
        answer |= {
            "value": None if suppressed else int(bounded.value),
            "ci95": None if suppressed else [int(bounded.low), int(bounded.high)],
            "suppressed": suppressed,
            **completeness(row, self.partitions),  # of the newest window
            "mechanism": "daily_hierarchy_discrete_laplace",
            "sensitivity": payment["sensitivity"],
            "nodes": noisy.nodes,
            "daily_epsilon": {
                "epsilon": from_micro(qc.cost_micro),
                "day_start": _iso(day_start),
                "paid_by_ledger_entry": payment["ledger_entry"],
            },
        }
        version = f"day:{day_start}:{resolution}:{t_end}"
        return self._commit(qc, version, answer, day_start, cost_micro=0)

    def _choose(
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

    def _daily_answer(
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
            "released_at": datetime.fromtimestamp(self.clock(), tz=UTC).isoformat(),
        }

    def _release_mean(
        self, qc: QueryClass, window_start: int | None, resolution: str
    ) -> dict[str, Any]:
        """A daily mean: its numerator's value over its denominator's at the same resolution
        and window end (post-processing of two paid structures, cost 0), clamped to the
        measure's clamp, with a conservative interval (``daily.ratio``)."""
        numerator, denominator = self._mean_parts(qc)
        t_end, row = self._daily_end(numerator, window_start)
        self._check_row_bounds(numerator, row)
        day_start = day_of(t_end)
        payments = [self._pay_day(part, day_start) for part in (numerator, denominator)]
        assert qc.measure is not None
        clamp = self.product_of(qc).clamp_of(qc.measure)
        parts: dict[str, tuple[daily.Bounded, NoisyValue] | None] = {}

        def value_at(r: str) -> daily.Bounded | None:
            if r not in parts:
                n = self._daily_value(numerator, r, t_end)
                d = self._daily_value(denominator, r, t_end)
                parts[r] = None
                if n is not None and d is not None:
                    mean = daily.ratio(
                        int(n[0].value),
                        n[1].ci95_half_width,
                        int(d[0].value),
                        d[1].ci95_half_width,
                        clamp.min,
                        clamp.max,
                    )
                    parts[r] = (mean, n[1])
            found = parts[r]
            return None if found is None else found[0]

        chosen = self._choose(qc, resolution, value_at)
        if value_at(chosen) is None:
            raise ResolutionUnavailable(
                f"{qc.id!r} cannot release {chosen!r} now; choose 'today'", resolution=chosen
            )
        found = parts[chosen]
        assert found is not None
        mean, noisy = found
        answer = self._daily_answer(qc, chosen, mean, noisy.start, noisy.end, t_end)
        answer |= {
            "value": round(mean.value, 2),
            "ci95": [round(mean.low, 2), round(mean.high, 2)],
            "suppressed": False,
            **completeness(row, self.partitions),
            "mechanism": "ratio_of_daily_structures",
            "numerator": numerator.id,
            "denominator": denominator.id,
            "interval": (
                "95% or more: the extreme ratios over the numerator's and the denominator's "
                "97.5% intervals (union bound), clamped to the measure's clamp"
            ),
            "daily_epsilon": {
                "epsilon": "0",
                "day_start": _iso(day_start),
                "paid_by_ledger_entry": [p["ledger_entry"] for p in payments],
            },
        }
        version = f"day:{day_start}:{resolution}:{t_end}"
        return self._commit(qc, version, answer, day_start, cost_micro=0)

    def history(self, class_id: str, limit: int) -> list[dict[str, Any]]:
        """Released answers of ``class_id``, oldest first (reading them spends nothing)."""
        qc = self.query_class(class_id)
        entries = self.ledger.entries(limit=limit, class_id=qc.id)
        return [
            {**e.answer, **split_version(e.data_version), "ledger_entry": e.id}
            for e in reversed(entries)
            if "value" in e.answer  # a continual horizon's payment is not a release
        ]

    def _check_window(self, qc: QueryClass, window_start: int) -> None:
        last, length = self.due(qc), self.window_length(qc)
        if window_start % length:
            raise InvalidParameters(
                f"window_start {window_start} is not aligned to the {length} s windows of "
                f"{qc.id}; use a multiple of {length}, e.g. {last}"
            )
        if window_start > last:
            raise InvalidParameters(
                f"window_start {window_start} is not closed yet; the last closed window "
                f"starts at {last}"
            )
        oldest = last - length * (self.history_windows - 1)
        if window_start < oldest:
            raise InvalidParameters(
                f"window_start {window_start} is older than the {self.history_windows} windows "
                f"the API releases; the oldest is {oldest}"
            )

    def _commit(
        self,
        qc: QueryClass,
        data_version: str,
        answer: dict[str, Any],
        data_start: int,
        cost_micro: int | None = None,
    ) -> dict[str, Any]:
        """Commit ``answer`` (cost: the class's, unless given) in the budget period of the
        UTC day of the data it reads (``data_start``): a subject's day is charged for every
        release that reads it, whenever the release is made."""
        product = f"{qc.domain}.{qc.product}"
        total = self.product_total(qc.domain, qc.product)
        budget = self.class_budget(qc)
        period = period_of(datetime.fromtimestamp(data_start, tz=UTC))
        check_finite(qc, answer)
        try:
            commit = self.ledger.commit_release(
                qc.id,
                period,
                self.ledger_key(qc, data_version),
                qc.cost_micro if cost_micro is None else cost_micro,
                budget,
                answer,
                product=product,
                product_budget_micro=total,
            )
        except BudgetExhausted as exc:
            view = budget_view(qc, period, int(exc.extra.get("spent_micro", 0)), budget)
            resets = datetime.fromisoformat(view["resets_at"]).timestamp()
            exc.extra.update(
                budget=view,
                epsilon_remaining=view["epsilon_remaining"],
                resets_at=view["resets_at"],
                retry_after_seconds=max(1, math.ceil(resets - self.clock())),
            )
            raise
        self.committed.committed(commit.entry)  # its transaction is over: committed
        return response_of(qc, commit, period, budget)

    def product_of(self, qc: QueryClass) -> DataProduct:
        """The contract of ``qc``'s data product (checked when the service was built)."""
        product = self.contracts[qc.domain].product(qc.product)
        assert product is not None  # check_against_contracts ran when the service was built
        return product


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
                0 if r.get("distinct_subjects") is None else exact_value(self.qc, r) for r in rows
            ]
        return out


def day_of(t_end: int) -> int:
    """Start of the UTC day the window ending at ``t_end`` belongs to."""
    return (t_end - 1) // DAY_SECONDS * DAY_SECONDS


def privacy_unit_of(qc: QueryClass) -> str:
    """What ``qc``'s epsilon protects: ``subject_day`` for daily classes and event classes
    over a whole UTC day (their window is the privacy period), else the declared unit."""
    if qc.release == "daily" or qc.window == "1d":
        return "subject_day"
    return qc.privacy_unit


def _stream_of(qc: QueryClass, resolution: str) -> str:
    """The window-row stream a daily ``qc`` reads at ``resolution``."""
    if qc.aggregate == "count_distinct_subjects":
        return NEW_HOUR if resolution == "1h" else NEW_PERIOD
    return "events" if qc.aggregate == "count_records" else "sum"


def _stream_resolutions(qc: QueryClass, stream: str) -> list[str]:
    """The resolutions of ``qc`` read from ``stream`` (as that stream's structure names
    them: the hour stream's windows are hours)."""
    if stream == NEW_HOUR:
        return ["window"]
    return [r for r in qc.answered_resolutions if _stream_of(qc, r) == stream]


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
                self._values[int(row["window_start"])] = self._exact(row)
        return self._values.get(start, 0)

    def _exact(self, row: dict[str, Any]) -> int:
        if row.get("distinct_subjects") is None:
            return 0
        if self.stream in (NEW_HOUR, NEW_PERIOD):
            return int(row.get(self.stream) or 0)
        return exact_value(self.qc, row)


def event_query(qc: QueryClass, product: DataProduct) -> EventQuery:
    """The event-level query of ``qc`` over its product's contract (each subject's records
    bounded by the class's ``max_records_per_subject``, else the contract's per-day bound)."""
    return EventQuery.for_product(
        product,
        qc.aggregate,
        max_records_per_subject=qc.max_records_per_subject
        or product.contribution.max_records_per_period,
        epsilon=qc.epsilon_per_release,
        group_by=qc.group_by,
        measure=qc.measure,
        alpha=qc.quantile,
        candidates=qc.candidates or (),
    )


def continual_accuracy(qc: QueryClass, sensitivity: int) -> float:
    """The 95% half-width of a running total of ``qc`` over a whole tree path (its widest);
    NonFiniteAccuracy when it is not finite."""
    assert qc.horizon_windows is not None  # validated with the class
    return _tree_accuracy(qc.horizon_windows, qc.epsilon_per_release, sensitivity)


@cache
def _tree_accuracy(horizon: int, epsilon: Decimal, sensitivity: int) -> float:
    scale = tree_scale(horizon, epsilon, sensitivity)
    return finite_accuracy(
        ci95_half_width(scale, levels(horizon)),
        f"binary tree at epsilon {epsilon}, sensitivity {sensitivity}",
    )


def completeness(row: dict[str, Any], partitions: int) -> dict[str, Any]:
    """Whether a window row is complete: every partition's event-time watermark had passed
    the window's end plus grace when it closed, and no late event arrived since. Otherwise
    the answer is ``partial``, with the share of partitions that were complete (rows of a
    processor that did not report it count as incomplete) and the late events counted."""
    total = int(row.get("partitions") or partitions)
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
        return int(row["distinct_subjects"])
    if qc.aggregate == "count_records":
        return int(row["events"])
    assert qc.measure is not None
    return round(float(row[sum_feature(qc.measure)] or 0.0))


DEFINITION_SEPARATOR = "|def="


def split_version(key: str) -> dict[str, str | None]:
    """A ledger key as ``data_version`` and ``definition`` (None: an entry made before
    answers were keyed on their class definition)."""
    version, _, definition = key.partition(DEFINITION_SEPARATOR)
    return {"data_version": version, "definition": definition or None}


def check_finite(qc: QueryClass, answer: dict[str, Any]) -> None:
    """Refuse (before the commit) an answer whose interval is not finite."""
    intervals = [answer.get("ci95")] + [g.get("ci95") for g in answer.get("groups") or []]
    widths = [w for ci in intervals if ci is not None for w in ci]
    if answer.get("rank_ci95_half_width") is not None:
        widths.append(answer["rank_ci95_half_width"])
    if not all(isinstance(w, int | float) and math.isfinite(w) for w in widths):
        raise MechanismRefused(
            f"class {qc.id!r}: the release has no finite 95% interval; lower epsilon_per_release"
        )


def response_of(
    qc: QueryClass, commit: Commit, period: str | None = None, budget_micro: int | None = None
) -> dict[str, Any]:
    """The HTTP body of a committed (or reused) release; ``commit.spent_micro`` is the
    class's spend in ``period`` (default: the entry's own period) of ``budget_micro``
    (default: the class's declared budget)."""
    entry = commit.entry
    return {
        "class_id": qc.id,
        "aggregate": qc.aggregate,
        **entry.answer,
        **split_version(entry.data_version),
        "reused": commit.reused,
        "epsilon_charged": "0" if commit.reused else str(from_micro(entry.cost_micro)),
        "ledger_entry": entry.id,
        "budget": budget_view(qc, period or entry.period, commit.spent_micro, budget_micro),
    }


def budget_view(
    qc: QueryClass, period: str, spent_micro: int, budget_micro: int | None = None
) -> dict[str, Any]:
    """Spent, remaining and reset time of ``qc``'s budget (``budget_micro``, default its
    declared one) in ``period``."""
    budget = qc.budget_micro if budget_micro is None else budget_micro
    resets = datetime.fromisoformat(period).replace(tzinfo=UTC) + timedelta(days=1)
    return {
        "period": period,
        "epsilon_spent": str(from_micro(spent_micro)),
        "epsilon_remaining": str(from_micro(max(budget - spent_micro, 0))),
        "epsilon_budget": str(from_micro(budget)),
        "resets_at": resets.isoformat(),
    }


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
