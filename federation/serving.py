"""Which model version each domain (cohort) is served, with promotion and rollback.

A version is promoted per domain, after it is evaluated on that domain's held-out rows
(read from the domain's own store): it replaces the version the domain is served only if
it is not worse by more than ``max_regression`` AUC on the same rows, so a model that
helps most domains but hurts one is promoted for the others and refused for that one.
A rollback returns one domain to its previously served version (or a named one) and
leaves every other domain as it is. Every change is appended to the registry's
``model_serving`` log with who made it and the validation metrics it was based on;
:func:`served` is the serving-side selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from federation.errors import InvalidServingChange, ModelRegression

if TYPE_CHECKING:
    from feature_repo.store import DomainFeatureStore
    from federation.registry import ModelRegistry

Action = Literal["promote", "rollback", "unchanged"]


@dataclass(frozen=True)
class ServingChange:
    """What a promotion or rollback did for one domain."""

    task: str
    domain: str
    action: Action
    version: str
    previous: str | None
    metrics: dict[str, Any]
    previous_metrics: dict[str, Any] | None


def served(registry: ModelRegistry, task: str, domain: str) -> str | None:
    """The version of ``task`` that serves ``domain`` now (None: none promoted yet)."""
    return registry.served(task, domain)


def domain_metrics(
    registry: ModelRegistry, version: str, domain: str, store: DomainFeatureStore
) -> dict[str, Any]:
    """AUC and loss of ``version`` on ``domain``'s held-out rows."""
    from federation.features import load_dataset
    from federation.model import evaluate
    from federation.versions import load_version

    loaded = load_version(registry, version)
    data = load_dataset(store, loaded.task, loaded.encoding)
    if len(data.y_test) == 0 or len(set(data.y_test.tolist())) < 2:
        raise InvalidServingChange(
            f"{domain} has no held-out rows with both labels to validate {version} on"
        )
    result = evaluate(loaded.model, data.x_test, data.y_test)
    return {"auc": result.auc, "loss": result.loss, "examples": result.examples}


def promote(
    registry: ModelRegistry,
    version: str,
    domain: str,
    store: DomainFeatureStore,
    changed_by: str,
    max_regression: float = 0.005,
    force: bool = False,
) -> ServingChange:
    """Serve ``version`` to ``domain`` unless it does worse there than the version served
    now by more than ``max_regression`` AUC (``force`` overrides); promoting the version
    already served changes nothing."""
    if not 0 <= max_regression <= 1:
        raise InvalidServingChange(f"max_regression must be in [0, 1], got {max_regression}")
    task = registry.get(version).task
    current = registry.served(task, domain)
    metrics = domain_metrics(registry, version, domain, store)
    if current == version:
        return ServingChange(task, domain, "unchanged", version, current, metrics, metrics)
    before = domain_metrics(registry, current, domain, store) if current else None
    if before is not None and not force and metrics["auc"] < before["auc"] - max_regression:
        raise ModelRegression(
            f"{version} scores AUC {metrics['auc']:.4f} on {domain}'s held-out rows against "
            f"{before['auc']:.4f} for {current}, the version it is served: worse by more than "
            f"{max_regression}; {domain} keeps {current} (--force promotes anyway)"
        )
    registry.record_serving(
        task, domain, version, "promote", changed_by,
        {"validation": metrics, "replaced": current, "replaced_validation": before,
         "forced": force},
    )  # fmt: skip
    return ServingChange(task, domain, "promote", version, current, metrics, before)


def rollback(
    registry: ModelRegistry,
    task: str,
    domain: str,
    store: DomainFeatureStore,
    changed_by: str,
    to_version: str | None = None,
) -> ServingChange:
    """Serve ``domain`` its previously served version of ``task`` again (or
    ``to_version``); other domains are not touched."""
    history = registry.serving_history(task, domain)
    if not history:
        raise InvalidServingChange(f"{domain} is served no {task} model: nothing to roll back")
    current = history[-1]["version"]
    if to_version is None:
        earlier = [h["version"] for h in history if h["version"] != current]
        if not earlier:
            raise InvalidServingChange(
                f"{domain} was never served a {task} version other than {current}; name the "
                "version to roll back to"
            )
        target = earlier[-1]
    else:
        found = registry.get(to_version)  # UnknownModelVersion when it never existed
        if found.task != task:
            raise InvalidServingChange(
                f"{to_version} is a {found.task} model, not a version of {task}"
            )
        target = to_version
    metrics = domain_metrics(registry, target, domain, store)
    if target == current:
        return ServingChange(task, domain, "unchanged", target, current, metrics, metrics)
    registry.record_serving(
        task, domain, target, "rollback", changed_by,
        {"validation": metrics, "replaced": current},
    )  # fmt: skip
    return ServingChange(task, domain, "rollback", target, current, metrics, None)
