"""Shadow models for the membership-inference audit: an attacker replays the target's
training on rows of its own and learns from those models what membership looks like.

A shadow model is trained exactly as the target was (``federation.rounds.local_update``
per domain and round, the same aggregation, clipping, DP noise, learning-rate schedule
and rounds lost, from the version's recorded run configuration) on a random 80% of the
attacker's rows per domain; the attacker knows which rows each shadow saw. Two attacks
are built from the same shadows:

* ``shadow_model`` (Shokri et al., 2017): a classifier (scikit-learn's histogram gradient
  boosting) learns "member or not" from the shadows' log-odds of the true label and the
  label itself, on rows each shadow did and did not train on; it then scores the target's
  outputs.
* ``shadow_calibrated`` (offline LiRA, Carlini et al., 2022, with a global variance; the
  difficulty calibration of Watson et al., 2022): a row's score is the target's log-odds
  of its label minus the mean of shadows that never saw it, in units of the shadows'
  spread. An inherently easy row no longer looks like a member because its loss is low.

The audit cross-fits: every domain's rows (members and held-out alike) are split in two
halves; shadows trained on one half attack the evaluation rows of the other, so no
evaluation row is ever in a shadow's training data or in the attack classifier's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from federation.aggregation import ServerOptimizer, combine, weighted_mean
from federation.errors import InvalidAuditConfig, InvalidTrainingData
from federation.model import flatten, get_weights, set_weights, true_class_logits, unflatten
from federation.rounds import local_update
from federation.run_config import SERVER_STEPS, RunConfig
from federation.standardise import Standardisation, local_moments

ATTACKS = ("shadow_model", "shadow_calibrated")
IN_SHARE = 0.8
"""Share of the attacker's half that a shadow trains on (at most the target's row count):
shadows should be as large as the target, whose generalisation they mimic (measured on
the bench.ops model: 0.8 raised the calibrated attack's TPR at 1% FPR from 0.019 to 0.031
over 0.5, at the same cost). The rest is the attack classifier's non-members."""


@dataclass(frozen=True)
class DomainRows:
    """What the audit holds of one domain: all its rows, the half each belongs to, and
    which rows are scored."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    half: NDArray[np.int8]
    """0 or 1 per row: shadows trained on one half attack the other's evaluation rows."""
    evaluate: NDArray[np.int64]
    """Indices of the rows the attacks score (the audit's members and non-members)."""
    train_examples: int
    """Rows the target trained on in this domain: a shadow trains on at most as many."""


@dataclass(frozen=True)
class ShadowPlan:
    """How the attacker trains its shadow models: as the target was trained."""

    make_model: Callable[[], nn.Module]
    """A fresh model of the target's architecture."""
    config: RunConfig
    """The target's run configuration."""
    shadows: int = 4
    """Shadow models per half of the rows (at least 2)."""
    lost_rounds: frozenset[int] = frozenset()
    """Rounds the target's run lost (their updates were never applied)."""
    kept_rounds: int | None = None
    """How many applied rounds the registered model had (validation-based stopping keeps
    an earlier round's model; None: every round)."""
    clipping_norms: Mapping[int, float] = field(default_factory=dict)
    """Each round's clipping norm in the target's run (adaptive clipping moves it; a
    round not listed clips with the configured one)."""

    def __post_init__(self) -> None:
        check_shadow_count(self.shadows, allow_none=False)


def check_shadow_count(shadows: int, allow_none: bool = True) -> None:
    """Refuse a shadow count the attacks cannot use (0, if allowed, skips them)."""
    if shadows < 2 and not (allow_none and shadows == 0):
        raise InvalidAuditConfig(
            f"the shadow attacks need at least 2 shadow models (the calibrated attack "
            f"estimates their spread), got {shadows}; 0 skips them"
        )


