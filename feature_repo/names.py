"""Column and feature names shared with readers that must not import Feast (the API)."""

from __future__ import annotations

SUBJECT_KEY = "subject"
WINDOW_KEY = "window_start"
PARTITION_KEY = "partition"
CONTRIBUTION_BOUND = "contribution_bound"
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
    """Feature name of a per-window bounded sum of ``field_name``."""
    return f"{field_name}_sum"


def sum_cap_feature(field_name: str) -> str:
    """Feature name of the per-subject, per-day cap on ``field_name``'s counted total that the
    processor applied when it counted a window row (``max_sum_per_period``; a row without it
    was counted without a cap)."""
    return f"{field_name}_sum_cap"
