"""``privmesh train`` with DP: the noise outlook is printed and a useless configuration
is refused before anything starts, unless ``--force``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from federation.errors import NoiseDrownsSignal
from infra.commands.federation import _dp_preflight


def test_the_cli_refuses_noise_that_drowns_the_model_in_one_line() -> None:
    """flight_delay (14k parameters, three domains) at z = 100: one error line with the
    outlook, the code and the --force hint; exit 1, no federation started."""
    command = ["train", "--task", "flight_delay", "--dp-noise", "100", "--rounds", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", *command],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("privmesh: error:")]
    assert len(errors) == 1
    assert "[dp_noise_drowns_signal]" in errors[0] and "--force" in errors[0]
    assert "noise-to-signal" in errors[0] and "epsilon" in errors[0]
    assert "SuperLink" not in result.stderr


def test_force_and_no_dp_pass_the_preflight() -> None:
    """--force lets the same configuration through; without DP there is nothing to check."""
    values = {"task": "flight_delay", "dp-noise-multiplier": 100.0, "num-server-rounds": 2}
    with pytest.raises(NoiseDrownsSignal):
        _dp_preflight(values, force=False)
    _dp_preflight(values, force=True)
    _dp_preflight({"task": "flight_delay"}, force=False)
