"""Test doubles (used only in tests, never as product defaults)."""

from __future__ import annotations

from typing import Any


class FakeWindowSource:
    """In-memory window aggregates standing in for a domain's Feast store."""

    def __init__(
        self, windows: dict[int, int] | None = None, rows: dict[int, dict[str, Any]] | None = None
    ) -> None:
        self.windows = dict(windows or {})
        self.rows = dict(rows or {})

    def window_stats(
        self, product: str, window_starts: list[int], partitions: int = 1
    ) -> list[dict[str, Any]]:
        """Rows for ``window_starts`` (already summed over partitions); unknown ones None."""
        return [
            {"window_start": w, **self.rows[w]}
            if w in self.rows
            else {
                "window_start": w,
                "distinct_subjects": self.windows.get(w),
                "events": None,
                "contribution_bound": None,
            }
            for w in window_starts
        ]
