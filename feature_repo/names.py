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


def sum_feature(field_name: str) -> str:
    """Feature name of a per-window bounded sum of ``field_name``."""
    return f"{field_name}_sum"
