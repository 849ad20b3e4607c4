"""Event-level classes: a user-level bounded polars plan over a domain's pseudonymised
events, then OpenDP noise (``event_aggregates``); the noisy answer is the ledger row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dashboards_api.budget import from_micro
from dashboards_api.errors import NoDataYet
from dashboards_api.event_aggregates import EventQuery, EventRelease, mechanisms_for
from dashboards_api.event_aggregates import release as release_events
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases.body import ReleaseBody
from dashboards_api.releases.commit import Sealed
from domains.contract import DataProduct

if TYPE_CHECKING:
    from dashboards_api.releases.service import ReleaseService


@dataclass(frozen=True)
class EventLevelRelease:
    """One release per event window (``qc.window``) of a class over the product's events."""

    host: ReleaseService

    def check(self, qc: QueryClass) -> None:
        """NonFiniteAccuracy when the class's mechanisms have no finite accuracy."""
        mechanisms_for(event_query(qc, self.host.product_of(qc)))

    def data_version(self, qc: QueryClass, end: int) -> str:
        """The version a release of the event window starting at ``end`` is stored as."""
        return f"events-{qc.window}:{end}"

    def release(self, qc: QueryClass, window_start: int | None) -> ReleaseBody:
        """The committed answer for ``window_start`` (default: the newest settled window)."""
        host = self.host
        start = host.due(qc) if window_start is None else window_start
        end = start + host.window_length(qc)
        source = host.events.get(qc.domain)
        if source is None:
            raise NoDataYet(f"no event store configured for domain {qc.domain!r}")
        query = event_query(qc, host.product_of(qc))
        frame = source.exact(
            qc.product,
            query,
            datetime.fromtimestamp(start, tz=UTC),
            datetime.fromtimestamp(end, tz=UTC),
        )
        released_at = datetime.fromtimestamp(host.clock(), tz=UTC).isoformat()

        def answer(noisy: EventRelease) -> dict[str, Any]:
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
            out: dict[str, Any] = {
                "value": None if qc.group_by else groups[0]["value"],
                "ci95": None if qc.group_by else groups[0]["ci95"],
                "suppressed": any(g["suppressed"] for g in groups),
                "suppress_below": qc.suppress_below,
                "window": {"start": _iso(start), "end": _iso(end)},
                "mechanism": qc.noise,
                "max_records_per_subject": qc.max_records_per_subject,
                "epsilon": from_micro(qc.cost_micro),
                "released_at": released_at,
            }
            if qc.group_by:
                out |= {"group_by": qc.group_by, "groups": groups}
            if noisy.ci95_unit == "rank":
                # The exponential mechanism bounds the chosen candidate's rank error, not
                # its value.
                out["rank_ci95_half_width"] = noisy.groups[0].ci95_half_width
            return out

        sealed = Sealed(lambda: release_events(query, frame, qc.suppress_below)).map(answer)
        return host.commit_answer(qc, self.data_version(qc, start), start, sealed)


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


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
