"""Prometheus metrics of one domain's processor (``/metrics`` on its web port).

Read from the processor's health report (``streams.health``) at scrape time; labels
are domain, product, purpose, reason codes and key versions, never a value, token or
digest. Counts since the worker started are counters (``_total``), levels are gauges;
the process's own CPU, memory, file descriptors and garbage collection are on the same page.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streams.health import (
    FLUSH_SECONDS_BUCKETS,
    FLUSH_SECONDS_LE,
    ConsentHealth,
    HealthReport,
    HealthSource,
)

REJECTED = "rejected."
CONSENT_DROPPED = "consent_dropped."


class ProcessorCollector(Collector):
    """Events in and out, dead letters, consent drops, erasures and key versions."""

    def __init__(self, source: HealthSource, started: float) -> None:
        self._source = source
        self._started = started

    def collect(self) -> Iterator[Metric]:
        """One sample per series, from the processor's health report now."""
        report = self._source.health()
        domain = report.domain
        consumed = CounterMetricFamily(
            "privmesh_stream_consumed_events",
            "Raw events read from the domain's ingest topics",
            labels=["domain"],
        )
        consumed.add_metric([domain], report.ingest.get("consumed", 0))
        events = CounterMetricFamily(
            "privmesh_stream_events",
            "Ingested events by outcome: published, dead_lettered or consent_dropped",
            labels=["domain", "product", "outcome"],
        )
        dead = CounterMetricFamily(
            "privmesh_stream_dead_letters",
            "Events sent to the product's dead-letter topic, by reason code",
            labels=["domain", "product", "reason"],
        )
        dropped = CounterMetricFamily(
            "privmesh_stream_consent_dropped_events",
            "Valid events dropped because their subject had not consented or withdrew",
            labels=["domain", "product", "reason"],
        )
        pushed = CounterMetricFamily(
            "privmesh_stream_subject_rows_pushed",
            "Per-subject feature rows written to the domain's online store",
            labels=["domain", "product"],
        )
        late = CounterMetricFamily(
            "privmesh_stream_late_events",
            "Events whose window had closed when they arrived",
            labels=["domain", "product"],
        )
        capped = CounterMetricFamily(
            "privmesh_stream_capped_events",
            "Events beyond the per-subject per-window contribution bound",
            labels=["domain", "product"],
        )
        truncated = CounterMetricFamily(
            "privmesh_stream_truncated_events",
            "Events not counted because their subject had reached a per-day contribution "
            "bound, records or windows",
            labels=["domain", "product"],
        )
        cut = CounterMetricFamily(
            "privmesh_stream_truncated_sum",
            "Amount of counted records' measure cut because their subject's day total reached "
            "the measure's per-day cap (max_sum_per_period), in the measure's unit",
            labels=["domain", "product", "measure"],
        )
        for health in report.products:
            product, counts = health.name, health.counters
            events.add_metric([domain, product, "published"], counts.get("accepted", 0))
            events.add_metric([domain, product, "dead_lettered"], counts.get("rejected", 0))
            events.add_metric(
                [domain, product, "consent_dropped"], counts.get("consent_dropped", 0)
            )
            for name, value in sorted(counts.items()):
                if name.startswith(REJECTED):
                    dead.add_metric([domain, product, name.removeprefix(REJECTED)], value)
                elif name.startswith(CONSENT_DROPPED):
                    dropped.add_metric([domain, product, name.removeprefix(CONSENT_DROPPED)], value)
            pushed.add_metric([domain, product], counts.get("subject_rows_pushed", 0))
            late.add_metric([domain, product], health.late_events_since_start)
            capped.add_metric([domain, product], health.capped_events_since_start)
            truncated.add_metric([domain, product], health.truncated_events_since_start)
            for measure, amount in sorted(health.truncated_sums_since_start.items()):
                cut.add_metric([domain, product, measure], amount)
        yield from (consumed, events, dead, dropped, pushed, late, capped, truncated, cut)
        yield from _consent(domain, report.consent)
        yield from _feature_flushes(domain, report.features)
        erasures = CounterMetricFamily(
            "privmesh_stream_erasures_applied",
            "Erasures applied by this worker: requests (privmesh erase, dsr) and withdrawals",
            labels=["domain", "source"],
        )
        erasures.add_metric([domain, "request"], report.erasures.applied)
        erasures.add_metric(
            [domain, "consent_withdrawal"], report.consent.counters.get("withdrawal_erasures", 0)
        )
        yield erasures
        yield _key_versions(report)
        started = GaugeMetricFamily(
            "privmesh_stream_start_time_seconds",
            "When the domain's worker started, in seconds since the Unix epoch",
            labels=["domain"],
        )
        started.add_metric([domain], self._started)
        yield started


