"""One live release structure per (class, UTC day): every resolution from one daily budget.

A class with ``release: daily`` pays ``epsilon`` once per UTC day and publishes, all day long,
the 10-second (window), 1-minute, 1-hour, "today so far" and sliding "last 24 h" values of one
measure. They all come from one structure: a hierarchy of levels of widths
``[window_seconds, 60, 3600]`` seconds (a width not above, or not a multiple of, the previous
one is dropped), each level a partition of the UTC day into aligned spans. A node is the exact
sum of the windows in its span; it is noised once, when its span is complete, by OpenDP's
discrete Laplace, and kept in the write-once :class:`~dashboards_api.ledger.NodeStore`
(so a value read twice, or by two replicas, is the same). A value is a sum of nodes:

* ``window``, ``1m``, ``1h``: the node of the newest complete span of that width;
* ``today``: the greedy cover of ``[day start, t_end)`` by complete nodes, largest first
  (the hours so far, then the minutes, then the windows);
* ``24h``: the cover of ``[t_end - 86400, t_end)``: today's cover plus the cover of the last
  part of yesterday by yesterday's structure (largest nodes first from its end).

Privacy (the privacy unit is the pseudonymous subject over the UTC day). The processor bounds
what one subject's day can add to the sum of the day's windows by ``sensitivity`` (``Δ``, in
L1: ``sum_w |x_w - x'_w| <= Δ``). Each level partitions the day, so the subject changes the
nodes of one level by at most ``Δ`` in L1. Level ``l`` gets ``epsilon_l`` of the day's
``epsilon`` (the parts add up to it exactly) and discrete Laplace at scale ``Δ / epsilon_l``
on its nodes, which is ``epsilon_l``-DP (pure) for the subject's whole day, checked by
OpenDP's privacy map per level; the levels compose to ``epsilon`` (basic composition). Nodes
are drawn at different times but each gets independent noise at its level's scale, the same
mechanism as drawing each level's vector at once. Every resolution is a sum of nodes:
post-processing, no further cost. ``24h`` also reads yesterday's structure, which
yesterday's spend covers. Windows must be closed (final) when read: a node's value is fixed
when it is first drawn, and a later revision of a window changes nothing already released.

The split (:func:`level_epsilons`): ``epsilon_l`` proportional to the cube root of
``n_l``, the number of level-``l`` nodes the structure's resolutions sum, averaged over the
day's window ends and added over the resolutions (each counted once). That minimises the
sum over the resolutions of their day-averaged noise variance, ``sum_l n_l * 2 (Δ/ε_l)^2``
(Lagrange: ``n_l / ε_l^3`` equal across levels). It depends only on the window length, not
on any data. A day level (version 1, uniform ``levels * Δ / epsilon`` on four levels) is
gone: only ``today`` at the day's last window used it, for a quarter of the budget.

The error of a value is the sum of independent discrete Laplace noises of its levels' scales;
its exact 95% half-width is :func:`mixed_half_width`. See "Daily hierarchy" in
``docs/continual-release.md`` for the allocation, the measured comparison with version 1, the
binary tree and independent per-release noise, and for why pure discrete Laplace (not a zCDP
Gaussian) is the mechanism.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from functools import cache, lru_cache
from typing import Any

import numpy as np
import opendp.prelude as dp

from dashboards_api.continual import (
    PARAMETERS_LEVEL,
    NodeStore,
    check_epsilon,
    check_int,
    ci95_half_width,
    fingerprint,
    noisy_nodes,
)
from dashboards_api.errors import MissingWindow, ResolutionUnavailable
from dashboards_api.mechanisms import CONFIDENCE, vector_laplace

dp.enable_features("contrib")

DAY_SECONDS = 86400
"""The privacy period: one UTC day, in seconds."""

RESOLUTIONS: tuple[str, ...] = ("window", "1m", "1h", "today", "24h")
"""What a daily class can release, finest first (``window`` is the stream window)."""

VERSION = 2
"""The structure a new day gets: levels ``[window, 60, 3600]``, the day's epsilon split over
them by :func:`level_epsilons`. Version 1 (levels up to the day, one scale
``levels * Δ / epsilon``) is kept to finish a day begun under it (see ``DailyHierarchy``)."""

VERSIONS = (1, 2)

_SPAN_WIDTHS = {1: (60, 3600, DAY_SECONDS), 2: (60, 3600)}
_RESOLUTION_WIDTH = {"1m": 60, "1h": 3600}
_EPSILON_QUANTUM = Decimal("1e-9")

Node = tuple[int, int]
"""(level, index): the span ``[day_start + index * w, day_start + (index + 1) * w)``, ``w``
the level's width."""


