"""The release service: a registered class's answer through its strategy and the ledger.

Which class releases how lives in a strategy module (``window``, ``running``, ``daily``
with ``mean``, ``events``); this module keeps what they share: the class registry and
budgets, answer reuse, the store's newest row and its bounds checks, and the one way a
strategy commits (:meth:`ReleaseService.commit_answer`, :meth:`ReleaseService.pay`, both
through ``commit.commit_then_reveal``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from dashboards_api import daily
from dashboards_api.budget import from_micro
from dashboards_api.cache import CommittedReleases
from dashboards_api.errors import (
    BudgetExhausted,
    InvalidParameters,
    MechanismRefused,
    NoDataYet,
    PolicyLimitExceeded,
    UnknownQueryClass,
    WindowNotFound,
)
from dashboards_api.ledger import Commit, Ledger, LedgerEntry, period_of
from dashboards_api.mechanisms import NonFiniteAccuracy
from dashboards_api.policy import PolicyCell
from dashboards_api.query_classes import EVENT_WINDOWS, ProductBudget, QueryClass, privacy_unit_of
from dashboards_api.releases.body import (
    DEFINITION_SEPARATOR,
    ReleaseBody,
    UserLevel,
    budget_view,
    split_version,
)
from dashboards_api.releases.commit import Sealed, Spend, commit_then_reveal
from dashboards_api.releases.daily import AUTO, DailyRelease
from dashboards_api.releases.events import EventLevelRelease
from dashboards_api.releases.running import RunningRelease
from dashboards_api.releases.sources import EventSource, WindowSource
from dashboards_api.releases.window import WindowRelease
from domains.contract import DataProduct, DomainContract
from feature_repo.names import DISTINCT_SUBJECTS, sum_cap_feature

T = TypeVar("T")


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
    # Releases this replica knows are committed, and each class's spend (see cache.py).
    committed: CommittedReleases = field(init=False, repr=False)
    # The strategies, one per kind of class (they share this service's state).
    window: WindowRelease = field(init=False, repr=False)
    running: RunningRelease = field(init=False, repr=False)
    daily: DailyRelease = field(init=False, repr=False)
    event_level: EventLevelRelease = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Own the dict: domain owners' changes must not leak into a caller's (cached) one.
        object.__setattr__(self, "classes", dict(self.classes))
        object.__setattr__(self, "committed", CommittedReleases(self.ledger))
        object.__setattr__(self, "window", WindowRelease(self))
        object.__setattr__(self, "running", RunningRelease(self))
        object.__setattr__(self, "daily", DailyRelease(self))
        object.__setattr__(self, "event_level", EventLevelRelease(self))

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
        spent = self.committed.spent(qc.id, period)
        return budget_view(qc, period, spent, self.class_budget(qc)).model_dump()

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
                self.daily.check(qc)
            else:
                self._strategy(qc).check(qc)
        except NonFiniteAccuracy as exc:
            raise MechanismRefused(f"class {qc.id!r}: {exc}") from exc

    def _strategy(self, qc: QueryClass) -> WindowRelease | RunningRelease | EventLevelRelease:
        """The strategy that releases a class that is not daily."""
        if qc.source == "events":
            return self.event_level
        if qc.release == "continual":
            return self.running
        return self.window

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
            return self.daily.data_version(qc, end, resolution)
        return self._strategy(qc).data_version(qc, end)

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
        return self.body(qc, Commit(hit, True, spent), hit.period).as_json()

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
                body = self.daily.release(qc, window_start, resolution or AUTO)
            else:
                body = self._strategy(qc).release(qc, window_start)
        except NonFiniteAccuracy as exc:  # raised before anything is committed
            raise MechanismRefused(f"class {qc.id!r}: {exc}") from exc
        return body.as_json()

    def body(self, qc: QueryClass, commit: Commit, period: str) -> ReleaseBody:
        """The body of a committed release of ``qc`` with what a consumer needs to read it
        at user level: the privacy unit, the class's and the product's epsilon per subject
        per UTC day, and when the class's budget runs out at its current cadence (none of it
        is stored with the answer)."""
        total = self.product_total(qc.domain, qc.product)
        budget = self.class_budget(qc)
        unit = privacy_unit_of(qc)
        user_level = UserLevel.model_construct(
            period="UTC day",
            # a subject_window class bounds a subject's loss per window, not per day
            epsilon_per_subject_per_day=None if unit == "subject_window" else from_micro(budget),
            product_total=None if total is None else from_micro(total),
        )
        lasts = daily.budget_lasts_until(
            self.clock(), qc.release == "daily", commit.spent_micro, budget
        )
        return ReleaseBody.of(
            qc,
            commit,
            period,
            budget,
            privacy_unit=unit,
            user_level=user_level,
            budget_lasts_until=lasts,
        )

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

    # ---- what the strategies share ----

    def newest_row(self, qc: QueryClass, window_start: int | None) -> dict[str, Any]:
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
        row = next((r for r in rows if r.get(DISTINCT_SUBJECTS) is not None), None)
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

    def check_row_cap(self, qc: QueryClass, row: dict[str, Any]) -> None:
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

    def spend(
        self, qc: QueryClass, data_version: str, data_start: int, cost_micro: int | None = None
    ) -> Spend:
        """The ledger entry of a release of ``qc`` (cost: the class's, unless given) in the
        budget period of the UTC day of the data it reads (``data_start``): a subject's day
        is charged for every release that reads it, whenever the release is made."""
        return Spend(
            class_id=qc.id,
            period=period_of(datetime.fromtimestamp(data_start, tz=UTC)),
            key=self.ledger_key(qc, data_version),
            cost_micro=qc.cost_micro if cost_micro is None else cost_micro,
            budget_micro=self.class_budget(qc),
            product=f"{qc.domain}.{qc.product}",
            product_budget_micro=self.product_total(qc.domain, qc.product),
        )

    def commit_answer(
        self,
        qc: QueryClass,
        data_version: str,
        data_start: int,
        answer: Sealed[dict[str, Any]],
        cost_micro: int | None = None,
    ) -> ReleaseBody:
        """Commit the sealed ``answer`` (drawn inside the commit) and return the body of the
        committed row (the stored one when another request committed it first)."""
        spend = self.spend(qc, data_version, data_start, cost_micro)
        with self._budget_refusal(qc, spend):
            commit = commit_then_reveal(self.ledger, spend, answer)
        self.committed.committed(commit.entry)  # its transaction is over: committed
        return self.body(qc, commit, spend.period)

    def pay(
        self,
        qc: QueryClass,
        data_version: str,
        data_start: int,
        payment: dict[str, Any],
        sealed: Sealed[T],
        paid: LedgerEntry | None = None,
    ) -> tuple[LedgerEntry, T]:
        """Commit ``payment`` (``paid``: its entry, already known committed), then draw and
        return ``sealed`` with the payment's entry."""
        spend = self.spend(qc, data_version, data_start)
        with self._budget_refusal(qc, spend):
            out = commit_then_reveal(self.ledger, spend, sealed, payment, paid=paid)
        self.committed.committed(out.commit.entry)
        return out.commit.entry, out.value

    @contextmanager
    def _budget_refusal(self, qc: QueryClass, spend: Spend) -> Iterator[None]:
        """A refusal for budget inside carries the class's budget view and when to retry."""
        try:
            yield
        except BudgetExhausted as exc:
            view = budget_view(
                qc, spend.period, int(exc.extra.get("spent_micro", 0)), spend.budget_micro
            )
            resets = datetime.fromisoformat(view.resets_at).timestamp()
            exc.extra.update(
                budget=view.model_dump(),
                epsilon_remaining=view.epsilon_remaining,
                resets_at=view.resets_at,
                retry_after_seconds=max(1, math.ceil(resets - self.clock())),
            )
            raise

    def product_of(self, qc: QueryClass) -> DataProduct:
        """The contract of ``qc``'s data product (checked when the service was built)."""
        product = self.contracts[qc.domain].product(qc.product)
        assert product is not None  # check_against_contracts ran when the service was built
        return product


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
