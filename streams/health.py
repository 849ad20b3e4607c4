"""The health report of one domain's processor: a typed snapshot of its counters.

``Processor.health()`` (``streams.processor``) takes it; the worker's health page
(``/privmesh/health``) and its Prometheus metrics (``streams.metrics``) both read it,
so neither reaches into the processor's parts and ``streams.metrics`` does not import
the processor that serves it. Counts and levels only: no token, value or digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

KeyState = Literal["active", "retired", "scheduled"]
# The feature pusher's flush durations in its counters (``HealthReport.features``): for each
# upper bound (seconds), ``flush_seconds_le.<bound>`` counts the flushes that took at most
# that long (cumulative; ``flushes`` counts them all), for the Prometheus histogram.
FLUSH_SECONDS_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
FLUSH_SECONDS_LE = "flush_seconds_le."


@dataclass(frozen=True, slots=True)
class ProductHealth:
    """One product pipeline's counters.

    ``late_events``, ``capped_events``, ``truncated_events`` and ``truncated_sums`` are the
    tallies of the ingest partitions the worker owns now (they drop at a rebalance); the
    ``*_since_start`` ones add those of the partitions it gave up (they never go down).
    """

    name: str
    counters: dict[str, int]
    late_events: int
    capped_events: int
    truncated_events: int
    truncated_sums: dict[str, float]
    late_events_since_start: int
    capped_events_since_start: int
    truncated_events_since_start: int
    truncated_sums_since_start: dict[str, float]

    def page(self) -> dict[str, object]:
        """The product's entry on the health page."""
        return {
            **self.counters,
            "late_events": self.late_events,
            "capped_events": self.capped_events,
            "truncated_events": self.truncated_events,
            "truncated_sums": self.truncated_sums,
        }


@dataclass(frozen=True, slots=True)
class ErasureHealth:
    """Erasure requests applied, malformed ones skipped, and re-reads of the topic."""

    applied: int
    malformed: int
    rereads: int


@dataclass(frozen=True, slots=True)
class ConsentHealth:
    """The consent listener's counters, whether its index has caught up, and subjects per
    purpose and decision (``granted`` / ``withdrawn``)."""

    counters: dict[str, int]
    ready: bool
    subjects: dict[str, dict[str, int]]

    def page(self) -> dict[str, object]:
        """The consent entry on the health page."""
        return {**self.counters, "ready": self.ready, "subjects": self.subjects}


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """A pseudonymisation key version of the domain and its state when the report was taken:
    ``active`` (applies to events now), ``retired`` or ``scheduled`` (effective later)."""

    version: int
    state: KeyState


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What one domain's processor reports about itself, at one moment."""

    domain: str
    assigned_partitions: list[str]
    ingest: dict[str, int]
    features: dict[str, int]
    erasures: ErasureHealth
    consent: ConsentHealth
    products: list[ProductHealth]
    # Empty when the worker's token source has no key ring (an identity or fixed-key source).
    key_versions: list[KeyVersion]

    def page(self, uptime_seconds: float) -> dict[str, object]:
        """The worker's health page (JSON): counters only, never a token or a value."""
        return {
            "domain": self.domain,
            "uptime_seconds": uptime_seconds,
            "assigned_partitions": self.assigned_partitions,
            "ingest": self.ingest,
            "features": self.features,
            "erasures": {
                "applied": self.erasures.applied,
                "malformed": self.erasures.malformed,
                "rereads": self.erasures.rereads,
            },
            "consent": self.consent.page(),
            "products": {p.name: p.page() for p in self.products},
        }


class HealthSource(Protocol):
    """Anything that reports a processor's health (the processor; a fake in tests)."""

    def health(self) -> HealthReport:
        """A snapshot of the counters now."""
        ...
