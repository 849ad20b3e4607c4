"""Moved to ``feature_repo.preaggregate``: the pre-aggregate files are feature-store data
that the processor writes and the DP API reads, so their format lives below both.

This name only carries ``streams.erasure`` until its import moves there too; nothing
else may import it (tests/test_layering.py).
"""

from __future__ import annotations

from feature_repo.preaggregate import erase, preaggregate_folder

__all__ = ["erase", "preaggregate_folder"]
