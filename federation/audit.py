"""Membership-inference audit of a trained model: does it give away who was in training?

The loss-threshold attack (Yeom et al., 2018): an attacker who sees a row and the model
guesses "member" when the model's loss on that row is low. The audit runs it with the
participating domains' own rows: members are rows the model trained on (each domain's
training split), non-members are the same domains' held-out rows (the split is a hash of
subject and time, so both come from the same distribution). It reports:

* **attack AUC**: the probability that a random member has lower loss than a random
  non-member (0.5: the loss says nothing about membership);
* **membership advantage**: the largest TPR - FPR over all loss thresholds (0: no
  threshold separates members from non-members better than chance; 1: perfectly).

Advantage is bounded by differential privacy: with (epsilon, delta)-DP over the unit the
attack targets, advantage <= e^epsilon - 1 + delta (Yeom et al.), so a lower advantage with
DP on is the expected and measurable effect. privmesh's DP unit is a whole domain's
update per round, a stronger unit than one row. A small advantage is evidence, not proof,
that rows do not leak: a stronger attacker (shadow models, per-example calibration) may do
better.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from torch import nn

from federation.features import Dataset
from federation.task import roc_auc, row_losses

if TYPE_CHECKING:
    from feature_repo.store import DomainFeatureStore
    from federation.registry import ModelRegistry


@dataclass(frozen=True)
class AttackResult:
    """The loss-threshold attack's success on ``members`` vs ``non_members`` rows."""

    attack_auc: float
    advantage: float
    threshold: float
    members: int
    non_members: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return asdict(self)


def loss_threshold_attack(
    member_losses: NDArray[np.floating], non_member_losses: NDArray[np.floating]
) -> AttackResult:
    """Attack AUC and the best threshold's advantage (guess "member" when loss <= t)."""
    members = np.asarray(member_losses, dtype=np.float64)
    others = np.asarray(non_member_losses, dtype=np.float64)
    if len(members) == 0 or len(others) == 0:
        raise ValueError("the attack needs at least one member and one non-member row")
    labels = np.concatenate([np.ones(len(members), np.int64), np.zeros(len(others), np.int64)])
    scores = -np.concatenate([members, others])  # lower loss: more likely a member
    auc = roc_auc(labels, scores)
    thresholds = np.unique(np.concatenate([members, others]))
    members_sorted, others_sorted = np.sort(members), np.sort(others)
    tpr = np.searchsorted(members_sorted, thresholds, side="right") / len(members)
    fpr = np.searchsorted(others_sorted, thresholds, side="right") / len(others)
    best = int(np.argmax(tpr - fpr))
    return AttackResult(
        attack_auc=float(auc),
        advantage=float(max(0.0, tpr[best] - fpr[best])),
        threshold=float(thresholds[best]),
        members=len(members),
        non_members=len(others),
    )


def audit_model(
    model: nn.Module, datasets: Mapping[str, Dataset], max_rows: int, seed: int = 0
) -> dict[str, object]:
    """The attack per domain and pooled, on up to ``max_rows`` members and as many
    non-members per domain (balanced: the same count of each, drawn with ``seed``)."""
    rng = np.random.default_rng(seed)
    per_domain: dict[str, dict[str, float | int]] = {}
    pooled_members, pooled_others = [], []
    for domain, data in sorted(datasets.items()):
        count = min(max_rows, len(data.y_train), len(data.y_test))
        if count == 0:
            continue
        inside = rng.choice(len(data.y_train), count, replace=False)
        outside = rng.choice(len(data.y_test), count, replace=False)
        member = row_losses(model, data.x_train[inside], data.y_train[inside])
        other = row_losses(model, data.x_test[outside], data.y_test[outside])
        per_domain[domain] = loss_threshold_attack(member, other).as_dict()
        pooled_members.append(member)
        pooled_others.append(other)
    if not pooled_members:
        raise ValueError("no participating domain has both training and held-out rows")
    pooled = loss_threshold_attack(np.concatenate(pooled_members), np.concatenate(pooled_others))
    return {"attack": "loss_threshold", "pooled": pooled.as_dict(), "per_domain": per_domain}


def audit_version(
    registry: ModelRegistry,
    version: str,
    stores: Mapping[str, DomainFeatureStore],
    max_rows: int = 5_000,
    seed: int = 0,
) -> dict[str, object]:
    """Attack registered ``version`` with its participating domains' rows (read from
    ``stores``), keep the result in the registry and return it."""
    from federation.features import load_dataset
    from federation.versions import load_version

    loaded = load_version(registry, version)
    lineage, task, encoding = loaded.lineage, loaded.task, loaded.encoding
    domains = sorted(lineage.get("domains", {}))
    missing = [d for d in domains if d not in stores]
    if missing:
        raise ValueError(f"no feature store for participating domains {missing} of {version}")
    datasets = {d: load_dataset(stores[d], task, encoding) for d in domains}
    dp = lineage.get("dp", {})
    result = {
        **audit_model(loaded.model, datasets, max_rows, seed),
        "max_rows_per_domain": max_rows,
        "dp": {"enabled": dp.get("enabled"), "epsilon_total": dp.get("epsilon_total")},
    }
    result["recorded_at"] = registry.record_audit(version, "membership_inference", result)
    return result
