"""Membership-inference audit of a trained model: does it give away who was in training?

Members are rows the model trained on (each participating domain's training split),
non-members the same domains' held-out rows (the split is a hash of subject and time, so
both come from the same distribution). Three attacks score every such row:

* the **loss threshold** (Yeom et al., 2018): "member" when the model's loss is low;
* the **shadow model** attack (Shokri et al., 2017) and the **shadow-calibrated** attack
  (offline LiRA, Carlini et al., 2022), both from shadow models that replay the target's
  training (``federation.shadow``).

Each is reported per domain and pooled as:

* **attack AUC**: the probability that a random member scores as more of a member than a
  random non-member (0.5: the model's outputs say nothing about membership);
* **membership advantage**: the largest TPR - FPR over all thresholds (0: no threshold
  separates members from non-members better than chance; 1: perfectly);
* **TPR at 1% FPR**: members caught while at most 1% of non-members are accused.

Advantage is bounded by differential privacy: with (epsilon, delta)-DP over the unit the
attack targets, advantage <= e^epsilon - 1 + delta (Yeom et al.), so a lower advantage with
DP on is the expected and measurable effect. privmesh's DP unit is a whole domain's
update per round, a stronger unit than one row. A small advantage is evidence, not proof,
that rows do not leak: a stronger attacker (many more shadows, shadows trained with each
target row) may do better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from torch import nn

from federation.features import Dataset
from federation.model import roc_auc, row_losses
from federation.shadow import DomainRows, ShadowPlan, attack_scores

if TYPE_CHECKING:
    from feature_repo.store import DomainFeatureStore
    from federation.registry import ModelRegistry


@dataclass(frozen=True)
class AttackResult:
    """An attack's success on ``members`` vs ``non_members`` rows."""

    attack_auc: float
    advantage: float
    threshold: float
    """The best threshold, in the attack's score units (a loss for ``loss_threshold``)."""
    tpr_at_1pct_fpr: float
    """Members caught while at most 1% of non-members are accused (Carlini et al.)."""
    members: int
    non_members: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return asdict(self)


def score_attack(
    member_scores: NDArray[np.floating], non_member_scores: NDArray[np.floating]
) -> AttackResult:
    """AUC, best advantage and TPR at 1% FPR of an attack that guesses "member" when a
    row's score is at least a threshold."""
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(non_member_scores, dtype=np.float64)
    if len(members) == 0 or len(others) == 0:
        raise ValueError("the attack needs at least one member and one non-member row")
    labels = np.concatenate([np.ones(len(members), np.int64), np.zeros(len(others), np.int64)])
    auc = roc_auc(labels, np.concatenate([members, others]))
    thresholds = np.unique(np.concatenate([members, others]))
    members_sorted, others_sorted = np.sort(members), np.sort(others)
    caught = len(members) - np.searchsorted(members_sorted, thresholds, side="left")
    accused = len(others) - np.searchsorted(others_sorted, thresholds, side="left")
    tpr, fpr = caught / len(members), accused / len(others)
    best = int(np.argmax(tpr - fpr))
    low_fpr = tpr[accused <= math.floor(0.01 * len(others))]
    return AttackResult(
        attack_auc=float(auc),
        advantage=float(max(0.0, tpr[best] - fpr[best])),
        threshold=float(thresholds[best]),
        tpr_at_1pct_fpr=float(low_fpr.max()) if len(low_fpr) else 0.0,
        members=len(members),
        non_members=len(others),
    )


def loss_threshold_attack(
    member_losses: NDArray[np.floating], non_member_losses: NDArray[np.floating]
) -> AttackResult:
    """The loss-threshold attack: guess "member" when the loss is at most the threshold."""
    result = score_attack(-np.asarray(member_losses), -np.asarray(non_member_losses))
    return replace(result, threshold=-result.threshold)


