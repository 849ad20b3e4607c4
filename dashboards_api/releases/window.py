"""Window classes: one noisy value per closed stream window, at the class's full cost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dashboards_api.budget import from_micro
from dashboards_api.mechanisms import NoisyCount, discrete_laplace_count
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases.body import ReleaseBody
from dashboards_api.releases.commit import Sealed
from dashboards_api.releases.sources import completeness, exact_value
from dashboards_api.sensitivity import sensitivity
from feature_repo.names import CONTRIBUTION_BOUND, WINDOW_KEY

if TYPE_CHECKING:
    from dashboards_api.releases.service import ReleaseService


@dataclass(frozen=True)
class WindowRelease:
    """Discrete Laplace on one window's bounded statistic; the noisy answer is the ledger
    row, drawn inside the commit."""

    host: ReleaseService

    def check(self, qc: QueryClass) -> None:
        """NonFiniteAccuracy when the mechanism at the smallest sensitivity (1) has none."""
        discrete_laplace_count(qc.epsilon_per_release, 1)

    def data_version(self, qc: QueryClass, end: int) -> str:
        """The version a release of the window starting at ``end`` is stored as."""
        return f"window:{end}"

    def release(self, qc: QueryClass, window_start: int | None) -> ReleaseBody:
        """The committed answer for ``window_start`` (default: the newest complete window)."""
        host = self.host
        row = host.newest_row(qc, window_start)
        start = int(row[WINDOW_KEY])
        bound = row.get(CONTRIBUTION_BOUND)
        host.check_row_cap(qc, row)
        sens = sensitivity(qc, host.product_of(qc), bound)
        mechanism = discrete_laplace_count(qc.epsilon_per_release, sens)
        exact = exact_value(qc, row)
        fields = {
            "suppress_below": qc.suppress_below,
            "window": {"start": _iso(start), "end": _iso(start + host.window_seconds)},
            **completeness(row, host.partitions),
            "mechanism": qc.noise,
            "sensitivity": sens,
            "contribution_bound": bound,
            "epsilon": from_micro(qc.cost_micro),
            "released_at": datetime.fromtimestamp(host.clock(), tz=UTC).isoformat(),
        }

        def answer(noisy: NoisyCount) -> dict[str, Any]:
            suppressed = qc.suppress_below is not None and noisy.value < qc.suppress_below
            return {
                "value": None if suppressed else noisy.value,
                "ci95": None
                if suppressed
                else [noisy.value - noisy.ci95_half_width, noisy.value + noisy.ci95_half_width],
                "suppressed": suppressed,
                **fields,
            }

        sealed = Sealed(lambda: mechanism.release(exact)).map(answer)
        return host.commit_answer(qc, self.data_version(qc, start), start, sealed)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
