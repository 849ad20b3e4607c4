"""The feature views of a data product as plain data: names, column types, descriptions and
privacy tags, derived from its contract without importing Feast.

``feature_repo.definitions`` builds the Feast objects from these specs; readers that only
need the views' shape (the catalog, a data-subject access request's direct online read)
use them directly and start in a fraction of Feast's import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from domains.contract import DataProduct, PrivacyTag
from feature_repo.names import (
    CONTRIBUTION_BOUND,
    DISTINCT_SUBJECTS,
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
    events_view_name,
    subject_view_name,
    sum_cap_feature,
    sum_feature,
    window_view_name,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pyarrow as pa

INT64, FLOAT64, STRING, UNIX_TIMESTAMP = "Int64", "Float64", "String", "UnixTimestamp"
_SENSITIVE = PrivacyTag.SENSITIVE.value
_NON_PERSONAL = PrivacyTag.NON_PERSONAL.value


@dataclass(frozen=True)
class ColumnSpec:
    """One feature of a view: ``dtype`` is the Feast type's name (``Int64``, ``Float64``,
    ``String``, ``UnixTimestamp``); ``tags`` carry the privacy tag of its source field."""

    name: str
    dtype: str
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ViewSpec:
    """One feature view: its entities (join keys), features, online flag and time to live."""

    name: str
    entities: tuple[str, ...]
    columns: tuple[ColumnSpec, ...]
    online: bool
    ttl_days: int
    description: str
    owner: str
    tags: Mapping[str, str]

    @property
    def feature_names(self) -> list[str]:
        """The feature (column) names, in order."""
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class ProductViews:
    """The three feature views of one product (see ``feature_repo.definitions``)."""

    subject: ViewSpec
    window: ViewSpec
    events: ViewSpec

    def all(self) -> tuple[ViewSpec, ViewSpec, ViewSpec]:
        """Subject, window and events views, in that order."""
        return (self.subject, self.window, self.events)


def _column(name: str, dtype: str, description: str = "", **tags: str) -> ColumnSpec:
    return ColumnSpec(name, dtype, description, MappingProxyType(tags))


def product_views(product: DataProduct) -> ProductViews:
    """The feature views of ``product``, as ``feature_repo.definitions`` registers them."""
    measures = [
        _column(
            sum_feature(f.name),
            FLOAT64,
            f"Sum of {f.name}, each record clamped to [{product.clamp_of(f.name).min:g}, "
            f"{product.clamp_of(f.name).max:g}] (the contract's clamp)",
            privacy_tag=f.tag.value,
            source_field=f.name,
        )
        for f in product.fields
        if f.bounds is not None
    ]
    caps = [
        _column(
            sum_cap_feature(name),
            FLOAT64,
            f"Cap on one subject's counted {name} per UTC day when this row was counted "
            "(the contract's max_sum_per_period), from which the DP layer derives sensitivity",
            privacy_tag=_NON_PERSONAL,
        )
        for name in product.contribution.max_sum_per_period
    ]
    events = _column(
        EVENTS,
        INT64,
        "Events counted, at most the per-subject contribution bound",
        privacy_tag=_SENSITIVE,
    )
    subject = ViewSpec(
        name=subject_view_name(product.name),
        entities=(SUBJECT_KEY,),
        columns=(_column(WINDOW_KEY, INT64, privacy_tag=_NON_PERSONAL), events, *measures),
        online=True,
        ttl_days=product.retention_days,
        description=f"Per-subject bounded aggregates of {product.name} in the current window",
        owner=product.owner,
        tags=MappingProxyType({"privacy_tag": _SENSITIVE, "purpose": product.purpose}),
    )
    window = ViewSpec(
        name=window_view_name(product.name),
        entities=(WINDOW_KEY, PARTITION_KEY),
        columns=(
            _column(
                DISTINCT_SUBJECTS,
                INT64,
                "Distinct pseudonymous subjects in the window",
                privacy_tag=_SENSITIVE,
                dp_sensitivity="1",
            ),
            events,
            _column(
                CONTRIBUTION_BOUND,
                INT64,
                "Most events one subject could contribute to this row: the processor's "
                "bound when it counted them, from which the DP layer derives sensitivity",
                privacy_tag=_NON_PERSONAL,
            ),
            _column(
                NEW_SUBJECTS_PERIOD,
                INT64,
                "Subjects whose first counted record of the UTC day is in this window: "
                "summed over a day's windows, each subject counts at most once",
                privacy_tag=_SENSITIVE,
                dp_sensitivity="1",
            ),
            _column(
                NEW_SUBJECTS_HOUR,
                INT64,
                "Subjects whose first counted record of the UTC hour is in this window: "
                "summed over an hour's windows, each subject counts at most once",
                privacy_tag=_SENSITIVE,
                dp_sensitivity="1",
            ),
            _column(
                TRUNCATED_EVENTS,
                INT64,
                "Records of this window not counted because their subject had reached a "
                "per-day bound (records or windows): the truncation bias, measured",
                privacy_tag=_SENSITIVE,
            ),
            _column(
                MAX_RECORDS_PER_PERIOD,
                INT64,
                "Records of one subject counted per UTC day when this row was counted",
                privacy_tag=_NON_PERSONAL,
            ),
            _column(
                MAX_WINDOWS_PER_PERIOD,
                INT64,
                "Windows one subject may appear in per UTC day when this row was counted",
                privacy_tag=_NON_PERSONAL,
            ),
            _column(
                WINDOW_COMPLETE,
                INT64,
                "1 when the partition's event-time watermark had passed the window's end "
                "plus the grace period when it closed; 0 when it closed by the wall clock "
                "(idle partition) or received late events: the DP layer marks it partial",
                privacy_tag=_NON_PERSONAL,
            ),
            _column(
                WINDOW_WATERMARK,
                INT64,
                "The partition's event-time watermark when the window closed",
                privacy_tag=_NON_PERSONAL,
            ),
            _column(
                WINDOW_LATE_EVENTS,
                INT64,
                "Events of the window that arrived after it closed (not counted)",
                privacy_tag=_NON_PERSONAL,
            ),
            *measures,
            *caps,
        ),
        online=True,
        ttl_days=product.retention_days,
        description=f"Contribution-bounded window aggregates of {product.name} for DP release",
        owner=product.owner,
        tags=MappingProxyType({"privacy_tag": "aggregate", "purpose": product.purpose}),
    )
    return ProductViews(subject, window, events_view(product))


def events_view_fields(product: DataProduct) -> dict[str, pa.Field]:
    """The event columns the events view serves: every published field but the privacy
    unit's token (the entity key) and the event time (the view's timestamp). Date columns
    are left out: Feast has no calendar-date type."""
    from feature_repo.events import event_schema

    schema = event_schema(product)
    skip = {product.subject_field, product.event_time}
    types = _arrow_types()
    return {f.name: f for f in schema if f.name not in skip and f.type in types}


def _arrow_types() -> dict[pa.DataType, str]:
    import pyarrow as pa

    from feature_repo.events import EVENT_TIME_TYPE

    return {pa.int64(): INT64, pa.float64(): FLOAT64, pa.string(): STRING,
            EVENT_TIME_TYPE: UNIX_TIMESTAMP}  # fmt: skip


def events_view(product: DataProduct) -> ViewSpec:
    """The offline-only view over ``product``'s pseudonymised event files."""
    types = _arrow_types()
    columns = tuple(
        ColumnSpec(
            name,
            types[column.type],
            f"Product-event field {name} as published",
            MappingProxyType({k.decode(): v.decode() for k, v in (column.metadata or {}).items()}),
        )
        for name, column in events_view_fields(product).items()
    )
    return ViewSpec(
        name=events_view_name(product.name),
        entities=(SUBJECT_KEY,),
        columns=columns,
        online=False,
        ttl_days=product.retention_days,
        description=f"Pseudonymised {product.name} events, one row per event, for training",
        owner=product.owner,
        tags=MappingProxyType({"privacy_tag": "pseudonymised", "purpose": product.purpose}),
    )
