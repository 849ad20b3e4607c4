"""Post-processing of a daily class's values: public clamps, the mean of two paid classes,
the automatic resolution and how long a class's budget lasts.

Everything here reads released (noisy) values and public facts only (contract clamps, the
ledger's spend), so it costs no privacy budget. The release path that pays for and draws the
values is ``releases.ReleaseService``; the structure is ``hierarchy.DailyHierarchy``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dashboards_api.hierarchy import DAY_SECONDS

TOO_NOISY_RATIO = 0.5
"""A value whose 95% half-width exceeds this share of its magnitude is flagged ``too_noisy``
(and is what the automatic resolution avoids when a class declares no accuracy)."""

MEAN_WIDENING = math.log(40) / math.log(20)
"""Widening of a 95% half-width to a 97.5% one: exact for one (discrete) Laplace node, whose
two-sided quantile grows like ``ln(1 / alpha)``, and conservative for a sum of several nodes,
whose tails are lighter. A mean's interval holds its numerator's and its denominator's
97.5% intervals together, so it covers with probability at least 95% (union bound)."""


@dataclass(frozen=True)
class Bounded:
    """A value and its 95% interval after clamping to public bounds (post-processing)."""

    value: float
    low: float
    high: float
    half_width: float

    @property
    def too_noisy(self) -> bool:
        """The interval's half-width is above half the value's magnitude."""
        return self.half_width > abs(self.value) * TOO_NOISY_RATIO

    def relative_error(self) -> float:
        """95% half-width / |value| (inf at value 0 with any noise)."""
        if self.value == 0:
            return 0.0 if self.half_width == 0 else math.inf
        return self.half_width / abs(self.value)


def clamp(value: int, half_width: int, low: float | None, high: float | None) -> Bounded:
    """``value ± half_width`` clamped to the public ``[low, high]`` (None: unbounded)."""
    lo, hi = float(value - half_width), float(value + half_width)
    v = float(value)
    if low is not None:
        v, lo, hi = max(v, low), max(lo, low), max(hi, low)
    if high is not None:
        v, lo, hi = min(v, high), min(lo, high), min(hi, high)
    return Bounded(v, lo, hi, float(half_width))


def ratio(
    numerator: int,
    numerator_half_width: int,
    denominator: int,
    denominator_half_width: int,
    low: float,
    high: float,
) -> Bounded:
    """The mean ``numerator / denominator`` clamped to ``[low, high]`` and its conservative
    95% interval (``MEAN_WIDENING``): the extreme ratios over the numerator's and the
    denominator's 97.5% intervals, the denominator's kept >= 1 (a count); when the
    denominator's interval reaches 0 the mean could be anything in the public range."""
    dh = denominator_half_width * MEAN_WIDENING
    nh = numerator_half_width * MEAN_WIDENING
    value = numerator / denominator if denominator > 0 else (low + high) / 2
    value = min(max(value, low), high)
    if denominator - dh < 1:
        return Bounded(value, low, high, (high - low) / 2)
    candidates = [
        n / d
        for n in (numerator - nh, numerator + nh)
        for d in (denominator - dh, denominator + dh)
    ]
    lo = min(max(min(candidates), low), high)
    hi = min(max(*candidates, low), high)
    return Bounded(value, lo, hi, max(hi - value, value - lo))


def pick_auto(
    resolutions: tuple[str, ...],
    value_at: Callable[[str], Bounded | None],
    relative: float,
) -> str | None:
    """The finest resolution whose value's relative 95% half-width is at most ``relative``,
    else the coarsest available one (``value_at`` None: not available now)."""
    last = None
    for resolution in resolutions:
        bounded = value_at(resolution)
        if bounded is None:
            continue
        if bounded.relative_error() <= relative:
            return resolution
        last = resolution
    return last


def budget_lasts_until(now: float, daily: bool, spent_micro: int, budget_micro: int) -> str:
    """When a class's daily budget runs out at its current cadence (ISO, UTC).

    A daily class pays once for the whole day: its budget lasts until the day's end whatever
    the cadence. Any other class spends per release: at its spend per second so far today
    its remaining budget runs out at ``now + remaining / rate``, or never before the day's
    end (nothing spent yet, or enough left), and now when nothing is left."""
    day_end = (math.floor(now) // DAY_SECONDS + 1) * DAY_SECONDS
    until = float(day_end)
    if not daily and spent_micro > 0:
        remaining = max(budget_micro - spent_micro, 0)
        elapsed = max(now - (day_end - DAY_SECONDS), 1.0)
        until = min(until, now + remaining * elapsed / spent_micro)
    return datetime.fromtimestamp(until, tz=UTC).isoformat()


def span(start: int, end: int) -> dict[str, Any]:
    """A span as ISO start and end (UTC)."""
    return {
        "start": datetime.fromtimestamp(start, tz=UTC).isoformat(),
        "end": datetime.fromtimestamp(end, tz=UTC).isoformat(),
    }
