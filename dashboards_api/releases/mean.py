"""A daily mean: the composition of two paid daily structures (its numerator's sum over its
denominator's count), post-processing at cost 0."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from dashboards_api import daily
from dashboards_api.errors import ResolutionUnavailable
from dashboards_api.hierarchy import NoisyValue
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases.body import ReleaseBody
from dashboards_api.releases.commit import Sealed
from dashboards_api.releases.sources import completeness, day_of

if TYPE_CHECKING:
    from dashboards_api.releases.daily import DailyRelease


@dataclass(frozen=True)
class MeanRelease:
    """Releases of a daily class with ``derived_mean``, through its two parts' days."""

    daily: DailyRelease

    def release(self, qc: QueryClass, window_start: int | None, resolution: str) -> ReleaseBody:
        """Its numerator's value over its denominator's at the same resolution and window
        end (both days paid first), clamped to the measure's clamp, with a conservative
        interval (``daily.ratio``)."""
        strategy = self.daily
        host = strategy.host
        numerator, denominator = strategy.mean_parts(qc)
        t_end, row = strategy.end_and_row(numerator, window_start)
        strategy.check_row_bounds(numerator, row)
        day_start = day_of(t_end)
        paid = [strategy.pay_day(part, day_start, t_end) for part in (numerator, denominator)]
        (n_payment, n_values), (d_payment, d_values) = paid
        assert qc.measure is not None
        clamp = host.product_of(qc).clamp_of(qc.measure)
        parts: dict[str, tuple[daily.Bounded, NoisyValue] | None] = {}

        def value_at(r: str) -> daily.Bounded | None:
            if r not in parts:
                n, d = n_values.at(r), d_values.at(r)
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

        chosen = strategy.choose(qc, resolution, value_at)
        if value_at(chosen) is None:
            raise ResolutionUnavailable(
                f"{qc.id!r} cannot release {chosen!r} now; choose 'today'", resolution=chosen
            )
        found = parts[chosen]
        assert found is not None
        mean, noisy = found
        answer = strategy.answer_fields(qc, chosen, mean, noisy.start, noisy.end, t_end)
        answer |= {
            "value": round(mean.value, 2),
            "ci95": [round(mean.low, 2), round(mean.high, 2)],
            "suppressed": False,
            **completeness(row, host.partitions),
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
                "paid_by_ledger_entry": [n_payment.id, d_payment.id],
            },
        }
        version = f"day:{day_start}:{resolution}:{t_end}"
        return host.commit_answer(qc, version, day_start, Sealed(lambda: answer), cost_micro=0)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
