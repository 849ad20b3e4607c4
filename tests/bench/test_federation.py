"""bench.federation's pieces that decide what it reports: the DP column's noise level and
the split of validation from test rows."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.federation import DP_DELTA, DP_EPSILON, TEST_FRACTION, dp_noise_for, split_test
from federation.dp import Accountant, DPConfig


def spent(z: float, rounds: int) -> float:
    config = DPConfig(noise_multiplier=z, clipping_norm=1.0, delta=DP_DELTA, min_domains=1)
    return Accountant(config).spent(rounds).epsilon


@pytest.mark.parametrize("rounds", [1, 30])
def test_the_dp_column_uses_the_smallest_noise_that_meets_the_target(rounds: int) -> None:
    """The chosen multiplier spends at most epsilon 10 over the rounds; 0.02 less would
    spend more (so the column is not noisier than the target needs)."""
    z = dp_noise_for(rounds)
    assert spent(z, rounds) <= DP_EPSILON < spent(z - 0.02, rounds)


def test_test_rows_are_set_aside_from_the_training_stores() -> None:
    """The set-aside test rows are a fifth of the rows and never among those loaded for
    training and validation; the split is the same every run."""
    frame = pd.DataFrame({"x": range(1_000)})
    kept, test = split_test(frame)
    assert len(test) == round(TEST_FRACTION * len(frame))
    assert set(kept.index).isdisjoint(test.index) and len(kept) + len(test) == len(frame)
    assert split_test(frame)[1].index.equals(test.index)
