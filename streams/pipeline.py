"""One data product's processing state, free of Kafka clients: route, aggregate, drain.

Aggregation state is kept per ingest partition. Ingest records are keyed by the
normalised privacy-unit value (a record keyed otherwise is refused, ``wrong_key``), so
every event of one subject lands on one partition
and one worker: per-partition window statistics add up to the product's statistics
(distinct subjects included), however many workers share the partitions. An accepted
event found on another partition than its key's is refused (``wrong_partition``):
counting it would let one subject contribute through two workers, beyond the bound
the DP layer relies on.

Every product's privacy unit is the subject over the UTC day: each partition's aggregator
enforces the contract's per-subject per-day bounds (``streams.windows``). A partition's
aggregator starts from the day tallies a ``restore`` source rebuilds (``streams.restore``:
the offline event files), so a restart or a rebalance does not give a subject its day's
bounds afresh.

A valid event whose subject has not consented to the product's purpose (``opt_in``) or
has withdrawn is dropped: counted (``consent_dropped.<reason>``), never published, never
dead-lettered, never aggregated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import murmur2

from domains.contract import DataProduct, DomainContract
from feature_repo.names import (
    CONTRIBUTION_BOUND,
    DISTINCT_SUBJECTS,
    EVENT_TIMESTAMP,
    EVENTS,
    MAX_RECORDS_PER_PERIOD,
    MAX_WINDOWS_PER_PERIOD,
    NEW_SUBJECTS_HOUR,
    NEW_SUBJECTS_PERIOD,
    PARTITION_KEY,
    SUBJECT_KEY,
    TRUNCATED_EVENTS,
    WINDOW_COMPLETE,
    WINDOW_KEY,
    WINDOW_LATE_EVENTS,
    WINDOW_WATERMARK,
    sum_cap_feature,
    sum_feature,
)
from streams.consent import ConsentIndex
from streams.pseudonymise import TokenSource
from streams.settings import StreamSettings
from streams.topics import ProductTopics
from streams.transform import (
    WRONG_KEY,
    WRONG_PARTITION,
    Accepted,
    ProductTransform,
    Rejected,
)
from streams.windows import (
    DAY_SECONDS,
    DaySeed,
    DayTally,
    SubjectRow,
    WindowAggregator,
    WindowStats,
)

log = logging.getLogger("privmesh.streams")

PROCESSING_ERROR = "processing_error"
_PARTITION_CACHE_MAX = 200_000
RESEED_SECONDS = 5.0  # restored day tallies are re-read when older (one read per rebalance)
# counters["revoked.<tally>"]: the late, capped and truncated events of partitions given up,
# so the worker's totals (its metrics' counters) never go down at a rebalance
REVOKED = "revoked."
REVOKED_TALLIES = ("late_events", "capped_events", "truncated_events")

# (product, day starts) -> day start -> subject token -> tally: what was counted before
DayRestore = Callable[[DataProduct, Iterable[int]], dict[int, dict[str, DayTally]]]


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, Java-compatible) picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """Closed-window statistics of one ingest partition."""

    partition: int
    stats: WindowStats


@dataclass
class ProductPipeline:
    """Everything one product needs between consuming and producing."""

    domain: str
    product: DataProduct
    transform: ProductTransform
    topics: ProductTopics
    settings: StreamSettings
    consent: ConsentIndex
    aggregators: dict[int, WindowAggregator] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    # per capped measure: the amount cut by its per-day cap on partitions given up (as the
    # "revoked.<tally>" counters: the worker's total never goes down at a rebalance)
    revoked_sums: dict[str, float] = field(default_factory=dict)
    # (partition count, normalised unit) -> the unit's partition; process memory only
    _partition_of: dict[tuple[int, bytes], int] = field(default_factory=dict, repr=False)
    # accepted product events (the published dicts) not yet taken for the offline store
    _events: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # where the per-day tallies of a (re)assigned partition come from (None: nowhere)
    restore: DayRestore | None = None
    _seeds: dict[int, dict[str, DayTally]] = field(default_factory=dict, repr=False)
    _seeded_at: float | None = field(default=None, repr=False)

    # ------------------------------------------------------------ partition ownership
    def assign(self, partition: int, now: float) -> None:
        """This worker now owns ``partition``: its windows are released from ``now`` on."""
        if partition not in self.aggregators:
            clamps = {
                f.name: self.product.clamp_of(f.name)
                for f in self.product.fields
                if f.bounds is not None
            }
            aggregator = WindowAggregator(
                self.settings.window_seconds,
                self.settings.grace_seconds,
                self.settings.max_events_per_subject,
                clamps,
                contribution=self.product.contribution,
                seed=self._seed_for(now),
            )
            aggregator.open_at(now)
            self.aggregators[partition] = aggregator

    def _seed_for(self, now: float) -> DaySeed:
        """Restored tallies of the days whose windows may still be open at ``now`` (read
        once per ``RESEED_SECONDS``: the partitions of one assignment share one read)."""
        if self.restore is None:
            return {}
        if self._seeded_at is None or abs(now - self._seeded_at) > RESEED_SECONDS:
            self._read_seeds(now)
        return self._seeds

    def _read_seeds(self, now: float) -> None:
        assert self.restore is not None
        back = self.settings.window_seconds + self.settings.grace_seconds
        ahead = self.product.event_time_window.max_future_seconds
        days = {int(t) - int(t) % DAY_SECONDS for t in (now - back, now, now + ahead)}
        try:
            seeds = self.restore(self.product, days)
            self.counters["day_tallies_restored"] += sum(map(len, seeds.values()))
        except Exception as exc:  # the bound is then per process lifetime: counted, logged
            seeds = {}
            self.counters["day_tallies_restore_failed"] += 1
            log.error(
                "day tallies of %s not restored (%s): subjects' per-day bounds restart",
                self.product.name,
                type(exc).__name__,
            )
        self._seeded_at, self._seeds = now, seeds

    async def preload_day_tallies(self, now: float) -> None:
        """Read the restored tallies for the ``assign`` calls that follow at ``now`` in a
        thread: a large day takes seconds to read, and the event loop keeps the consumer
        group's heartbeats going meanwhile."""
        if self.restore is not None:
            await asyncio.to_thread(self._read_seeds, now)

    def caught_up(self, partition: int, now: float) -> None:
        """The consumer of ``partition`` has read to its log end at ``now`` (see
        ``WindowAggregator.caught_up``)."""
        aggregator = self.aggregators.get(partition)
        if aggregator is not None:
            aggregator.caught_up(now)

    def revoke(self, partition: int) -> list[SubjectRow]:
        """Give ``partition`` up; returns its pending subject rows (to push once more).

        The open windows' tallies are lost: the next owner counts that partition's
        window from its own start, so the window is under-counted, never over-counted.
        """
        aggregator = self.aggregators.pop(partition, None)
        if aggregator is None:
            return []
        for tally in REVOKED_TALLIES:
            self.counters[REVOKED + tally] += getattr(aggregator, tally)
        for name, cut in aggregator.truncated_sums.items():
            self.revoked_sums[name] = self.revoked_sums.get(name, 0.0) + cut
        if aggregator.open_windows:
            self.counters["windows_cut_by_rebalance"] += aggregator.open_windows
        return [replace(r, partition=partition) for r in aggregator.drain_subject_rows()]

    # ------------------------------------------------------------ per event
    def route(
        self,
        raw: bytes,
        partition: int,
        partitions: int,
        key: bytes | None,
        now: float | None = None,
    ) -> Accepted | Rejected | None:
        """Transform ``raw`` (keyed ``key``) read from ``partition`` at ``now``; None when
        consent drops it. Never raises: whatever fails becomes a ``Rejected``."""
        try:
            outcome = self.transform.apply(raw, time.time() if now is None else now)
            if isinstance(outcome, Accepted):
                outcome = self._check_key(outcome, key)
            if isinstance(outcome, Accepted):
                outcome = self._check_partition(outcome, partition, partitions)
            if isinstance(outcome, Accepted):
                refused = self.consent.allows(self.product, outcome.unit_key)
                if refused is not None:
                    self.counters["consent_dropped"] += 1
                    self.counters[f"consent_dropped.{refused}"] += 1
                    return None
                aggregator = self.aggregators.get(partition)
                if aggregator is None:  # consumed before the assignment callback ran
                    self.assign(partition, outcome.event_time)
                    aggregator = self.aggregators[partition]
                aggregator.add(outcome.subject, outcome.event_time, outcome.measures)
        except Exception as exc:  # a bug must not stop the stream or lose the event
            # The type only: an exception message can quote the value that caused it.
            log.error("transform failed for a %s event: %s", self.topics.ingest, type(exc).__name__)
            outcome = Rejected(PROCESSING_ERROR, f"internal error {type(exc).__name__}")
        if isinstance(outcome, Accepted):
            self.counters["accepted"] += 1
            self._events.append(outcome.event)
        else:
            self.counters[f"rejected.{outcome.reason}"] += 1
            self.counters["rejected"] += 1
        return outcome

    def _check_key(self, accepted: Accepted, key: bytes | None) -> Accepted | Rejected:
        if key == accepted.unit_key:
            return accepted
        unit = self.product.privacy_unit
        return Rejected(
            WRONG_KEY,
            f"the record key is not the event's normalised {unit!r} value; key ingest records "
            f"by it (privmesh produce does)",
        )

    def _check_partition(
        self, accepted: Accepted, partition: int, partitions: int
    ) -> Accepted | Rejected:
        cache = self._partition_of
        key = (partitions, accepted.unit_key)
        expected = cache.get(key)
        if expected is None:
            if len(cache) >= _PARTITION_CACHE_MAX:
                cache.clear()
            expected = cache[key] = partition_for(accepted.unit_key, partitions)
        if expected == partition:
            return accepted
        unit = self.product.privacy_unit
        return Rejected(
            WRONG_PARTITION,
            f"event of one {unit!r} arrived on partition {partition}, its key's partition is "
            f"{expected}; key ingest records by the normalised {unit!r} value "
            "(privmesh produce does) with the default partitioner",
        )

    # ------------------------------------------------------------ flushing
    def drain(self, now: float) -> tuple[list[SubjectRow], list[PartitionStats]]:
        """Subject rows changed since the last drain, and windows that closed by ``now``."""
        rows: list[SubjectRow] = []
        closed: list[PartitionStats] = []
        for day in [d for d in self._seeds if d + DAY_SECONDS + RESEED_SECONDS < now]:
            del self._seeds[day]  # a day over: the aggregators dropped it too
        for partition, aggregator in self.aggregators.items():
            rows.extend(replace(r, partition=partition) for r in aggregator.drain_subject_rows())
            closed.extend(PartitionStats(partition, s) for s in aggregator.close_ready(now))
        return rows, closed

    def forget(self, tokens: set[str]) -> int:
        """Erasure: drop the subjects' open-window tallies in every partition, and their
        buffered product events; returns the number of tallies dropped."""
        unit = self.product.subject_field
        self._events = [e for e in self._events if e.get(unit) not in tokens]
        return sum(a.forget(tokens) for a in self.aggregators.values())

    # ------------------------------------------------------------ product events
    @property
    def buffered_events(self) -> int:
        """Accepted product events waiting for ``take_events``."""
        return len(self._events)

    def take_events(self) -> list[dict[str, Any]]:
        """The accepted product events since the last call (for the offline store), oldest
        first: each exactly the dict published to the product topic."""
        events, self._events = self._events, []
        return events

    @property
    def late_events(self) -> int:
        """Events whose window had closed when they arrived (on partitions owned now)."""
        return sum(a.late_events for a in self.aggregators.values())

    @property
    def capped_events(self) -> int:
        """Events beyond the per-subject contribution bound (on partitions owned now)."""
        return sum(a.capped_events for a in self.aggregators.values())

    @property
    def truncated_events(self) -> int:
        """Events not counted because their subject had reached a per-day bound (records
        or windows), on partitions owned now."""
        return sum(a.truncated_events for a in self.aggregators.values())

    @property
    def truncated_sums(self) -> dict[str, float]:
        """Per measure with a per-day cap: the amount of counted records cut by the cap
        (``max_sum_per_period``), on partitions owned now."""
        out = dict.fromkeys(self.product.contribution.max_sum_per_period, 0.0)
        for aggregator in self.aggregators.values():
            for name, cut in aggregator.truncated_sums.items():
                out[name] = out.get(name, 0.0) + cut
        return out

    def truncated_sums_since_start(self) -> dict[str, float]:
        """:attr:`truncated_sums` plus what partitions given up had cut (monotonic)."""
        out = self.truncated_sums
        for name, cut in self.revoked_sums.items():
            out[name] = out.get(name, 0.0) + cut
        return out

    # ------------------------------------------------------------ rows for Feast
    def subject_records(self, rows: list[SubjectRow]) -> list[dict[str, object]]:
        """Per-subject feature rows, in the subject view's columns."""
        now = datetime.now(UTC)
        measures = self.transform.measure_fields
        return [
            {
                SUBJECT_KEY: r.subject,
                WINDOW_KEY: r.window_start,
                EVENTS: r.events,
                **{sum_feature(m): float(r.sums.get(m, 0.0)) for m in measures},
                EVENT_TIMESTAMP: now,
            }
            for r in rows
        ]

    def window_records(self, closed: list[PartitionStats]) -> list[dict[str, object]]:
        """Closed per-partition window aggregates, in the window view's columns.

        Each row says whether the partition's event-time watermark had passed the window's
        end plus grace when it closed (``complete``), the watermark, and the late events
        counted for it so far; an amendment (late events) is written at its own time, so
        it replaces the first report in every online store.
        """
        measures = self.transform.measure_fields
        caps = self.product.contribution.max_sum_per_period  # the ones the aggregators apply
        return [
            {
                WINDOW_KEY: c.stats.window_start,
                PARTITION_KEY: c.partition,
                DISTINCT_SUBJECTS: c.stats.distinct_subjects,
                EVENTS: c.stats.events,
                CONTRIBUTION_BOUND: self.settings.max_events_per_subject,
                **{sum_feature(m): float(c.stats.sums.get(m, 0.0)) for m in measures},
                **{sum_cap_feature(m): float(cap) for m, cap in caps.items()},
                WINDOW_COMPLETE: int(c.stats.complete),
                WINDOW_WATERMARK: int(c.stats.watermark or 0),
                WINDOW_LATE_EVENTS: c.stats.late_events,
                NEW_SUBJECTS_PERIOD: c.stats.new_subjects_period,
                NEW_SUBJECTS_HOUR: c.stats.new_subjects_hour,
                TRUNCATED_EVENTS: c.stats.truncated_events,
                MAX_RECORDS_PER_PERIOD: c.stats.max_records_per_period,
                MAX_WINDOWS_PER_PERIOD: c.stats.max_windows_per_period,
                EVENT_TIMESTAMP: datetime.fromtimestamp(
                    c.stats.window_end if c.stats.amended_at is None else c.stats.amended_at,
                    tz=UTC,
                ),
            }
            for c in closed
        ]


def build_pipelines(
    contract: DomainContract,
    tokeniser: TokenSource,
    settings: StreamSettings,
    consent: ConsentIndex | None = None,
    restore: DayRestore | None = None,
) -> list[ProductPipeline]:
    """One pipeline per product of ``contract``, checking ``consent`` (an empty index with
    a random key when None: opt-in products then process nothing until grants arrive);
    ``restore`` rebuilds the per-day tallies of a partition it is assigned (None: none)."""
    index = consent if consent is not None else ConsentIndex(contract)
    return [
        ProductPipeline(
            contract.domain,
            product,
            ProductTransform(product, tokeniser),
            ProductTopics.of(contract.domain, product),
            settings,
            index,
            restore=restore,
        )
        for product in contract.products
    ]
