"""Column and feature names shared with readers that must not import Feast (the API)."""

from __future__ import annotations

SUBJECT_KEY = "subject"
WINDOW_KEY = "window_start"
PARTITION_KEY = "partition"
CONTRIBUTION_BOUND = "contribution_bound"


def sum_feature(field_name: str) -> str:
    """Feature name of a per-window bounded sum of ``field_name``."""
    return f"{field_name}_sum"