def replay(
    make_model: Callable[[], nn.Module],
    config: RunConfig,
    data: Mapping[str, tuple[NDArray[np.float32], NDArray[np.int64]]],
    seed: int,
    lost_rounds: frozenset[int] = frozenset(),
    kept_rounds: int | None = None,
    clipping_norms: Mapping[int, float] | None = None,
) -> nn.Module:
    """A model trained on ``data`` (rows per domain) the way ``config`` trained the
    target: every round the target released, each domain's local update, combined and
    applied by the server optimiser.

    The DP noise here is the attacker's simulation of the mechanism, not a release, so it
    is drawn with numpy (OpenDP's exact sampler costs ~30 us per element)."""
    if not data:
        raise InvalidTrainingData("a shadow model needs rows in at least one domain")
    rng = np.random.default_rng(seed)

    def noise(vector: NDArray[np.float64], scale: float) -> NDArray[np.float64]:
        return vector + rng.normal(0.0, scale, vector.shape)

    shadow_config = replace(config, train=replace(config.train, seed=seed))
    torch.manual_seed(seed)  # the coordinator seeds the initial model the same way
    model = make_model()
    shapes = [tuple(w.shape) for w in get_weights(model)]
    weights = flatten(get_weights(model))
    step = config.aggregator if config.aggregator in SERVER_STEPS else "fedavg"
    optimizer = ServerOptimizer(config.server_learning_rate, config.server_momentum, step)
    scaling = None
    if config.standardises:  # the pooled statistics round 0 computes under SecAgg+
        ordered = sorted(data.items())
        scaling = Standardisation.from_moments(
            weighted_mean(
                [local_moments(x) for _, (x, _) in ordered], [len(y) for _, (_, y) in ordered]
            )
        )
        data = {d: (scaling.apply(x), y) for d, (x, y) in data.items()}
    applied = 0
    for round_ in range(1, config.rounds + 1):
        if kept_rounds is not None and applied >= kept_rounds:
            break  # the target kept the model of this many applied rounds (stopping)
        if round_ in lost_rounds:
            continue
        applied += 1
        norm = (clipping_norms or {}).get(round_)
        updates, counts = [], []
        for domain, (x, y) in sorted(data.items()):
            set_weights(model, unflatten(weights, shapes))
            update = local_update(
                model,
                x,
                y,
                shadow_config,
                round_,
                domain,
                noise,
                clipping_norm=norm,
                participants=len(data),
            )
            updates.append(update.delta)
            counts.append(update.weight)
        mean = combine(config, updates, counts, noise, clipping_norm=norm)
        weights = optimizer.step(weights, mean)
    if scaling is not None:
        first = next(iter(model.parameters())).shape
        weights = scaling.fold(weights, int(first[1]), int(first[0]))
    set_weights(model, unflatten(weights, shapes))
    return model


def attack_scores(
    target: nn.Module,
    plan: ShadowPlan,
    rows: Mapping[str, DomainRows],
    max_rows: int,
    seed: int = 0,
) -> dict[str, dict[str, NDArray[np.float64]]]:
    """Each attack's membership score (higher: more likely a member) of every domain's
    evaluation rows, in ``DomainRows.evaluate`` order. ``plan.shadows`` models are
    trained per half; the attack classifier learns from up to ``max_rows`` rows in and
    out of each shadow per domain."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    shadows = plan.shadows
    rng = np.random.default_rng(seed)
    scores = {a: {d: np.zeros(len(r.evaluate)) for d, r in rows.items()} for a in ATTACKS}
    target_logits = {
        d: true_class_logits(target, r.x[r.evaluate], r.y[r.evaluate]) for d, r in rows.items()
    }
    for half in (0, 1):
        scored = {d: np.flatnonzero(r.half[r.evaluate] == half) for d, r in rows.items()}
        features: list[NDArray[np.float64]] = []
        labels: list[NDArray[np.int64]] = []
        out_logits: dict[str, list[NDArray[np.float64]]] = {d: [] for d in rows}
        for _ in range(shadows):
            inside, outside = {}, {}
            for d, r in rows.items():
                pool = rng.permutation(np.flatnonzero(r.half != half))
                size = min(int(len(pool) * IN_SHARE), r.train_examples)
                inside[d], outside[d] = pool[:size], pool[size:]
            data = {d: (rows[d].x[i], rows[d].y[i]) for d, i in inside.items() if len(i)}
            model = replay(
                plan.make_model,
                plan.config,
                data,
                int(rng.integers(2**31)),
                plan.lost_rounds,
                plan.kept_rounds,
                plan.clipping_norms,
            )
            for d, r in rows.items():
                seen, unseen_known = inside[d][:max_rows], outside[d][:max_rows]
                known = np.concatenate([seen, unseen_known])
                member = np.repeat(np.array([1, 0], np.int64), [len(seen), len(unseen_known)])
                if len(known):
                    logit = true_class_logits(model, r.x[known], r.y[known])
                    features.append(np.column_stack([logit, r.y[known]]))
                    labels.append(member)
                unseen = r.evaluate[scored[d]]
                out_logits[d].append(true_class_logits(model, r.x[unseen], r.y[unseen]))
        classifier = HistGradientBoostingClassifier(random_state=seed + half)
        classifier.fit(np.vstack(features), np.concatenate(labels))
        # Offline LiRA with one variance for all rows: few shadows estimate it poorly per row.
        spread = [np.stack(out_logits[d]) for d in rows]
        residuals = np.concatenate([(s - s.mean(axis=0)).ravel() for s in spread])
        cells = sum(s.shape[1] for s in spread)
        sigma = math.sqrt(float((residuals**2).sum()) / max(1, cells * (shadows - 1))) or 1.0
        for (d, r), out in zip(rows.items(), spread, strict=True):
            at = scored[d]
            if not len(at):
                continue
            logit = target_logits[d][at]
            labels_here = r.y[r.evaluate[at]]
            scores["shadow_model"][d][at] = classifier.predict_proba(
                np.column_stack([logit, labels_here])
            )[:, 1]
            scores["shadow_calibrated"][d][at] = (logit - out.mean(axis=0)) / sigma
    return scores
