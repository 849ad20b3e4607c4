"""Feast objects derived from a data-product contract.

Three feature views per product:

* ``<product>_subject_window``: per pseudonymous subject, its bounded event count
  and measure sums in the current window (training features for federation).
* ``<product>_window_stats``: per closed window and ingest partition, the
  contribution-bounded aggregates the DP layer adds noise to (distinct subjects,
  events, sums, subjects new in the UTC day and hour), with the records truncated by
  the per-subject per-day bounds and the bounds applied. Each subject lives on one
  partition, so the partitions' rows of a window add up to the window's statistics.
* ``<product>_events``: the pseudonymised product events themselves (offline only),
  keyed by the privacy unit's token at the event time: training rows for federated
  learning, read with point-in-time historical retrieval.

Every field carries the privacy tag of the contract field it derives from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.types import Float64, Int64, PrimitiveFeastType, String, UnixTimestamp

from domains.contract import DataProduct, PrivacyTag
from feature_repo.events import events_folder_name
from feature_repo.names import (
    CONTRIBUTION_BOUND,
    EVENT_TIMESTAMP,
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
    subject_view_name,
    sum_cap_feature,
    sum_feature,
    window_view_name,
)
from feature_repo.specs import (
    FLOAT64,
    INT64,
    STRING,
    UNIX_TIMESTAMP,
    ViewSpec,
    events_view,
    events_view_fields,
    product_views,
)

__all__ = [
    "CONTRIBUTION_BOUND",
    "MAX_RECORDS_PER_PERIOD",
    "MAX_WINDOWS_PER_PERIOD",
    "NEW_SUBJECTS_HOUR",
    "NEW_SUBJECTS_PERIOD",
    "PARTITION_KEY",
    "SUBJECT_KEY",
    "TRUNCATED_EVENTS",
    "WINDOW_COMPLETE",
    "WINDOW_KEY",
    "WINDOW_LATE_EVENTS",
    "WINDOW_WATERMARK",
    "ProductFeatures",
    "build_events_view",
    "build_features",
    "events_view_fields",
    "measure_fields",
    "sum_cap_feature",
    "sum_feature",
]


@dataclass(frozen=True)
class ProductFeatures:
    """Names and Feast objects of one product's feature views."""

    product: DataProduct
    subject_entity: Entity
    window_entity: Entity
    partition_entity: Entity
    subject_view: FeatureView
    window_view: FeatureView
    subject_push: PushSource
    window_push: PushSource
    events_view: FeatureView

    def objects(self) -> list[object]:
        """Everything ``FeatureStore.apply`` needs."""
        return [
            self.subject_entity,
            self.window_entity,
            self.partition_entity,
            self.subject_push,
            self.window_push,
            self.subject_view,
            self.window_view,
            self.events_view,
        ]

    @property
    def measure_features(self) -> list[str]:
        """Feature names of the per-window measure sums."""
        return [sum_feature(m) for m in measure_fields(self.product)]

    @property
    def cap_features(self) -> list[str]:
        """Feature names of the per-day caps applied to capped measures (``max_sum_per_period``)."""
        return [sum_cap_feature(m) for m in self.product.contribution.max_sum_per_period]


def measure_fields(product: DataProduct) -> list[str]:
    """Bounded numeric fields of ``product`` (the ones aggregated)."""
    return [f.name for f in product.fields if f.bounds is not None]


def build_features(product: DataProduct, offline_dir: Path) -> ProductFeatures:
    """Feast definitions of ``product``; offline parquet files live in ``offline_dir``."""
    unit_tag = {"privacy_tag": PrivacyTag.DIRECT_IDENTIFIER.value, "protection": "tokenise"}
    subject = Entity(
        name=SUBJECT_KEY,
        join_keys=[SUBJECT_KEY],
        value_type=ValueType.STRING,
        description=f"Pseudonymous token of {product.privacy_unit} (the privacy unit)",
        tags={**unit_tag, "source_field": product.privacy_unit},
    )
    window = Entity(
        name=WINDOW_KEY,
        join_keys=[WINDOW_KEY],
        value_type=ValueType.INT64,
        description="Start of a tumbling event-time window, epoch seconds",
        tags={"privacy_tag": PrivacyTag.NON_PERSONAL.value},
    )
    partition = Entity(
        name=PARTITION_KEY,
        join_keys=[PARTITION_KEY],
        value_type=ValueType.INT64,
        description="Ingest topic partition whose subjects a window row counts",
        tags={"privacy_tag": PrivacyTag.NON_PERSONAL.value},
    )
    views = product_views(product)

    def push(name: str) -> PushSource:
        batch = FileSource(
            name=f"{name}_batch",
            # The parquet part files of a folder (feature_repo.offline writes and erases
            # them), scanned as one table by the DuckDB offline store.
            path=str(offline_dir / name / "part-*.parquet"),
            file_format=ParquetFormat(),
            timestamp_field=EVENT_TIMESTAMP,
        )
        return PushSource(name=f"{name}_push", batch_source=batch)

    subject_push = push(subject_view_name(product.name))
    window_push = push(window_view_name(product.name))
    subject_view = _feature_view(views.subject, [subject], subject_push)
    window_view = _feature_view(views.window, [window, partition], window_push)
    events_view = build_events_view(product, subject, offline_dir)
    return ProductFeatures(
        product,
        subject,
        window,
        partition,
        subject_view,
        window_view,
        subject_push,
        window_push,
        events_view,
    )


_FEAST_TYPES: dict[str, PrimitiveFeastType] = {
    INT64: Int64,
    FLOAT64: Float64,
    STRING: String,
    UNIX_TIMESTAMP: UnixTimestamp,
}


def _feature_view(spec: ViewSpec, entities: list[Entity], source: DataSource) -> FeatureView:
    """The Feast view of ``spec`` (``feature_repo.specs`` declares every view's features)."""
    return FeatureView(
        name=spec.name,
        entities=entities,
        ttl=timedelta(days=spec.ttl_days),
        schema=[
            Field(
                name=c.name,
                dtype=_FEAST_TYPES[c.dtype],
                description=c.description,
                tags=dict(c.tags),
            )
            for c in spec.columns
        ],
        source=source,
        online=spec.online,
        description=spec.description,
        owner=spec.owner,
        tags=dict(spec.tags),
    )


def build_events_view(product: DataProduct, subject: Entity, offline_dir: Path) -> FeatureView:
    """The offline-only view over ``product``'s pseudonymised event files."""
    source = FileSource(
        name=f"{product.name}_events_source",
        path=str(offline_dir / events_folder_name(product.name) / "part-*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field=product.event_time,
        field_mapping={product.subject_field: SUBJECT_KEY},
    )
    return _feature_view(events_view(product), [subject], source)
