"""Per-domain model serving: promotion validated on each domain's own held-out rows, a
regression for one domain refused or rolled back for that domain only, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from domains.registry import load_contracts
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from federation.errors import InvalidServingChange, ModelRegression, UnknownModelVersion
from federation.model import unflatten
from federation.registry import ModelRegistry
from federation.serving import promote, rollback, served
from tests.federation.conftest import AIRPORTS
from tests.federation.test_coordinator import job

TASK = "flight_delay"


@pytest.fixture
def setup(airport_data: Path) -> tuple[ModelRegistry, dict[str, DomainFeatureStore], str, str]:
    """A trained version (good) and the same model with its output layer negated (bad:
    it ranks every departure backwards), both registered."""
    coordinator, _ = job(airport_data)
    lineage = coordinator.run()
    registry = ModelRegistry("sqlite", airport_data)
    weights = unflatten(coordinator.weights, coordinator.shapes)
    good = registry.register(TASK, weights, lineage, "completed")
    flipped = [*weights[:-2], -weights[-2], -weights[-1]]
    bad = registry.register(
        TASK, [np.asarray(w, np.float32) for w in flipped], lineage, "completed"
    )
    contracts = load_contracts()
    stores = {
        d: DomainFeatureStore(contracts[d], airport_data, FeatureStoreSettings()) for d in AIRPORTS
    }
    return registry, stores, good, bad


def test_a_regression_for_one_domain_is_refused_and_rolled_back_there_only(
    setup: tuple[ModelRegistry, dict[str, DomainFeatureStore], str, str],
) -> None:
    """good serves every airport; bad is refused for ewr (worse on its rows); forced on
    jfk, a rollback returns jfk to good while ewr and lga never changed."""
    registry, stores, good, bad = setup
    for domain in AIRPORTS:
        change = promote(registry, good, domain, stores[domain], "ops")
        assert change.action == "promote" and change.metrics["auc"] > 0.6
    with pytest.raises(ModelRegression, match=rf"{bad} scores AUC .* ewr keeps {good}"):
        promote(registry, bad, "ewr", stores["ewr"], "ops")
    assert served(registry, TASK, "ewr") == good
    forced = promote(registry, bad, "jfk", stores["jfk"], "ops", force=True)
    assert forced.previous == good and served(registry, TASK, "jfk") == bad
    back = rollback(registry, TASK, "jfk", stores["jfk"], "ops")
    assert (back.action, back.version, back.previous) == ("rollback", good, bad)
    assert {d: served(registry, TASK, d) for d in AIRPORTS} == dict.fromkeys(AIRPORTS, good)
    assert [h["action"] for h in registry.serving_history(TASK, "ewr")] == ["promote"]
    jfk = registry.serving_history(TASK, "jfk")
    assert [h["action"] for h in jfk] == ["promote", "promote", "rollback"]
    assert jfk[1]["metrics"]["forced"] is True and jfk[1]["changed_by"] == "ops"


def test_repeats_and_bad_requests_change_nothing(
    setup: tuple[ModelRegistry, dict[str, DomainFeatureStore], str, str],
) -> None:
    """Promoting the served version again is a no-op; rolling back with no history, to a
    version that never existed, or with nothing earlier: clear errors, no record."""
    registry, stores, good, _ = setup
    with pytest.raises(InvalidServingChange, match="nothing to roll back"):
        rollback(registry, TASK, "lga", stores["lga"], "ops")
    promote(registry, good, "lga", stores["lga"], "ops")
    assert promote(registry, good, "lga", stores["lga"], "ops").action == "unchanged"
    with pytest.raises(InvalidServingChange, match="never served a flight_delay version other"):
        rollback(registry, TASK, "lga", stores["lga"], "ops")
    with pytest.raises(UnknownModelVersion, match="flight_delay-v99"):
        rollback(registry, TASK, "lga", stores["lga"], "ops", to_version="flight_delay-v99")
    with pytest.raises(UnknownModelVersion):
        promote(registry, "flight_delay-v99", "lga", stores["lga"], "ops")
    with pytest.raises(InvalidServingChange, match="max_regression"):
        promote(registry, good, "lga", stores["lga"], "ops", max_regression=-1)
    assert len(registry.serving_history(TASK, "lga")) == 1
