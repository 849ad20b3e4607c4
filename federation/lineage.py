"""The lineage document of a trained model version: what the registry keeps about it.

Built from a finished :class:`~federation.coordinator.Coordinator` run: the task and its
encoding, the model's shape, every domain's part and metrics, each round's history, the
secure aggregation and DP settings with the privacy spent, the stopping point, the
training settings and the code that trained it.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from federation.run_config import DEFAULTS

if TYPE_CHECKING:
    from federation.coordinator import Coordinator


def lineage(run: Coordinator) -> dict[str, Any]:
    """Everything the registry keeps about the model version ``run`` trained."""
    import flwr

    from federation.registry import privmesh_version

    dp = run.config.dp
    spent = run.accountant.spent_rounds(run.charges) if run.accountant else None
    clipping = run.clipping
    examples = {p.domain: p.train_examples for p in run.members.values()}
    flower = run.grid.run
    return {
        "task": run.task.name,
        "task_spec": json.loads(run.task.model_dump_json()),
        "encoding": json.loads(run.encoding.to_json()),
        "model": {
            "kind": run.task.model.kind,
            "hidden": run.task.model.hidden,
            "features": run.encoding.width,
            "parameters": run.parameters,
            "shapes": [list(s) for s in run.shapes],
        },
        "domains": {
            p.domain: {
                "train_examples": p.train_examples,
                "test_examples": p.test_examples,
                "rows_without_label": p.without_label,
                "rounds_participated": sum(p.domain in r.participants for r in run.rounds),
                "metrics": run.final.get(p.domain, {}),
            }
            for p in run.members.values()
        },
        "refused_domains": run.refused,
        "example_counts": examples,
        "rounds": {
            "planned": run.config.rounds,
            "completed": run.released,
            "lost": [r.round for r in run.rounds if not r.released],
            "history": [
                {
                    "round": r.round,
                    "released": r.released,
                    "lost_reason": r.lost_reason,
                    "participants": r.participants,
                    "dropped": r.dropped,
                    "train_loss": r.train_loss,
                    "auc_before": r.pooled_auc,
                    "clipped": r.clipped,
                    "seconds": r.seconds,
                    "privacy": r.privacy,
                    "clipping_norm": r.clipping_norm,
                    "noise_std": r.noise_std,
                    "noise_sized_for": r.sized_for,
                }
                for r in run.rounds
            ],
        },
        "secure_aggregation": {
            "enabled": run.config.secure_aggregation,
            "protocol": "SecAgg+ (privmesh: AES-CTR masks, 32-bit modulus, weights as "
            "fractions, no clipping at quantisation)",
            "num_shares": run.config.num_shares,
            "reconstruction_threshold": run.config.reconstruction_threshold,
            "min_domains": run.config.min_domains,
            "clipping_norm": dp.clipping_norm,
        },
        "dp": _record_dp(run)
        if run.config.record_dp.enabled
        else {
            "enabled": dp.enabled,
            "unit": "one domain's update per round (add/remove a domain)",
            "clipping": dp.clipping,
            "noise_multiplier": dp.noise_multiplier,
            "clipping_norm": dp.clipping_norm,
            "update_noise_multiplier": dp.update_noise_multiplier if dp.enabled else None,
            "noise_sized_for": "the domains that shared keys for each round (asked, without "
            "SecAgg+); a round summed with fewer vectors is charged proportionally more",
            "adaptive_clipping": {
                "enabled": clipping is not None,
                "quantile": dp.clipping_quantile,
                "learning_rate": dp.clipping_learning_rate,
                "initial_norm": dp.clipping_norm,
                "final_norm": clipping.norm if clipping else None,
                "bit_noise_multiplier": clipping.bit_noise if clipping else None,
            },
            "delta": dp.delta,
            "min_domains": dp.min_domains,
            "rounds_released": run.released,
            "rounds_charged": [list(c) for c in run.charges],
            "rho_per_round": run.accountant.spent(1).rho if run.accountant else None,
            "epsilon_per_round": run.accountant.spent(1).epsilon if run.accountant else None,
            "rho_total": spent.rho if spent else None,
            "epsilon_total": spent.epsilon if spent else None,
        },
        "run_config": {**DEFAULTS, **dict(run.context.run_config)},
        "standardisation": {
            "enabled": run.standardisation is not None,
            "how": "pooled column mean and std of every domain's training rows, from "
            "their moments under secure aggregation; folded into the first layer",
        },
        "stopping": {
            "patience": run.config.patience,
            "best_round": run.stopping.best[0] if run.stopping.best else None,
            "best_pooled_auc": run.stopping.best_auc,
            "stopped_early": run.stopping.stop,
        },
        "training": {
            "aggregator": run.config.aggregator,
            "server_learning_rate": run.config.server_learning_rate,
            "server_momentum": run.config.server_momentum,
            "local_epochs": run.config.train.epochs,
            "learning_rate": run.config.train.learning_rate,
            "batch_size": run.config.train.batch_size,
            "max_local_steps": run.config.train.max_steps,
            "seed": run.config.train.seed,
        },
        "metrics": {
            "global": {
                "pooled_auc": run.final_auc,
                "weighted_auc": _weighted_metric(run.final, "auc"),
                "weighted_loss": _weighted_metric(run.final, "loss"),
            },
            "per_domain": run.final,
        },
        "code": {
            "privmesh": privmesh_version(),
            "source": run.config.code_version or None,
            "flwr": flwr.__version__,
            "fab_id": flower.fab_id,
            "fab_version": flower.fab_version,
            "fab_hash": flower.fab_hash,
            "run_id": flower.run_id,
        },
        "started_at": run.started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _record_dp(run: Coordinator) -> dict[str, Any]:
    """The lineage's DP section of a record-level (DP-SGD) run: each domain's schedule and
    the epsilon it spent over the rounds it trained in (and the moments round)."""
    config = run.config.record_dp
    domains: dict[str, Any] = {}
    for p in run.members.values():
        plan = run.config.record_plan(p.train_examples)
        trained = sum(p.domain in r.participants for r in run.rounds if r.round > 0)
        domains[p.domain] = {
            "rows": plan.rows,
            "sample_rate": plan.sample_rate,
            "expected_batch": plan.expected_batch,
            "steps_per_round": plan.steps_per_round,
            "noise_multiplier": plan.noise_multiplier,
            "rounds_trained": trained,
            "epsilon_planned": plan.epsilon(),
            "epsilon_spent": plan.epsilon(trained, run.standardisation is not None),
        }
    spent = [d["epsilon_spent"] for d in domains.values()]
    return {
        "enabled": True,
        "unit": "one training row of a domain (add/remove a row); a person with k rows in "
        "a domain at k times epsilon, a person in several domains at the sum of theirs",
        "mechanism": "DP-SGD in each domain (Poisson sampling, per-row gradient clipping, "
        "Gaussian noise; Opacus), RDP accounting per domain; column moments noised",
        "target_epsilon": config.epsilon,
        "record_clipping_norm": config.clipping_norm,
        "statistics_noise_multiplier": config.statistics_noise
        if run.standardisation is not None
        else None,
        "delta": config.delta,
        "domains": domains,
        "rounds_released": run.released,
        "epsilon_total": max(spent) if spent else 0.0,
        "epsilon_total_means": "the largest epsilon any domain's rows spent",
        "min_domains": run.config.min_domains,
    }


def _weighted_metric(metrics: dict[str, dict[str, float]], name: str) -> float | None:
    rows = [(m[name], m["examples"]) for m in metrics.values() if not math.isnan(m[name])]
    total = sum(n for _, n in rows)
    return sum(v * n for v, n in rows) / total if total else None
