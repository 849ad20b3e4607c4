"""The run's tunables, from Flower's run config (``[tool.flwr.app.config]``), validated.

Every key has a default in ``pyproject.toml`` and can be overridden per run
(``privmesh train --set key=value`` or ``flwr run . -c 'key=value'``). Combinations
that cannot work are refused here, before any domain is contacted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from federation.dp import DPConfig
from federation.dp_sgd import DomainPlan, RecordDP, plan
from federation.errors import IncompatibleWithSecAgg, InvalidModelConfig, InvalidSecAggConfig
from federation.model import TrainConfig

Aggregator = Literal["fedavg", "fedavgm", "fedadam", "fedyogi", "median", "trimmed_mean"]
SERVER_STEPS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
ADAPTIVE = ("fedadam", "fedyogi")
ADAPTIVE_MAX_LEARNING_RATE = 0.5
"""An adaptive server step moves every weight by about ``server-learning-rate`` per round
whatever the update's size; above this it jumps past any optimum (Reddi et al. use 0.001
to 0.3)."""
ROBUST = ("median", "trimmed_mean")

DEFAULTS: dict[str, bool | int | float | str] = {
    "task": "flight_delay",
    "num-server-rounds": 30,
    "local-epochs": 1,
    "learning-rate": 0.05,
    "learning-rate-final": 0.0,
    "batch-size": 256,
    "max-local-steps": 0,
    "seed": 0,
    "secure-aggregation": True,
    "num-shares": 5,
    "reconstruction-threshold": 0.6,
    "min-domains": 2,
    "clipping-norm": 10.0,
    "dp-noise-multiplier": 0.0,
    "dp-epsilon": 0.0,
    "dp-record-clipping-norm": 1.0,
    "dp-delta": 1e-5,
    "dp-clipping": "client",
    "dp-adaptive-clipping": True,
    "dp-clipping-quantile": 0.5,
    "dp-clipping-learning-rate": 0.2,
    "aggregator": "fedavg",
    "server-learning-rate": 1.0,
    "server-momentum": 0.0,
    "trimmed-fraction": 0.2,
    "census-timeout": 600.0,
    "stage-timeout": 120.0,
    "straggler-grace": 2.0,
    "straggler-factor": 1.0,
    "node-wait-timeout": 60.0,
    "evaluate-every": 1,
    "standardise": True,
    "patience": 3,
    "code-version": "",
}


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration."""

    task: str
    rounds: int
    train: TrainConfig
    learning_rate_final: float
    secure_aggregation: bool
    num_shares: int
    reconstruction_threshold: float
    min_domains: int
    dp: DPConfig
    """Domain-level DP-FedAvg (``dp-noise-multiplier`` > 0)."""
    record_dp: RecordDP
    """Record-level DP-SGD in each domain (``dp-epsilon`` > 0; ``federation.dp_sgd``)."""
    aggregator: Aggregator
    server_learning_rate: float
    server_momentum: float
    trimmed_fraction: float
    census_timeout: float
    stage_timeout: float
    straggler_grace: float
    straggler_factor: float
    node_wait_timeout: float
    evaluate_every: int
    code_version: str
    standardise: bool = True
    """Standardise every column to the pooled mean and std of all domains' training rows,
    computed under secure aggregation before round 1 (``federation.standardise``); off
    with DP (the statistics round carries no noise)."""
    patience: int = 0
    """Stop once the pooled held-out AUC has not improved for this many evaluated rounds
    and keep the best round's model (0: train every round, keep the last)."""

    @classmethod
    def from_flower(cls, raw: Mapping[str, object]) -> RunConfig:
        """Parse ``context.run_config`` (missing keys take the defaults)."""
        unknown = sorted(set(raw) - set(DEFAULTS))
        if unknown:
            raise InvalidModelConfig(
                f"unknown run-config keys {unknown}; known: {sorted(DEFAULTS)}"
            )
        values = {**DEFAULTS, **raw}

        def number(key: str) -> float:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidModelConfig(f"run-config {key} must be a number, got {value!r}")
            return float(value)

        def integer(key: str, low: int, high: int) -> int:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidModelConfig(
                    f"run-config {key} must be an int in {low}..{high}, got {value!r}"
                )
            return value

        def choice(key: str, options: tuple[str, ...]) -> str:
            value = values[key]
            if value not in options:
                raise InvalidModelConfig(
                    f"run-config {key} must be one of {options}, got {value!r}"
                )
            return str(value)

        def flag(key: str) -> bool:
            value = values[key]
            if not isinstance(value, bool):
                raise InvalidModelConfig(f"run-config {key} must be true or false, got {value!r}")
            return value

        secure = flag("secure-aggregation")
        min_domains = integer("min-domains", 1, 10_000)
        dp = DPConfig(
            noise_multiplier=number("dp-noise-multiplier"),
            clipping_norm=number("clipping-norm"),
            delta=number("dp-delta"),
            min_domains=min_domains,
            clipping=cast(Literal["client", "server"], choice("dp-clipping", ("client", "server"))),
            adaptive=flag("dp-adaptive-clipping"),
            clipping_quantile=number("dp-clipping-quantile"),
            clipping_learning_rate=number("dp-clipping-learning-rate"),
        )
        config = cls(
            task=str(values["task"]),
            rounds=integer("num-server-rounds", 1, 100_000),
            train=TrainConfig(
                epochs=integer("local-epochs", 1, 1_000),
                learning_rate=number("learning-rate"),
                batch_size=integer("batch-size", 1, 1_000_000),
                seed=integer("seed", 0, 2**31 - 1),
                max_steps=integer("max-local-steps", 0, 10_000_000),
            ),
            learning_rate_final=number("learning-rate-final"),
            secure_aggregation=secure,
            num_shares=integer("num-shares", 3, 10_001),
            reconstruction_threshold=number("reconstruction-threshold"),
            min_domains=min_domains,
            dp=dp,
            record_dp=RecordDP(
                epsilon=number("dp-epsilon"),
                delta=number("dp-delta"),
                clipping_norm=number("dp-record-clipping-norm"),
            ),
            aggregator=cast(Aggregator, choice("aggregator", (*SERVER_STEPS, *ROBUST))),
            server_learning_rate=number("server-learning-rate"),
            server_momentum=number("server-momentum"),
            trimmed_fraction=number("trimmed-fraction"),
            census_timeout=number("census-timeout"),
            stage_timeout=number("stage-timeout"),
            straggler_grace=number("straggler-grace"),
            straggler_factor=number("straggler-factor"),
            node_wait_timeout=number("node-wait-timeout"),
            evaluate_every=integer("evaluate-every", 0, 100_000),
            code_version=str(values["code-version"]),
            standardise=flag("standardise"),
            patience=integer("patience", 0, 100_000),
        )
        config.check()
        return config

    def check(self) -> None:
        """Refuse combinations that cannot work, saying why."""
        if self.secure_aggregation:
            self._check_secure()
        if self.dp.enabled and self.record_dp.enabled:
            raise InvalidModelConfig(
                "dp-noise-multiplier (a domain as the privacy unit) and dp-epsilon (a "
                "training row as the unit) are two DP modes: set one of them"
            )
        if self.dp.enabled and self.aggregator in ROBUST:
            raise InvalidModelConfig(
                f"aggregator {self.aggregator!r} has no DP analysis here; use one of {SERVER_STEPS}"
            )
        self._check_server()

    def _check_secure(self) -> None:
        if self.aggregator in ROBUST:
            raise IncompatibleWithSecAgg(
                f"aggregator {self.aggregator!r} needs every domain's update in clear, but "
                f"under SecAgg+ the coordinator only learns their sum; use one of "
                f"{SERVER_STEPS}, or turn secure-aggregation off"
            )
        if self.dp.enabled and self.dp.clipping == "server":
            raise IncompatibleWithSecAgg(
                "dp-clipping = 'server' clips each update at the coordinator, which under "
                "SecAgg+ never sees one; use dp-clipping = 'client'"
            )
        if self.num_shares % 2 == 0:
            raise InvalidSecAggConfig(
                f"num-shares must be odd (SecAgg+'s ring neighbourhoods), got {self.num_shares}"
            )
        t = self.reconstruction_threshold
        if not (0 < t <= 1 or (t >= 2 and t.is_integer())):
            raise InvalidSecAggConfig(
                "reconstruction-threshold is a fraction of each neighbourhood in (0, 1] or "
                f"a share count >= 2, got {t}"
            )

    def _check_server(self) -> None:
        if not 0 < self.server_learning_rate <= 100:
            raise InvalidModelConfig(
                f"server-learning-rate must be in (0, 100], got {self.server_learning_rate}"
            )
        if not 0 <= self.server_momentum < 1:
            raise InvalidModelConfig(
                f"server-momentum must be in [0, 1), got {self.server_momentum}"
            )
        if self.patience and not self.evaluate_every:
            raise InvalidModelConfig("patience needs evaluate-every > 0 (it stops on evaluations)")
        if self.aggregator in ADAPTIVE and self.server_learning_rate > ADAPTIVE_MAX_LEARNING_RATE:
            raise InvalidModelConfig(
                f"aggregator {self.aggregator!r} moves each weight by about "
                f"server-learning-rate per round; set it to at most "
                f"{ADAPTIVE_MAX_LEARNING_RATE} (0.01 to 0.1 is typical), got "
                f"{self.server_learning_rate}"
            )
        if self.server_momentum > 0 and self.aggregator != "fedavgm":
            raise InvalidModelConfig("server-momentum needs aggregator = 'fedavgm'")
        if not 0 <= self.trimmed_fraction < 0.5:
            raise InvalidModelConfig(
                f"trimmed-fraction must be in [0, 0.5), got {self.trimmed_fraction}"
            )
        for name in ("census_timeout", "stage_timeout", "straggler_grace", "node_wait_timeout"):
            value = getattr(self, name)
            if not 0 < value <= 86_400:
                raise InvalidModelConfig(
                    f"{name.replace('_', '-')} must be in (0, 86400] s, got {value}"
                )
        if not 0 <= self.learning_rate_final <= self.train.learning_rate:
            raise InvalidModelConfig(
                "learning-rate-final must be 0 (no decay) or in (0, learning-rate], got "
                f"{self.learning_rate_final}"
            )
        if not 0 <= self.straggler_factor <= 100:
            raise InvalidModelConfig(
                f"straggler-factor must be in [0, 100], got {self.straggler_factor}"
            )

    def learning_rate_for(self, round_: int) -> float:
        """The local learning rate of round ``round_``: constant, or with
        ``learning-rate-final > 0`` a cosine decay from ``learning-rate`` (round 1) to it
        (the last round)."""
        start, final = self.train.learning_rate, self.learning_rate_final
        if final <= 0 or self.rounds == 1:
            return start
        progress = min(1.0, (round_ - 1) / (self.rounds - 1))
        return final + (start - final) * (1 + math.cos(math.pi * progress)) / 2

    @property
    def standardises(self) -> bool:
        """Whether this run standardises its columns: never with domain-level DP (its
        moments would be released unnoised); with record-level DP from noised moments."""
        return self.standardise and not self.dp.enabled

    @property
    def private(self) -> bool:
        """Whether the run trains under DP (either unit): what leaves a domain is then only
        its private update (training losses and clipping flags are withheld)."""
        return self.dp.enabled or self.record_dp.enabled

    def record_plan(self, rows: int) -> DomainPlan:
        """A domain's DP-SGD schedule for ``rows`` training rows (record-level DP)."""
        return plan(
            self.record_dp,
            rows,
            batch_size=self.train.batch_size,
            epochs=self.train.epochs,
            max_steps=self.train.max_steps,
            rounds=self.rounds,
            statistics=self.standardises,
        )

    def evaluates_before(self, round_: int) -> bool:
        """Whether round ``round_``'s training request also evaluates the model it carries
        (that of round ``round_ - 1``); the final model is always evaluated."""
        return self.evaluate_every > 0 and (round_ - 1) % self.evaluate_every == 0

    def threshold_for(self, neighbourhood: int) -> int:
        """The reconstruction threshold in a neighbourhood of ``neighbourhood`` nodes:
        more than half of it always, and at least the configured share or count."""
        t = self.reconstruction_threshold
        wanted = math.ceil(t * neighbourhood) if t <= 1 else int(t)
        return max(neighbourhood // 2 + 1, wanted)
