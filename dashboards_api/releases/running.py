"""Continual classes: running totals over a horizon of windows from one binary tree.

The horizon's epsilon is committed once, before its first total, and only that payment
reveals the tree counter (whose nodes are drawn on demand); every total of the horizon is
then committed at cost 0 before it is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING

from dashboards_api.budget import from_micro
from dashboards_api.continual import (
    BinaryTreeCounter,
    NoisyTotal,
    ci95_half_width,
    levels,
    tree_scale,
)
from dashboards_api.errors import HorizonChanged, NoDataYet, WindowNotFound
from dashboards_api.mechanisms import finite_accuracy
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases.body import ReleaseBody
from dashboards_api.releases.commit import Sealed
from dashboards_api.releases.sources import WindowValues, completeness
from dashboards_api.sensitivity import sensitivity
from feature_repo.names import CONTRIBUTION_BOUND, DISTINCT_SUBJECTS

if TYPE_CHECKING:
    from dashboards_api.releases.service import ReleaseService


@dataclass(frozen=True)
class RunningRelease:
    """The running total of a continual class up to a window (binary tree mechanism)."""

    host: ReleaseService

    def check(self, qc: QueryClass) -> None:
        """NonFiniteAccuracy when the tree at sensitivity 1 has no finite accuracy."""
        continual_accuracy(qc, 1)

    def data_version(self, qc: QueryClass, end: int) -> str:
        """The version the running total up to the window starting at ``end`` is stored as."""
        assert qc.horizon_windows is not None  # validated with the class
        window = self.host.window_seconds
        horizon = end - end % (qc.horizon_windows * window)
        return f"running:{horizon}:{(end - horizon) // window + 1}"

    def release(self, qc: QueryClass, window_start: int | None) -> ReleaseBody:
        """The committed running total up to ``window_start`` (default: the last closed)."""
        assert qc.horizon_windows is not None  # validated with the class
        host = self.host
        end = host.last_closed() if window_start is None else window_start
        span = qc.horizon_windows * host.window_seconds
        horizon = end - end % span
        t = (end - horizon) // host.window_seconds + 1
        source = host.sources[qc.domain]
        row = source.window_stats(qc.product, [end], host.partitions)[0]
        if row.get(DISTINCT_SUBJECTS) is None:
            if window_start is not None:
                raise WindowNotFound(f"window {_iso(end)} of {qc.domain}.{qc.product} has no data")
            raise NoDataYet(
                f"the last closed window of {qc.domain}.{qc.product} has not been reported",
                retry_after_seconds=host.window_seconds,
            )
        bound = row.get(CONTRIBUTION_BOUND)
        host.check_row_cap(qc, row)
        sens = sensitivity(qc, host.product_of(qc), bound)
        paid = {
            "horizon_start": _iso(horizon),
            "horizon_end": _iso(horizon + span),
            "horizon_windows": qc.horizon_windows,
            "epsilon": from_micro(qc.cost_micro),
        }
        continual_accuracy(qc, sens)  # before the horizon is paid for

        def total() -> NoisyTotal:
            """Drawn only once the horizon is paid for (reused when already paid)."""
            assert qc.horizon_windows is not None
            try:
                counter = BinaryTreeCounter(
                    qc.horizon_windows,
                    qc.epsilon_per_release,
                    sens,
                    host.ledger,
                    f"{qc.id}|{horizon}|{host.definition(qc)}",
                )
            except ValueError as exc:
                raise HorizonChanged(
                    f"{exc}; the contribution bound or epsilon of {qc.id!r} changed inside the "
                    f"horizon starting {_iso(horizon)}: running totals resume with the next "
                    "horizon",
                    retry_after_seconds=horizon + span - int(host.clock()),
                ) from exc
            values = WindowValues(source, qc, horizon, host.window_seconds, host.partitions)
            return counter.release(t, values)

        payment, noisy = host.pay(qc, f"horizon:{horizon}", horizon, paid, Sealed(total))
        answer = {
            "value": noisy.value,
            "ci95": [noisy.value - noisy.ci95_half_width, noisy.value + noisy.ci95_half_width],
            "suppressed": False,
            "suppress_below": None,
            "window": {"start": _iso(horizon), "end": _iso(end + host.window_seconds)},
            **completeness(row, host.partitions),  # of the newest window of the total
            "running_total": {"t": t, **paid, "tree_nodes": noisy.nodes},
            # This total is post-processing of the horizon's tree, paid for once at the
            # horizon's first total: it draws on the horizon's epsilon, t of its
            # horizon_windows totals released so far.
            "horizon_epsilon": {
                "epsilon": from_micro(qc.cost_micro),
                "paid_by_ledger_entry": payment.id,
                "totals_released": t,
                "share_drawn": t / qc.horizon_windows,
            },
            "mechanism": "binary_tree_discrete_laplace",
            "privacy_unit": qc.privacy_unit,
            "sensitivity": sens,
            "contribution_bound": bound,
            "epsilon": "0",
            "released_at": datetime.fromtimestamp(host.clock(), tz=UTC).isoformat(),
        }
        version = f"running:{horizon}:{t}"
        return host.commit_answer(qc, version, horizon, Sealed(lambda: answer), cost_micro=0)


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


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