@dataclass(frozen=True)
class NoisyValue:
    """A released value of ``[start, end)`` (epoch seconds) at ``resolution``.

    ``nodes`` is how many noisy nodes were summed; ``ci95_half_width`` is the exact two-sided
    95% half-width of the sum of their noises (the true value lies in ``value ± half-width``
    with probability at least 0.95).
    """

    value: int
    ci95_half_width: int
    nodes: int
    start: int
    end: int
    resolution: str


def _check_version(version: object) -> int:
    """``version`` if it is a known structure version, else a ValueError."""
    if type(version) is not int or version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    return version


def level_widths(window_seconds: int, version: int = VERSION) -> list[int]:
    """The widths of the hierarchy's levels, finest first, for windows of ``window_seconds``.

    Each width is a multiple of the previous one (so every node is a union of nodes of each
    finer level); version 1 ends with the day.
    """
    window_seconds = check_int("window_seconds", window_seconds, 1)
    if DAY_SECONDS % window_seconds:
        raise ValueError(
            f"window_seconds={window_seconds} does not divide the day ({DAY_SECONDS} s); "
            "choose a window length such as 10, 60 or 300 seconds"
        )
    widths = [window_seconds]
    for width in _SPAN_WIDTHS[_check_version(version)]:
        if width > widths[-1] and width % widths[-1] == 0:
            widths.append(width)
    return widths


def resolutions_of(window_seconds: int) -> tuple[str, ...]:
    """The resolutions a hierarchy of ``window_seconds`` windows can release (finest first):
    ``1m`` / ``1h`` only when they are levels of their own or the window itself."""
    widths = level_widths(window_seconds)
    return tuple(
        r for r in RESOLUTIONS if r not in _RESOLUTION_WIDTH or _RESOLUTION_WIDTH[r] in widths
    )


def _digits(widths: list[int], length: np.ndarray) -> np.ndarray:
    """Per level, the nodes of the greedy cover of a span of ``length`` seconds aligned at a
    level boundary (the day's start, or its end): ``length``'s digits in the mixed radix of
    the widths (rows: levels, finest first)."""
    counts = np.zeros((len(widths), len(length)), dtype=np.int64)
    rest = length.astype(np.int64)
    for level in range(len(widths) - 1, -1, -1):
        counts[level], rest = np.divmod(rest, widths[level])
    return counts


@cache
def _counts_over_day(resolution: str, window_seconds: int, version: int) -> np.ndarray:
    """Per level (rows) and window end of the day (columns), the nodes a value at
    ``resolution`` sums (today's and yesterday's together, as if both days had the same
    structure)."""
    widths = level_widths(window_seconds, version)
    ends = np.arange(window_seconds, DAY_SECONDS + 1, window_seconds, dtype=np.int64)
    if resolution in ("window", "1m", "1h"):
        level = 0 if resolution == "window" else widths.index(_RESOLUTION_WIDTH[resolution])
        counts = np.zeros((len(widths), len(ends)), dtype=np.int64)
        counts[level] = 1
        return counts
    if resolution == "today":
        return _digits(widths, ends)
    if resolution == "24h":
        return _digits(widths, ends) + _digits(widths, DAY_SECONDS - ends)
    raise ValueError(f"unknown resolution {resolution!r}; one of {', '.join(RESOLUTIONS)}")