def audit_model(
    model: nn.Module,
    datasets: Mapping[str, Dataset],
    max_rows: int,
    seed: int = 0,
    plan: ShadowPlan | None = None,
) -> dict[str, object]:
    """Every attack per domain and pooled, on up to ``max_rows`` members and as many
    non-members per domain (balanced: the same count of each, drawn with ``seed``): the
    loss threshold, and with a shadow ``plan`` the two shadow-model attacks
    (``federation.shadow``). ``attack``, ``pooled`` and ``per_domain`` are those of the
    strongest attack (the largest pooled advantage); ``attacks`` holds each."""
    rng = np.random.default_rng(seed)
    # attack -> domain -> (member scores, non-member scores): higher is more likely a
    # member, except for loss_threshold, which keeps the losses (lower: a member)
    scored: dict[str, dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]] = {
        "loss_threshold": {}
    }
    rows: dict[str, DomainRows] = {}
    for domain, data in sorted(datasets.items()):
        count = min(max_rows, len(data.y_train), len(data.y_test))
        if count == 0:
            continue
        inside = rng.choice(len(data.y_train), count, replace=False)
        outside = rng.choice(len(data.y_test), count, replace=False)
        member = row_losses(model, data.x_train[inside], data.y_train[inside])
        other = row_losses(model, data.x_test[outside], data.y_test[outside])
        scored["loss_threshold"][domain] = (member, other)
        total = len(data.y_train) + len(data.y_test)
        rows[domain] = DomainRows(
            x=np.vstack([data.x_train, data.x_test]),
            y=np.concatenate([data.y_train, data.y_test]),
            half=rng.integers(0, 2, total).astype(np.int8),
            evaluate=np.concatenate([inside, len(data.y_train) + outside]),
            train_examples=len(data.y_train),
        )
    if not rows:
        raise ValueError("no participating domain has both training and held-out rows")
    if plan is not None:
        for attack, by_domain in attack_scores(model, plan, rows, max_rows, seed).items():
            # a domain's evaluation rows are its members, then as many non-members
            scored[attack] = {d: (s[: len(s) // 2], s[len(s) // 2 :]) for d, s in by_domain.items()}
    results: dict[str, tuple[AttackResult, dict[str, AttackResult]]] = {}
    for attack, sides in scored.items():
        judge = loss_threshold_attack if attack == "loss_threshold" else score_attack
        members, others = (np.concatenate(side) for side in zip(*sides.values(), strict=True))
        results[attack] = (judge(members, others), {d: judge(*s) for d, s in sides.items()})
    attacks = {
        attack: {
            "pooled": pooled.as_dict(),
            "per_domain": {d: r.as_dict() for d, r in per_domain.items()},
        }
        for attack, (pooled, per_domain) in results.items()
    }
    strongest = max(results, key=lambda a: results[a][0].advantage)
    return {"attack": strongest, **attacks[strongest], "attacks": attacks}


def audit_version(
    registry: ModelRegistry,
    version: str,
    stores: Mapping[str, DomainFeatureStore],
    max_rows: int = 5_000,
    seed: int = 0,
    shadows: int = 4,
) -> dict[str, object]:
    """Attack registered ``version`` with its participating domains' rows (read from
    ``stores``), with ``shadows`` shadow models per half of the rows (0: the loss
    threshold only); keep the result in the registry and return it."""
    from federation.features import load_dataset
    from federation.versions import load_version

    loaded = load_version(registry, version)
    lineage, task, encoding = loaded.lineage, loaded.task, loaded.encoding
    domains = sorted(lineage.get("domains", {}))
    missing = [d for d in domains if d not in stores]
    if missing:
        raise ValueError(f"no feature store for participating domains {missing} of {version}")
    plan = None
    if shadows:
        plan = ShadowPlan(
            make_model=loaded.fresh_model,
            config=loaded.run_config,
            shadows=shadows,
            lost_rounds=frozenset(lineage.get("rounds", {}).get("lost", [])),
            kept_rounds=(lineage.get("stopping") or {}).get("best_round"),
            clipping_norms={
                int(h["round"]): float(h["clipping_norm"])
                for h in lineage.get("rounds", {}).get("history", [])
                if h.get("clipping_norm")
            },
        )
    datasets = {d: load_dataset(stores[d], task, encoding) for d in domains}
    dp = lineage.get("dp", {})
    result = {
        **audit_model(loaded.model, datasets, max_rows, seed, plan),
        "max_rows_per_domain": max_rows,
        "shadows": shadows,
        "dp": {"enabled": dp.get("enabled"), "epsilon_total": dp.get("epsilon_total")},
    }
    result["recorded_at"] = registry.record_audit(version, "membership_inference", result)
    return result