def _consent(domain: str, consent: ConsentHealth) -> Iterator[Metric]:
    subjects = GaugeMetricFamily(
        "privmesh_consent_subjects",
        "Subjects whose latest decision for the purpose is a grant or a withdrawal",
        labels=["domain", "purpose", "decision"],
    )
    for purpose, counts in consent.subjects.items():
        for decision, count in counts.items():
            subjects.add_metric([domain, purpose, decision], count)
    records = CounterMetricFamily(
        "privmesh_consent_records",
        "Consent records read, by result (applied or malformed)",
        labels=["domain", "result"],
    )
    malformed = consent.counters.get("malformed", 0)
    records.add_metric([domain, "applied"], consent.counters.get("records", 0) - malformed)
    records.add_metric([domain, "malformed"], malformed)
    ready = GaugeMetricFamily(
        "privmesh_consent_index_ready",
        "1 once the consent index has caught up and events are processed",
        labels=["domain"],
    )
    ready.add_metric([domain], 1.0 if consent.ready else 0.0)
    yield from (subjects, records, ready)


def _feature_flushes(domain: str, features: dict[str, int]) -> Iterator[Metric]:
    """The feature pusher's online flushes: duration, rows written, rows waiting, bound."""
    flushes = features.get("flushes", 0)
    seconds = HistogramMetricFamily(
        "privmesh_stream_feature_flush_seconds",
        "Duration of each online feature flush (drain, window and subject row writes)",
        labels=["domain"],
    )
    seconds.add_metric(
        [domain],
        [(str(b), features.get(f"{FLUSH_SECONDS_LE}{b}", 0)) for b in FLUSH_SECONDS_BUCKETS]
        + [("+Inf", flushes)],
        features.get("flush_ms_total", 0) / 1000,
    )
    rows = CounterMetricFamily(
        "privmesh_stream_feature_flush_rows",
        "Window and subject rows written to the online store by feature flushes",
        labels=["domain"],
    )
    rows.add_metric([domain], features.get("flush_rows_total", 0))
    queued = GaugeMetricFamily(
        "privmesh_stream_feature_queued_rows",
        "Rows drained from the windows and waiting for a later flush (the backlog)",
        labels=["domain"],
    )
    queued.add_metric([domain], features.get("queued_rows", 0))
    bound = GaugeMetricFamily(
        "privmesh_stream_feature_flush_max_rows",
        "Most rows one feature flush writes online (feature_flush_max_rows)",
        labels=["domain"],
    )
    bound.add_metric([domain], features.get("flush_max_rows", 0))
    yield from (seconds, rows, queued, bound)


def _key_versions(report: HealthReport) -> Metric:
    family = GaugeMetricFamily(
        "privmesh_pseudonymisation_key_version",
        "Key versions of the domain: 1 for the version applying to events now (active), "
        "0 for retired ones and those scheduled for the future",
        labels=["domain", "version", "state"],
    )
    for key in report.key_versions:
        value = 1.0 if key.state == "active" else 0.0
        family.add_metric([report.domain, str(key.version), key.state], value)
    return family


def metrics_registry(processor: HealthSource, started: float) -> CollectorRegistry:
    """A registry of this processor and its process (tests run several in one process)."""
    registry = CollectorRegistry()
    registry.register(ProcessorCollector(processor, started))
    ProcessCollector(registry=registry)  # CPU, memory, open files, start time
    PlatformCollector(registry=registry)  # python_info
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry``."""
    return generate_latest(registry)