@cache
def mean_level_counts(window_seconds: int) -> tuple[float, ...]:
    """``n_l`` of :func:`level_epsilons`: per level, the nodes summed by each resolution the
    structure releases, averaged over the day's window ends, added over the resolutions."""
    return tuple(
        float(total)
        for total in sum(
            _counts_over_day(r, window_seconds, VERSION).mean(axis=1)
            for r in resolutions_of(window_seconds)
        )
    )


@cache
def level_epsilons(
    window_seconds: int, epsilon: Decimal, version: int = VERSION
) -> tuple[Decimal, ...]:
    """The day's ``epsilon`` split over the levels, finest first; the parts add up to it
    exactly (each but the coarsest floored to 1e-9, the coarsest takes the rest).

    Version 2: ``epsilon_l`` proportional to ``n_l ** (1/3)`` (``mean_level_counts``), which
    minimises ``sum_l n_l * 2 (Δ / epsilon_l) ** 2``, the day-averaged noise variance summed
    over the resolutions. Version 1: ``epsilon / levels`` each (its nodes were drawn as one
    vector at scale ``levels * Δ / epsilon``, the same thing).
    """
    epsilon = check_epsilon(epsilon)
    widths = level_widths(window_seconds, version)
    if version == 1 or len(widths) == 1:
        weights = [1.0] * len(widths)
    else:
        weights = [n ** (1 / 3) for n in mean_level_counts(window_seconds)]
    total = sum(weights)
    parts = [
        (epsilon * Decimal(w / total)).quantize(_EPSILON_QUANTUM, rounding=ROUND_FLOOR)
        for w in weights[:-1]
    ]
    parts.append(epsilon - sum(parts, Decimal(0)))
    if any(part <= 0 for part in parts):
        raise ValueError(
            f"epsilon={epsilon} is too small to split over {len(widths)} levels; raise it"
        )
    return tuple(parts)


@cache
def level_mechanisms(
    window_seconds: int, epsilon: Decimal, sensitivity: int, version: int = VERSION
) -> tuple[tuple[Any, float], ...]:
    """Per level, finest first, the OpenDP discrete Laplace on i64 node vectors and its scale.

    Version 2: level ``l`` at L1 sensitivity ``Δ`` for ``epsilon_l`` (OpenDP's map checked:
    ``map(Δ) <= epsilon_l``; the parts add up to ``epsilon``). Version 1: one measurement for
    every level, ``map(levels * Δ) <= epsilon`` (the whole node vector at once).
    """
    sensitivity = check_int("sensitivity", sensitivity, 1)
    widths = level_widths(window_seconds, version)
    if version == 1:
        whole = vector_laplace(len(widths) * sensitivity, check_epsilon(epsilon))
        return tuple(whole for _ in widths)
    return tuple(
        vector_laplace(sensitivity, part)
        for part in level_epsilons(window_seconds, epsilon, version)
    )


def level_scales(
    window_seconds: int, epsilon: Decimal, sensitivity: int, version: int = VERSION
) -> tuple[float, ...]:
    """Per level, finest first, the discrete Laplace scale of its nodes: ``Δ / epsilon_l``
    (version 1: ``levels * Δ / epsilon``), or a few ulps more, as OpenDP's map requires."""
    return tuple(
        scale for _, scale in level_mechanisms(window_seconds, epsilon, sensitivity, version)
    )


