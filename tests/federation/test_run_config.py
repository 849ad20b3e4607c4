"""Run configuration: defaults match pyproject, bad values and impossible combinations refused."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import pytest

from federation.errors import IncompatibleWithSecAgg, InvalidModelConfig, InvalidSecAggConfig
from federation.run_config import DEFAULTS, RunConfig

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_declares_every_key_with_the_same_default() -> None:
    """[tool.flwr.app.config] and RunConfig agree, so `flwr run .` and the code match."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config == DEFAULTS
    parsed = RunConfig.from_flower(config)
    assert parsed.secure_aggregation and not parsed.dp.enabled and parsed.rounds == 30
    assert parsed.standardises and parsed.patience == 3 and parsed.aggregator == "fedavg"


@pytest.mark.parametrize(
    "changes,error,message",
    [
        ({"aggregator": "median"}, IncompatibleWithSecAgg, "only learns their sum"),
        ({"aggregator": "trimmed_mean"}, IncompatibleWithSecAgg, "only learns their sum"),
        (
            {"dp-noise-multiplier": 1.0, "dp-clipping": "server"},
            IncompatibleWithSecAgg,
            "never sees one",
        ),
        ({"num-shares": 4}, InvalidSecAggConfig, "odd"),
        ({"reconstruction-threshold": 1.5}, InvalidSecAggConfig, "fraction"),
        ({"num-server-rounds": 0}, InvalidModelConfig, "num-server-rounds"),
        ({"batch-size": "big"}, InvalidModelConfig, "batch-size"),
        ({"secure-aggregation": "yes"}, InvalidModelConfig, "true or false"),
        ({"server-momentum": 0.9}, InvalidModelConfig, "fedavgm"),
        ({"stage-timeout": 0.0}, InvalidModelConfig, "stage-timeout"),
        ({"rounds": 3}, InvalidModelConfig, "unknown run-config keys"),
        ({"standardise": "yes"}, InvalidModelConfig, "standardise must be true or false"),
        ({"standardise": 1}, InvalidModelConfig, "standardise must be true or false"),
        ({"patience": -1}, InvalidModelConfig, "patience must be an int"),
        ({"patience": 2.5}, InvalidModelConfig, "patience must be an int"),
        ({"patience": True}, InvalidModelConfig, "patience must be an int"),
        ({"patience": 10**9}, InvalidModelConfig, "patience must be an int"),
        ({"patience": 3, "evaluate-every": 0}, InvalidModelConfig, "patience needs evaluate"),
        ({"aggregator": "fedadam"}, InvalidModelConfig, "at most 0.5"),
        ({"aggregator": "fedyogi", "server-learning-rate": 5.0}, InvalidModelConfig, "at most"),
        (
            {"aggregator": "fedadam", "server-learning-rate": 0.05, "server-momentum": 0.9},
            InvalidModelConfig,
            "fedavgm",
        ),
        ({"aggregator": "adam"}, InvalidModelConfig, "aggregator"),
        (
            {"aggregator": "fedadam", "server-learning-rate": 0.0},
            InvalidModelConfig,
            "server-learning",
        ),
    ],
)
def test_impossible_runs_are_refused_before_they_start(
    changes: dict[str, object], error: type[Exception], message: str
) -> None:
    """Each refusal names the key or the combination, and how to fix it."""
    with pytest.raises(error, match=message):
        RunConfig.from_flower(changes)


def test_robust_aggregation_and_server_dp_need_plain_aggregation() -> None:
    """Without SecAgg+, median and server-side DP clipping are allowed."""
    RunConfig.from_flower({"secure-aggregation": False, "aggregator": "median"})
    RunConfig.from_flower(
        {"secure-aggregation": False, "dp-noise-multiplier": 1.0, "dp-clipping": "server"}
    )
    with pytest.raises(InvalidModelConfig, match="no DP analysis"):
        RunConfig.from_flower(
            {"secure-aggregation": False, "aggregator": "median", "dp-noise-multiplier": 1.0}
        )


def test_refusals_carry_a_stable_code() -> None:
    """A hostile new option is refused with the package's machine-readable code."""
    for changes in ({"patience": -5}, {"standardise": "off"}, {"aggregator": "fedyogi"}):
        with pytest.raises(InvalidModelConfig) as refused:
            RunConfig.from_flower(changes)
        assert refused.value.code == "invalid_model_config"


def test_adaptive_optimisers_work_under_secagg_and_dp() -> None:
    """FedAdam and FedYogi need only the mean update, so SecAgg+ and DP accept them;
    with DP the statistics round is off (it carries no noise)."""
    for kind in ("fedadam", "fedyogi"):
        config = RunConfig.from_flower({"aggregator": kind, "server-learning-rate": 0.05})
        assert config.secure_aggregation and config.standardises
        private = RunConfig.from_flower(
            {"aggregator": kind, "server-learning-rate": 0.05, "dp-noise-multiplier": 1.0}
        )
        assert private.dp.enabled and not private.standardises
    assert not RunConfig.from_flower({"standardise": False}).standardises
    assert RunConfig.from_flower({"patience": 0, "evaluate-every": 0}).patience == 0


@pytest.mark.parametrize(
    "size,fraction,expected", [(3, 0.6, 2), (5, 0.6, 3), (7, 0.6, 5), (5, 0.1, 3), (5, 4.0, 4)]
)
def test_thresholds_keep_a_majority(size: int, fraction: float, expected: int) -> None:
    """A fraction or a count, never at or below half of the neighbourhood."""
    config = RunConfig.from_flower({"reconstruction-threshold": fraction})
    assert config.threshold_for(size) == expected


def test_the_learning_rate_decays_along_a_cosine() -> None:
    """From learning-rate in round 1 to learning-rate-final in the last; constant if 0."""
    config = RunConfig.from_flower(
        {"num-server-rounds": 10, "learning-rate": 0.1, "learning-rate-final": 0.01}
    )
    rates = [config.learning_rate_for(r) for r in range(1, 11)]
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert rates[4] == pytest.approx(0.0628, abs=1e-4)
    assert RunConfig.from_flower({}).learning_rate_for(7) == 0.05
    with pytest.raises(InvalidModelConfig, match="learning-rate-final"):
        RunConfig.from_flower({"learning-rate-final": 0.5})


def test_dp_runs_clip_adaptively_by_default_and_refuse_a_bad_quantile() -> None:
    """With DP on and nothing else set, C adapts (starting at clipping-norm) and the
    updates' noise multiplier carries the bits' share; fixed clipping is one key away;
    a quantile outside (0, 1) is refused before any domain is contacted."""
    from federation.errors import InvalidDPConfig

    config = RunConfig.from_flower({"dp-noise-multiplier": 1.0})
    adaptive = config.dp.adaptive_clipping()
    assert adaptive is not None and adaptive.norm == config.dp.clipping_norm
    assert config.dp.update_noise_multiplier > 1.0
    fixed = RunConfig.from_flower({"dp-noise-multiplier": 1.0, "dp-adaptive-clipping": False})
    assert fixed.dp.adaptive_clipping() is None and fixed.dp.update_noise_multiplier == 1.0
    assert RunConfig.from_flower({}).dp.adaptive_clipping() is None  # no DP, nothing to adapt
    with pytest.raises(InvalidDPConfig, match="quantile"):
        RunConfig.from_flower({"dp-noise-multiplier": 1.0, "dp-clipping-quantile": 1.5})
