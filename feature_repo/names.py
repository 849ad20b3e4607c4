"""Column, feature and store names, defined once for every package that writes or reads them.

The stream processor writes window and subject rows in these columns, the feature store
reads and merges them, the DP API sums them and the catalog describes them: each name
is spelled here only, so a rename cannot leave a reader behind. This module imports
nothing, so readers that must not import Feast (the API) can use it.
"""

from __future__ import annotations

# Entity keys of the feature views, and the Feast timestamp column of every pushed row.
SUBJECT_KEY = "subject"
WINDOW_KEY = "window_start"
PARTITION_KEY = "partition"
EVENT_TIMESTAMP = "event_timestamp"
# Window rows (and subject rows, for EVENTS): the contribution-bounded aggregates the DP
# layer adds noise to, and the most events one subject could contribute to the row.
DISTINCT_SUBJECTS = "distinct_subjects"
EVENTS = "events"
CONTRIBUTION_BOUND = "contribution_bound"
# Window rows merged over the ingest partitions (``DomainFeatureStore.window_stats``): the
# number of partitions summed.
WINDOW_PARTITIONS = "partitions"
# Window rows: 1 when the partition's event-time watermark passed the window's end plus the
# grace period when it closed (0: closed by the wall clock while idle, or amended for late
# events), the watermark (epoch s), and the window's events that arrived after it closed.
WINDOW_COMPLETE = "complete"
WINDOW_WATERMARK = "watermark"
WINDOW_LATE_EVENTS = "late_events"
# Window rows, per-subject per-day contribution bounds (docs/contribution-bounds.md): subjects
# whose first counted record of the UTC day / hour is in the window, the window's records not
# counted because a per-day bound was hit, and the per-day bounds applied.
NEW_SUBJECTS_PERIOD = "new_subjects_period"
NEW_SUBJECTS_HOUR = "new_subjects_hour"
TRUNCATED_EVENTS = "truncated_events"
MAX_RECORDS_PER_PERIOD = "max_records_per_period"
MAX_WINDOWS_PER_PERIOD = "max_windows_per_period"


def sum_feature(field_name: str) -> str:
    """Feature name of a per-window bounded sum of ``field_name`` (``<measure>_sum``)."""
    return f"{field_name}_sum"


def sum_cap_feature(field_name: str) -> str:
    """Feature name of the per-subject, per-day cap on ``field_name``'s counted total that the
    processor applied when it counted a window row (``max_sum_per_period``; a row without it
    was counted without a cap): ``<measure>_sum_cap``."""
    return f"{field_name}_sum_cap"


def feast_project(domain: str) -> str:
    """Feast project (and catalog database) name of ``domain``'s feature store."""
    return f"privmesh_{domain}"


def subject_view_name(product: str) -> str:
    """Name of ``product``'s per-subject feature view (and its push source's stem)."""
    return f"{product}_subject_window"


def window_view_name(product: str) -> str:
    """Name of ``product``'s per-window, per-partition feature view (and its push source's stem)."""
    return f"{product}_window_stats"


def events_view_name(product: str) -> str:
    """Name of ``product``'s offline-only view over its pseudonymised events."""
    return f"{product}_events"