def _prefix_cover(widths: list[int], length: int) -> list[Node]:
    """Greedy cover of ``[0, length)`` by aligned nodes, largest first from the left."""
    nodes: list[Node] = []
    cursor = 0
    for level in range(len(widths) - 1, -1, -1):
        width = widths[level]
        while cursor % width == 0 and cursor + width <= length:
            nodes.append((level, cursor // width))
            cursor += width
    if cursor != length:  # pragma: no cover - length is a multiple of the window
        raise AssertionError(f"cover stopped at {cursor} of {length}")
    return nodes


def _suffix_cover(widths: list[int], start: int) -> list[Node]:
    """Greedy cover of ``[start, DAY_SECONDS)`` by aligned nodes, largest first from the end."""
    nodes: list[Node] = []
    cursor = DAY_SECONDS
    for level in range(len(widths) - 1, -1, -1):
        width = widths[level]
        while cursor % width == 0 and cursor - width >= start:
            cursor -= width
            nodes.append((level, cursor // width))
    if cursor != start:  # pragma: no cover - start is a multiple of the window
        raise AssertionError(f"cover stopped at {cursor}, not {start}")
    return nodes


def cover_sizes(resolution: str, window_seconds: int, t_in_day: int) -> tuple[int, int]:
    """How many nodes of (today, yesterday) a value at ``resolution`` sums when the newest
    closed window ends ``t_in_day`` seconds into the day."""
    widths = level_widths(window_seconds)
    if resolution in ("window", "1m", "1h"):
        return 1, 0
    if resolution == "today":
        return len(_prefix_cover(widths, t_in_day)), 0
    if resolution == "24h":
        yesterday = 0 if t_in_day == DAY_SECONDS else len(_suffix_cover(widths, t_in_day))
        return len(_prefix_cover(widths, t_in_day)), yesterday
    raise ValueError(f"unknown resolution {resolution!r}; one of {', '.join(RESOLUTIONS)}")


def _terms(scales: tuple[float, ...], counts: np.ndarray) -> tuple[tuple[float, int], ...]:
    """``(scale, count)`` per level with nodes, equal scales merged (a cache-friendly key)."""
    merged: dict[float, int] = {}
    for scale, count in zip(scales, counts.tolist(), strict=True):
        if count:
            merged[scale] = merged.get(scale, 0) + int(count)
    return tuple(sorted(merged.items()))


@cache
def _worst_counts(resolution: str, window_seconds: int) -> tuple[tuple[int, ...], ...]:
    """The per-level node counts over the day that no other count dominates (at least as many
    nodes at every level): the worst time of the day is at one of them, since a half-width
    grows with every count."""
    unique = np.unique(_counts_over_day(resolution, window_seconds, VERSION).T, axis=0)
    keep: list[tuple[int, ...]] = []
    for first in range(0, len(unique), 256):  # chunks keep the comparison array small
        rows = unique[first : first + 256]
        at_least = np.all(unique[None, :, :] >= rows[:, None, :], axis=2)
        more = np.any(unique[None, :, :] > rows[:, None, :], axis=2)
        dominated = np.any(at_least & more, axis=1)
        keep += [tuple(int(c) for c in row) for row in rows[~dominated]]
    return tuple(keep)


def expected_half_width(
    resolution: str,
    window_seconds: int,
    epsilon: Decimal,
    sensitivity: int,
    t_in_day: int | None = None,
) -> int:
    """The 95% half-width of a value at ``resolution`` of a daily class (``epsilon`` for the
    day, contribution bound ``sensitivity`` per subject per day).

    ``t_in_day``: seconds from the day's start to the end of the newest closed window; None
    gives the worst time of the day. For ``24h`` yesterday is assumed to have had the same
    parameters. This is what the planner promises.
    """
    if resolution not in resolutions_of(window_seconds):
        raise ValueError(
            f"resolution {resolution!r} does not apply to {window_seconds}-second windows; "
            f"one of {', '.join(resolutions_of(window_seconds))}"
        )
    scales = level_scales(window_seconds, epsilon, sensitivity)
    if t_in_day is None:
        return max(
            mixed_half_width(_terms(scales, np.asarray(counts)))
            for counts in _worst_counts(resolution, window_seconds)
        )
    t_in_day = check_int("t_in_day", t_in_day, window_seconds)
    if t_in_day > DAY_SECONDS or t_in_day % window_seconds:
        raise ValueError(
            f"t_in_day={t_in_day} must be a multiple of {window_seconds} in "
            f"[{window_seconds}, {DAY_SECONDS}]"
        )
    counts = _counts_over_day(resolution, window_seconds, VERSION)[
        :, t_in_day // window_seconds - 1
    ]
    return mixed_half_width(_terms(scales, counts))


def half_width_profile(
    resolution: str, window_seconds: int, epsilon: Decimal, sensitivity: int, version: int
) -> tuple[int, int]:
    """The 95% half-width of a value at ``resolution`` (mean over the day's window ends,
    worst) for a structure of ``version``: what the docs' comparison tables report."""
    scales = level_scales(window_seconds, epsilon, sensitivity, version)
    counts = _counts_over_day(resolution, window_seconds, version)
    unique, multiplicity = np.unique(counts.T, axis=0, return_counts=True)
    widths = [mixed_half_width(_terms(scales, row)) for row in unique]
    mean = float(np.dot(widths, multiplicity)) / float(multiplicity.sum())
    return round(mean), max(widths)


@lru_cache(maxsize=64)
def _log_characteristic(scale: float, size: int) -> np.ndarray:
    """``log`` of the characteristic function of discrete Laplace(``scale``) on the FFT grid
    of ``size`` points (its non-negative frequencies); real, as the law is symmetric."""
    q = math.exp(-1.0 / scale)
    theta = 2.0 * np.pi * np.arange(size // 2 + 1) / size
    return np.log((1.0 - q) ** 2 / (1.0 - 2.0 * q * np.cos(theta) + q * q))


def _exact_mixed_half_width(terms: tuple[tuple[float, int], ...]) -> int:
    """Smallest integer ``h`` with ``P(|S| <= h) >= CONFIDENCE``, ``S`` the sum of independent
    discrete Laplace noises, ``count`` of each ``scale`` for each ``(scale, count)`` (the pmf
    from the characteristic function by FFT, as ``continual.ci95_half_width``).

    The grid wraps only the mass beyond ``radius``, below 1e-12: ``continual``'s
    ``(32 + 2 n) b`` (``b`` the largest scale, ``n`` the nodes), or Chernoff's at
    ``t = 1 / 2b``, where each noise's moment generating function is below 4/3:
    ``P(|S| > r) <= 2 (4/3)^n e^(-r / 2b) <= 1e-12`` from ``r = (0.6 n + 58) b``.
    """
    nodes = sum(count for _, count in terms)
    largest = max(scale for scale, _ in terms)
    radius = math.ceil(largest * min(32 + 2 * nodes, 0.6 * nodes + 58)) + 1
    size = 1 << max(6, (2 * radius + 1).bit_length())
    log_characteristic = sum(count * _log_characteristic(scale, size) for scale, count in terms)
    pmf = np.fft.irfft(np.exp(log_characteristic), n=size)
    coverage = np.concatenate(([pmf[0]], pmf[0] + 2.0 * np.cumsum(pmf[1 : size // 2])))
    return int(np.searchsorted(coverage, CONFIDENCE))


MIXED_EXACT_MAX_SCALE = 512.0
"""Above this largest scale a mixed sum's half-width is computed at scales shrunk to it and
scaled back up (wider than the exact one by under 0.2%; ``test_hierarchy`` checks it)."""


@cache
def mixed_half_width(terms: tuple[tuple[float, int], ...]) -> int:
    """The 95% half-width of a sum of independent discrete Laplace noises, ``count`` of each
    ``scale`` for each ``(scale, count)`` (the levels of a structure, or a ``24h`` value's two
    days). Above a largest scale of ``MIXED_EXACT_MAX_SCALE`` every scale is shrunk by the
    same factor and the half-width (plus one) scaled back up, as ``continual.ci95_half_width``
    does above 4096 (a value at a new time of day has new counts: this keeps its FFT small).
    """
    terms = tuple((scale, count) for scale, count in terms if count > 0)
    if len({scale for scale, _ in terms}) == 1:
        return int(ci95_half_width(terms[0][0], sum(count for _, count in terms)))
    largest = max(scale for scale, _ in terms)
    if largest <= MIXED_EXACT_MAX_SCALE:
        return _exact_mixed_half_width(terms)
    factor = largest / MIXED_EXACT_MAX_SCALE
    shrunk = tuple((scale / factor, count) for scale, count in terms)
    return math.ceil((_exact_mixed_half_width(shrunk) + 1) * factor)


class DailyHierarchy:
    """The release structure of one class for one UTC day.

    Parameters:
        window_seconds: the stream window length; must divide the day.
        day_start: epoch seconds of the UTC day's start (a multiple of 86400).
        epsilon: the privacy loss, for the subject's whole day, of every value this structure
            ever releases (pure DP); commit it to the ledger once, before the first value.
        sensitivity: ``Δ``, the most one subject's whole day can change the sum of the day's
            window values in L1 (the processor's per-subject, per-day contribution bound).
        store: where node values live (write-once); shared by every replica.
        stream_id: names this (class, day) in the store; a new day is a new stream_id.
        version: the structure to open (default :data:`VERSION`). A stream id whose day began
            under version 1 with the same parameters keeps version 1 to the day's end (its
            nodes were drawn at version 1's scale; the day's spend is the same ``epsilon``).

    ``levels`` are the level widths in seconds; ``epsilons`` each level's part of ``epsilon``
    and ``scales`` its discrete Laplace scale (``Δ / epsilon_l``, version 1:
    ``len(levels) * Δ / epsilon``), each checked by OpenDP's map.
    """

    def __init__(
        self,
        window_seconds: int,
        day_start: int,
        epsilon: Decimal,
        sensitivity: int,
        store: NodeStore,
        stream_id: str,
        version: int = VERSION,
    ) -> None:
        self.window_seconds = check_int("window_seconds", window_seconds, 1)
        level_widths(self.window_seconds)  # validates the window before anything is stored
        self.day_start = check_int("day_start", day_start, 0)
        if self.day_start % DAY_SECONDS:
            raise ValueError(
                f"day_start={day_start} is not the start of a UTC day (a multiple of 86400)"
            )
        self.epsilon = check_epsilon(epsilon)
        self.sensitivity = check_int("sensitivity", sensitivity, 1)
        if not isinstance(stream_id, str) or not stream_id:
            raise ValueError(f"stream_id must be a non-empty string, got {stream_id!r}")
        self.store = store
        self.stream_id = stream_id
        self.version = _check_version(version)
        expected = self._fingerprint(self.version)
        stored = store.put(stream_id, PARAMETERS_LEVEL, 0, expected)
        if stored != expected:
            if self.version == 1 or stored != self._fingerprint(1):
                raise ValueError(
                    f"stream_id {stream_id!r} already holds a daily structure with other "
                    "parameters (window, day, epsilon, sensitivity or structure version); a "
                    "change of parameters takes effect on the next day's structure"
                )
            self.version = 1  # the day began under version 1: finish it at version 1
        self.levels: list[int] = level_widths(self.window_seconds, self.version)
        self.epsilons = level_epsilons(self.window_seconds, self.epsilon, self.version)
        mechanisms = level_mechanisms(
            self.window_seconds, self.epsilon, self.sensitivity, self.version
        )
        self.measurements = tuple(measurement for measurement, _ in mechanisms)
        self.scales = tuple(scale for _, scale in mechanisms)

    def _fingerprint(self, version: int) -> int:
        """A signed 63-bit digest of the structure's parameters at ``version`` (fits a BIGINT
        column); version 2's names each level's epsilon too."""
        text = (
            f"daily-hierarchy-v{version}|{self.window_seconds}|{self.day_start}|"
            f"{self.epsilon.normalize()}|{self.sensitivity}|discrete_laplace"
        )
        if version > 1:
            parts = level_epsilons(self.window_seconds, self.epsilon, version)
            text += "|" + ",".join(str(part.normalize()) for part in parts)
        return fingerprint(text)

    @property
    def day_end(self) -> int:
        """Epoch seconds of the day's end (exclusive)."""
        return self.day_start + DAY_SECONDS

    def span(self, node: Node) -> tuple[int, int]:
        """``[start, end)`` in epoch seconds of ``node``."""
        level, index = node
        width = self.levels[level]
        return self.day_start + index * width, self.day_start + (index + 1) * width

    def _check_t_end(self, t_end: int) -> int:
        """``t_end`` if it ends a window of this day (``day_start < t_end <= day_end``)."""
        t_end = check_int("t_end", t_end, 0)
        if not self.day_start < t_end <= self.day_end or (t_end - self.day_start) % (
            self.window_seconds
        ):
            raise ValueError(
                f"t_end={t_end} is not the end of a {self.window_seconds}-second window of "
                f"the day [{self.day_start}, {self.day_end})"
            )
        return t_end

    def _last_span(self, level: int, t_end: int) -> Node:
        """The newest node of ``level`` that is complete at ``t_end`` (may be index -1: the
        span ends at the day's start, so it belongs to yesterday)."""
        width = self.levels[level]
        return level, (t_end - self.day_start) // width - 1

    def cover(self, resolution: str, t_end: int) -> list[Node]:
        """The nodes of this day whose sum is the value at ``resolution`` for ``t_end``
        (``24h``: only today's part; ``1m``/``1h`` with no complete span today: empty)."""
        t_end = self._check_t_end(t_end)
        if resolution == "window":
            return [self._last_span(0, t_end)]
        if resolution in _RESOLUTION_WIDTH:
            level = self._level_of(resolution)
            node = self._last_span(level, t_end)
            return [node] if node[1] >= 0 else []
        if resolution in ("today", "24h"):
            return _prefix_cover(self.levels, t_end - self.day_start)
        raise ValueError(f"unknown resolution {resolution!r}; one of {', '.join(RESOLUTIONS)}")

    def _level_of(self, resolution: str) -> int:
        """The level whose width is ``resolution``'s, or ResolutionUnavailable."""
        width = _RESOLUTION_WIDTH[resolution]
        if width not in self.levels:
            raise ResolutionUnavailable(
                f"resolution {resolution!r} does not apply to {self.window_seconds}-second "
                f"windows; available: {', '.join(resolutions_of(self.window_seconds))}",
                resolution=resolution,
            )
        return self.levels.index(width)

    def suffix_cover(self, start: int) -> list[Node]:
        """The nodes covering ``[start, day_end)`` (a ``24h`` value's part in this day)."""
        offset = start - self.day_start
        if not 0 <= offset <= DAY_SECONDS or offset % self.window_seconds:
            raise ValueError(f"start={start} is not a window start of this day")
        return _suffix_cover(self.levels, offset) if offset < DAY_SECONDS else []

    def node_values(
        self, nodes: list[Node], windows: Callable[[int], int | None]
    ) -> dict[Node, int]:
        """The stored values of ``nodes``; the ones never drawn are summed from ``windows``
        (complete spans only, the caller's check) and noised in one OpenDP call per level (at
        the level's scale), then stored write-once (a value another replica stored first
        wins)."""
        exact = _ExactSums(self, windows)
        found: dict[Node, int] = {}
        for level, measurement in enumerate(self.measurements):
            mine = [node for node in nodes if node[0] == level]
            if mine:
                found |= noisy_nodes(self.store, self.stream_id, measurement, mine, exact.node)
        return found

    def terms(self, nodes: list[Node]) -> list[tuple[float, int]]:
        """``(scale, count)`` of ``nodes`` per level: the noise their sum carries."""
        counts = Counter(level for level, _ in nodes)
        return [(self.scales[level], count) for level, count in sorted(counts.items())]

    def value(
        self,
        resolution: str,
        t_end: int,
        windows: Callable[[int], int | None],
        previous: DailyHierarchy | None = None,
    ) -> NoisyValue:
        """The noisy value at ``resolution`` when the newest closed window ends at ``t_end``.

        ``windows(start)`` is the exact bounded value of the closed window starting at
        ``start`` (None: missing, raises MissingWindow); it is read only for nodes never drawn
        before. ``previous`` is yesterday's structure: needed by ``24h`` (before the day ends)
        and by ``1m``/``1h`` before the day's first complete minute/hour.
        """
        t_end = self._check_t_end(t_end)
        today = self.cover(resolution, t_end)
        earlier: list[Node] = []
        if resolution == "24h" and t_end < self.day_end:
            earlier = self._yesterday(previous, resolution).suffix_cover(t_end - DAY_SECONDS)
        elif resolution in _RESOLUTION_WIDTH and not today:
            yesterday = self._yesterday(previous, resolution)
            level = yesterday._level_of(resolution)
            earlier = [yesterday._last_span(level, yesterday.day_end)]
        found = self.node_values(today, windows)
        total = sum(found[node] for node in today)
        terms = self.terms(today)
        if earlier:
            assert previous is not None
            before = previous.node_values(earlier, windows)
            total += sum(before[node] for node in earlier)
            terms += previous.terms(earlier)
        merged: Counter[float] = Counter()
        for scale, count in terms:
            merged[scale] += count
        spans = [self.span(node) for node in today]
        if earlier:
            assert previous is not None
            spans += [previous.span(node) for node in earlier]
        return NoisyValue(
            value=int(total),
            ci95_half_width=mixed_half_width(tuple(sorted(merged.items()))),
            nodes=len(today) + len(earlier),
            start=min(start for start, _ in spans),
            end=max(end for _, end in spans),
            resolution=resolution,
        )

    def _yesterday(self, previous: DailyHierarchy | None, resolution: str) -> DailyHierarchy:
        """``previous`` if it is the structure of the day before, else ResolutionUnavailable."""
        if previous is None:
            raise ResolutionUnavailable(
                f"resolution {resolution!r} at this time of day needs yesterday's structure "
                "(the class was not released yesterday); choose 'today' or a finer resolution",
                resolution=resolution,
            )
        if previous.day_start != self.day_start - DAY_SECONDS:
            raise ValueError(
                f"previous starts at {previous.day_start}, not the day before {self.day_start}"
            )
        if previous.window_seconds != self.window_seconds:
            raise ResolutionUnavailable(
                f"yesterday's windows were {previous.window_seconds} s, today's "
                f"{self.window_seconds} s: a {resolution!r} value cannot join them",
                resolution=resolution,
            )
        return previous


class _ExactSums:
    """Exact node sums of one structure from its windows: each window read at most once,
    a node's sum is the sum of its children's (memoised, so overlapping nodes share)."""

    def __init__(self, hierarchy: DailyHierarchy, windows: Callable[[int], int | None]) -> None:
        self._hierarchy = hierarchy
        self._windows = windows
        self._sums: dict[Node, int] = {}

    def _window(self, index: int) -> int:
        """The exact value of the day's window number ``index``, or MissingWindow."""
        start = self._hierarchy.day_start + index * self._hierarchy.window_seconds
        value = self._windows(start)
        if value is None:
            raise MissingWindow(
                f"the window starting at {start} has no complete aggregates; a node that "
                "spans it cannot be released until it is pushed",
                window_start=start,
            )
        return value if type(value) is int else check_int("window value", value, -(2**62))

    def node(self, node: Node) -> int:
        """The exact sum of the windows in ``node``'s span."""
        found = self._sums.get(node)
        if found is None:
            level, index = node
            if level == 0:
                found = self._window(index)
            else:
                ratio = self._hierarchy.levels[level] // self._hierarchy.levels[level - 1]
                found = sum(
                    self.node((level - 1, child))
                    for child in range(index * ratio, (index + 1) * ratio)
                )
            self._sums[node] = found
        return found
