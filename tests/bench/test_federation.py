"""bench.federation's pieces that decide what it reports: the split of validation from
test rows (the DP column's calibration is ``federation.dp_sgd``'s, tested there)."""

from __future__ import annotations

import pandas as pd

from bench.federation import TEST_FRACTION, split_test


def test_test_rows_are_set_aside_from_the_training_stores() -> None:
    """The set-aside test rows are a fifth of the rows and never among those loaded for
    training and validation; the split is the same every run."""
    frame = pd.DataFrame({"x": range(1_000)})
    kept, test = split_test(frame)
    assert len(test) == round(TEST_FRACTION * len(frame))
    assert set(kept.index).isdisjoint(test.index) and len(kept) + len(test) == len(frame)
    assert split_test(frame)[1].index.equals(test.index)
