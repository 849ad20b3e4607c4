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

import pyarrow as pa
from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64, PrimitiveFeastType, String, UnixTimestamp

from domains.contract import DataProduct, PrivacyTag
from feature_repo.events import EVENT_TIME_TYPE, event_schema, events_folder_name
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
    subject_view_name,
    sum_cap_feature,
    sum_feature,
    window_view_name,
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
    ttl = timedelta(days=product.retention_days)
    measures = [f for f in product.fields if f.bounds is not None]
    measure_schema = [
        Field(
            name=sum_feature(f.name),
            dtype=Float64,
            description=(
                f"Sum of {f.name}, each record clamped to [{product.clamp_of(f.name).min:g}, "
                f"{product.clamp_of(f.name).max:g}] (the contract's clamp)"
            ),
            tags={"privacy_tag": f.tag.value, "source_field": f.name},
        )
        for f in measures
    ]
    cap_schema = [
        Field(
            name=sum_cap_feature(name),
            dtype=Float64,
            description=(
                f"Cap on one subject's counted {name} per UTC day when this row was counted "
                "(the contract's max_sum_per_period), from which the DP layer derives sensitivity"
            ),
            tags={"privacy_tag": PrivacyTag.NON_PERSONAL.value},
        )
        for name in product.contribution.max_sum_per_period
    ]
    events_field = Field(
        name=EVENTS,
        dtype=Int64,
        description="Events counted, at most the per-subject contribution bound",
        tags={"privacy_tag": PrivacyTag.SENSITIVE.value},
    )

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
    subject_view = FeatureView(
        name=subject_view_name(product.name),
        entities=[subject],
        ttl=ttl,
        schema=[
            Field(name=WINDOW_KEY, dtype=Int64, tags={"privacy_tag": "non_personal"}),
            events_field,
            *measure_schema,
        ],
        source=subject_push,
        online=True,
        description=f"Per-subject bounded aggregates of {product.name} in the current window",
        owner=product.owner,
        tags={"privacy_tag": PrivacyTag.SENSITIVE.value, "purpose": product.purpose},
    )
    window_view = FeatureView(
        name=window_view_name(product.name),
        entities=[window, partition],
        ttl=ttl,
        schema=[
            Field(
                name=DISTINCT_SUBJECTS,
                dtype=Int64,
                description="Distinct pseudonymous subjects in the window",
                tags={"privacy_tag": PrivacyTag.SENSITIVE.value, "dp_sensitivity": "1"},
            ),
            events_field,
            Field(
                name=CONTRIBUTION_BOUND,
                dtype=Int64,
                description=(
                    "Most events one subject could contribute to this row: the processor's "
                    "bound when it counted them, from which the DP layer derives sensitivity"
                ),
                tags={"privacy_tag": PrivacyTag.NON_PERSONAL.value},
            ),
            Field(
                name=NEW_SUBJECTS_PERIOD,
                dtype=Int64,
                description=(
                    "Subjects whose first counted record of the UTC day is in this window: "
                    "summed over a day's windows, each subject counts at most once"
                ),
                tags={"privacy_tag": PrivacyTag.SENSITIVE.value, "dp_sensitivity": "1"},
            ),
            Field(
                name=NEW_SUBJECTS_HOUR,
                dtype=Int64,
                description=(
                    "Subjects whose first counted record of the UTC hour is in this window: "
                    "summed over an hour's windows, each subject counts at most once"
                ),
                tags={"privacy_tag": PrivacyTag.SENSITIVE.value, "dp_sensitivity": "1"},
            ),
            Field(
                name=TRUNCATED_EVENTS,
                dtype=Int64,
                description=(
                    "Records of this window not counted because their subject had reached a "
                    "per-day bound (records or windows): the truncation bias, measured"
                ),
                tags={"privacy_tag": PrivacyTag.SENSITIVE.value},
            ),
            Field(
                name=MAX_RECORDS_PER_PERIOD,
                dtype=Int64,
                description="Records of one subject counted per UTC day when this row was counted",
                tags={"privacy_tag": PrivacyTag.NON_PERSONAL.value},
            ),
            Field(
                name=MAX_WINDOWS_PER_PERIOD,
                dtype=Int64,
                description=(
                    "Windows one subject may appear in per UTC day when this row was counted"
                ),
                tags={"privacy_tag": PrivacyTag.NON_PERSONAL.value},
            ),
            Field(
                name=WINDOW_COMPLETE,
                dtype=Int64,
                description=(
                    "1 when the partition's event-time watermark had passed the window's end "
                    "plus the grace period when it closed; 0 when it closed by the wall clock "
                    "(idle partition) or received late events: the DP layer marks it partial"
                ),
                tags={"privacy_tag": PrivacyTag.NON_PERSONAL.value},
            ),
            Field(
                name=WINDOW_WATERMARK,
                dtype=Int64,
                description="The partition's event-time watermark when the window closed",
                tags={"privacy_tag": PrivacyTag.NON_PERSONAL.value},
            ),
            Field(
                name=WINDOW_LATE_EVENTS,
                dtype=Int64,
                description="Events of the window that arrived after it closed (not counted)",
                tags={"privacy_tag": PrivacyTag.NON_PERSONAL.value},
            ),
            *measure_schema,
            *cap_schema,
        ],
        source=window_push,
        online=True,
        description=f"Contribution-bounded window aggregates of {product.name} for DP release",
        owner=product.owner,
        tags={"privacy_tag": "aggregate", "purpose": product.purpose},
    )
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


_FEAST_TYPES: dict[pa.DataType, PrimitiveFeastType] = {
    pa.int64(): Int64,
    pa.float64(): Float64,
    pa.string(): String,
    EVENT_TIME_TYPE: UnixTimestamp,
}


def events_view_fields(product: DataProduct) -> dict[str, pa.Field]:
    """The event columns the events view serves: every published field but the privacy
    unit's token (the entity key) and the event time (the view's timestamp). Date columns
    are left out: Feast has no calendar-date type."""
    schema = event_schema(product)
    skip = {product.subject_field, product.event_time}
    return {f.name: f for f in schema if f.name not in skip and f.type in _FEAST_TYPES}


def build_events_view(product: DataProduct, subject: Entity, offline_dir: Path) -> FeatureView:
    """The offline-only view over ``product``'s pseudonymised event files."""
    source = FileSource(
        name=f"{product.name}_events_source",
        path=str(offline_dir / events_folder_name(product.name) / "part-*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field=product.event_time,
        field_mapping={product.subject_field: SUBJECT_KEY},
    )
    schema = [
        Field(
            name=name,
            dtype=_FEAST_TYPES[column.type],
            description=f"Product-event field {name} as published",
            tags={k.decode(): v.decode() for k, v in (column.metadata or {}).items()},
        )
        for name, column in events_view_fields(product).items()
    ]
    return FeatureView(
        name=f"{product.name}_events",
        entities=[subject],
        ttl=timedelta(days=product.retention_days),
        schema=schema,
        source=source,
        online=False,
        description=f"Pseudonymised {product.name} events, one row per event, for training",
        owner=product.owner,
        tags={"privacy_tag": "pseudonymised", "purpose": product.purpose},
    )
