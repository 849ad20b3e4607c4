"""The release path: read bounded aggregates, draw noise, commit to the ledger, answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from dashboards_api.budget import from_micro
from dashboards_api.errors import NoDataYet, UnknownQueryClass
from dashboards_api.ledger import Commit, Ledger, period_of
from dashboards_api.mechanisms import discrete_laplace_count
from dashboards_api.query_classes import QueryClass
from dashboards_api.sensitivity import sensitivity
from domains.contract import DataProduct, DomainContract
from feature_repo.definitions import CONTRIBUTION_BOUND, sum_feature


class WindowSource(Protocol):
    """Where bounded window aggregates come from (a domain's Feast store)."""

    def window_stats(
        self, product: str, window_starts: list[int], partitions: int = 1
    ) -> list[dict[str, Any]]:
        """Aggregates of the given windows summed over the ingest partitions.

        Windows not yet reported by every partition have None values.
        """
        ...


@dataclass(frozen=True)
class ReleaseService:
    """Answers registered query classes through the ledger."""

    classes: dict[str, QueryClass]
    sources: dict[str, WindowSource]
    ledger: Ledger
    window_seconds: int
    grace_seconds: int
    lookback_windows: int
    contracts: dict[str, DomainContract]
    partitions: int = 1
    clock: Callable[[], float] = time.time

    def query_class(self, class_id: str) -> QueryClass:
        """The registered class, or UnknownQueryClass naming the known ones."""
        qc = self.classes.get(class_id)
        if qc is None:
            known = ", ".join(sorted(self.classes)) or "none"
            raise UnknownQueryClass(f"no query class {class_id!r}; registered: {known}")
        return qc

    def budget(self, qc: QueryClass) -> dict[str, Any]:
        """Budget state of ``qc`` in the current period."""
        now = datetime.fromtimestamp(self.clock(), tz=UTC)
        period = period_of(now)
        spent = self.ledger.spent(qc.id, period)
        return budget_view(qc, period, spent)

    def release(self, class_id: str) -> dict[str, Any]:
        """The DP answer for the last closed window of ``class_id``."""
        qc = self.query_class(class_id)
        source = self.sources[qc.domain]
        now = self.clock()
        latest = int(now) - self.grace_seconds
        latest -= latest % self.window_seconds
        candidates = [latest - self.window_seconds * (i + 1) for i in range(self.lookback_windows)]
        rows = source.window_stats(qc.product, candidates, self.partitions)
        row = next((r for r in rows if r.get("distinct_subjects") is not None), None)
        if row is None:
            raise NoDataYet(
                f"no closed window of {qc.domain}.{qc.product} in the last "
                f"{self.lookback_windows} windows; is the stream processor running?",
                retry_after_seconds=self.window_seconds,
            )
        window_start = int(row["window_start"])
        bound = row.get(CONTRIBUTION_BOUND)
        sens = sensitivity(qc, self.product_of(qc), bound)
        mechanism = discrete_laplace_count(qc.epsilon_per_release, sens)
        noisy = mechanism.release(exact_value(qc, row))
        answer = {
            "value": noisy.value,
            "ci95": [noisy.value - noisy.ci95_half_width, noisy.value + noisy.ci95_half_width],
            "window": {
                "start": _iso(window_start),
                "end": _iso(window_start + self.window_seconds),
            },
            "mechanism": qc.mechanism,
            "sensitivity": sens,
            "contribution_bound": bound,
            "epsilon": from_micro(qc.cost_micro),
            "released_at": datetime.fromtimestamp(now, tz=UTC).isoformat(),
        }
        period = period_of(datetime.fromtimestamp(now, tz=UTC))
        commit = self.ledger.commit_release(
            qc.id, period, f"window:{window_start}", qc.cost_micro, qc.budget_micro, answer
        )
        return response_of(qc, commit)

    def product_of(self, qc: QueryClass) -> DataProduct:
        """The contract of ``qc``'s data product (checked when the service was built)."""
        product = self.contracts[qc.domain].product(qc.product)
        assert product is not None  # check_against_contracts ran when the service was built
        return product


def exact_value(qc: QueryClass, row: dict[str, Any]) -> int:
    """The bounded, exact window statistic ``qc`` releases (an integer)."""
    if qc.aggregate == "count_distinct_subjects":
        return int(row["distinct_subjects"])
    if qc.aggregate == "count_records":
        return int(row["events"])
    assert qc.measure is not None
    return round(float(row[sum_feature(qc.measure)] or 0.0))


def response_of(qc: QueryClass, commit: Commit) -> dict[str, Any]:
    """The HTTP body of a committed (or reused) release."""
    entry = commit.entry
    return {
        "class_id": qc.id,
        "aggregate": qc.aggregate,
        **entry.answer,
        "data_version": entry.data_version,
        "reused": commit.reused,
        "epsilon_charged": "0" if commit.reused else str(from_micro(entry.cost_micro)),
        "ledger_entry": entry.id,
        "budget": budget_view(qc, entry.period, commit.spent_micro),
    }


def budget_view(qc: QueryClass, period: str, spent_micro: int) -> dict[str, Any]:
    """Spent, remaining and reset time of ``qc``'s budget in ``period``."""
    resets = datetime.fromisoformat(period).replace(tzinfo=UTC) + timedelta(days=1)
    return {
        "period": period,
        "epsilon_spent": str(from_micro(spent_micro)),
        "epsilon_remaining": str(from_micro(qc.budget_micro - spent_micro)),
        "epsilon_budget": str(from_micro(qc.budget_micro)),
        "resets_at": resets.isoformat(),
    }


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
