"""The ServerApp's run over an in-process grid: rounds, dropouts, refusals, bounds.

The ClientApp handlers are the real ones reading real Feast stores; only the transport
(SuperLink, SuperNodes) is replaced (tests/fakes.py). tests/federation/test_engine.py
runs the same jobs on the real deployment engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from federation import wire
from federation.coordinator import Coordinator
from federation.errors import NotEnoughParticipants
from tests.fakes import InProcessGrid
from tests.federation.conftest import AIRPORTS, fill_store

NODES = {11: "ewr", 22: "jfk", 33: "lga"}
FAST = {
    "num-server-rounds": 3,
    "local-epochs": 2,
    "batch-size": 32,
    "straggler-grace": 0.05,
    "node-wait-timeout": 0.5,
}


def job(
    data_dir: Path, *, grid_config: Any = None, **config: Any
) -> tuple[Coordinator, InProcessGrid]:
    run_config = {**FAST, **config}
    grid = InProcessGrid(grid_config or NODES, run_config, str(data_dir))
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    return Coordinator(grid, context, poll_seconds=0.001), grid  # type: ignore[arg-type]


def released(coordinator: Coordinator) -> list[int]:
    return [r.round for r in coordinator.rounds if r.released]


def test_a_secure_job_trains_every_round_and_records_its_lineage(airport_data: Path) -> None:
    """Three SecAgg+ rounds over three domains: all released, the model improves, the
    lineage names each domain's example count, the protocol and the privacy settings."""
    coordinator, _ = job(airport_data)
    lineage = coordinator.run()
    assert released(coordinator) == [1, 2, 3]
    assert lineage["rounds"]["lost"] == []
    assert set(lineage["domains"]) == set(AIRPORTS)
    assert all(d["train_examples"] > 900 for d in lineage["domains"].values())
    assert lineage["secure_aggregation"]["enabled"] and not lineage["dp"]["enabled"]
    assert lineage["metrics"]["global"]["pooled_auc"] > 0.6
    assert lineage["model"]["parameters"] == 220 * 64 + 64 + 64 + 1


def test_secure_and_plain_aggregation_give_the_same_model(airport_data: Path) -> None:
    """Same seeds, same data: SecAgg+'s result equals plain FedAvg's to ~1e-9 relative."""
    secure, _ = job(airport_data, **{"num-server-rounds": 2})
    secure.run()
    plain, _ = job(airport_data, **{"num-server-rounds": 2, "secure-aggregation": False})
    plain.run()
    error = np.linalg.norm(secure.weights - plain.weights) / np.linalg.norm(plain.weights)
    assert error < 1e-5


@pytest.mark.parametrize(
    "step,round_",
    [("share_keys", 2), ("collect", 2), ("unmask", 2), ("unmask", 3), ("keygen", 1)],
    ids=["before-key-sharing", "after-key-sharing", "while-unmasking", "final-unmask", "census"],
)
def test_a_domain_dying_at_any_step_loses_no_round(
    airport_data: Path, step: str, round_: int
) -> None:
    """jfk dies at one step of the protocol; with threshold 2 of 3, every round is
    released and the next rounds go on with the two survivors."""
    coordinator, grid = job(airport_data)
    grid.kill(22, step, round_)
    coordinator.run()
    assert released(coordinator) == [1, 2, 3]
    later = [r for r in coordinator.rounds if r.round > round_]
    assert all(r.participants == ["ewr", "lga"] for r in later)


def test_two_dead_domains_of_three_stop_the_run_with_a_reason(airport_data: Path) -> None:
    """Below min-domains rounds are lost, each saying why; nothing blocks."""
    coordinator, grid = job(airport_data)
    grid.kill(22, "collect", 2)
    grid.kill(33, "collect", 2)
    coordinator.run()
    assert released(coordinator) == [1]
    lost = [r for r in coordinator.rounds if not r.released]
    assert lost and all(r.lost_reason for r in lost)


def test_a_domain_without_data_is_left_out_and_named(airport_data: Path, tmp_path: Path) -> None:
    """A domain with an empty store is refused at the census (no_training_data); the run
    continues with the other two."""
    import shutil

    shutil.rmtree(airport_data / "features" / "lga" / "offline" / "departures_events")
    coordinator, _ = job(airport_data)
    lineage = coordinator.run()
    assert set(lineage["domains"]) == {"ewr", "jfk"}
    assert "no_training_data" in lineage["refused_domains"]["lga"]
    assert released(coordinator) == [1, 2, 3]


def test_a_domain_with_nan_features_is_refused_with_a_count(tmp_path: Path) -> None:
    """A NaN in a feature column is that domain's invalid_training_data, with the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data_dir = tmp_path / "data"
    for seed, domain in enumerate(AIRPORTS, start=1):
        fill_store(data_dir, domain, 600, seed)
    folder = data_dir / "features" / "jfk" / "offline" / "departures_events"
    (path,) = sorted(folder.glob("part-*.parquet"))
    table = pq.read_table(path)
    distance = table.column("distance").to_pylist()
    distance[:7] = [None] * 7
    table = table.set_column(
        table.schema.get_field_index("distance"), "distance", pa.array(distance, pa.int64())
    )
    pq.write_table(table, path)
    coordinator, _ = job(data_dir, **{"num-server-rounds": 1})
    lineage = coordinator.run()
    assert (
        "NaN" in lineage["refused_domains"]["jfk"]
        and "[invalid_training_data]" in lineage["refused_domains"]["jfk"]
    )


def test_too_few_domains_stop_before_training_with_every_reason(tmp_path: Path) -> None:
    """With two of three domains empty, the census stops the job and names both."""
    data_dir = tmp_path / "data"
    fill_store(data_dir, "ewr", 300, 1)
    for domain in ("jfk", "lga"):
        fill_store(data_dir, domain, 0, 2)
    coordinator, _ = job(data_dir)
    with pytest.raises(NotEnoughParticipants, match=r"jfk.*no_training_data.*lga"):
        coordinator.run()


def test_a_huge_update_is_clipped_and_the_model_moves_at_most_the_norm(airport_data: Path) -> None:
    """A domain that trains with a learning rate of 10 sends a huge update; clipping
    bounds it, so the global model moves at most clipping-norm per round (in the space it
    trains in: without standardisation, whose folding rewrites the first layer)."""
    config = {"num-server-rounds": 1, "clipping-norm": 0.5, "standardise": False}
    coordinator, grid = job(airport_data, **config)
    grid.contexts[22].run_config["learning-rate"] = 10.0
    before = coordinator.weights.copy()
    coordinator.run()
    assert coordinator.rounds[0].clipped >= 1
    assert np.linalg.norm(coordinator.weights - before) <= 0.5 + 1e-9


def test_an_unclipped_update_is_caught_in_the_aggregate(airport_data: Path) -> None:
    """A domain that skips clipping (plain aggregation: its update is replaced by a huge
    one) is caught by the aggregate-norm check: the round is discarded, not applied."""

    def inflate(reply: Any) -> Any:
        content: RecordDict = reply.content
        if wire.UPDATE_RECORD in content.array_records:
            (delta,) = wire.arrays_of(content, wire.UPDATE_RECORD)
            content.array_records[wire.UPDATE_RECORD] = wire.arrays_record([delta * 1e6 + 1.0])
        return reply

    config = {"num-server-rounds": 1, "secure-aggregation": False, "standardise": False}
    coordinator, grid = job(airport_data, **config)
    grid.tamper[33] = inflate
    before = coordinator.weights.copy()
    coordinator.run()
    assert not coordinator.rounds[0].released and "unclipped" in coordinator.rounds[0].lost_reason
    assert np.array_equal(coordinator.weights, before)


def test_dp_rounds_report_their_privacy_loss(airport_data: Path) -> None:
    """With DP on, every released round carries its epsilon and the running total."""
    coordinator, _ = job(
        airport_data, **{"num-server-rounds": 2, "dp-noise-multiplier": 1.0, "clipping-norm": 1.0}
    )
    lineage = coordinator.run()
    first, second = (r.privacy for r in coordinator.rounds)
    assert second["epsilon_total"] > first["epsilon_total"] == pytest.approx(first["epsilon_round"])
    assert second["rho_total"] == pytest.approx(2 * first["rho_round"])
    assert lineage["dp"]["epsilon_total"] == pytest.approx(second["epsilon_total"])
    assert lineage["dp"]["rho_per_round"] == pytest.approx(0.5, rel=1e-6)


def test_robust_aggregation_runs_without_secure_aggregation(airport_data: Path) -> None:
    """The coordinate-wise median is available when updates are in clear."""
    coordinator, _ = job(
        airport_data,
        **{"num-server-rounds": 2, "secure-aggregation": False, "aggregator": "median"},
    )
    coordinator.run()
    assert released(coordinator) == [1, 2]


def union_of_training_rows(data_dir: Path) -> np.ndarray:
    """Every airport's encoded training rows, read from its store as its ClientApp does."""
    from domains.registry import load_contracts
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.features import load_dataset, task_encoding
    from federation.task_specs import get_task

    task, contracts = get_task("flight_delay"), load_contracts()
    encoding = task_encoding(task, contracts)
    return np.vstack(
        [
            load_dataset(
                DomainFeatureStore(contracts[d], data_dir, FeatureStoreSettings()), task, encoding
            ).x_train
            for d in AIRPORTS
        ]
    )


@pytest.mark.parametrize("secure", [True, False], ids=["secagg", "plain"])
def test_the_statistics_round_gives_the_centralised_standardisation(
    airport_data: Path, secure: bool
) -> None:
    """Round 0 (SecAgg+ or plain) yields the union's column means and standard deviations;
    the registered weights are folded back onto the raw columns."""
    coordinator, _ = job(airport_data, **{"num-server-rounds": 2, "secure-aggregation": secure})
    lineage = coordinator.run()
    assert lineage["standardisation"]["enabled"] and released(coordinator) == [1, 2]
    union = union_of_training_rows(airport_data)
    scaling = coordinator.standardisation
    assert scaling is not None
    assert np.allclose(scaling.mean, union.mean(axis=0), atol=1e-6)
    varying = union.std(axis=0) > 1e-3
    assert np.allclose(scaling.std[varying], union.std(axis=0)[varying], rtol=1e-4, atol=1e-6)
    assert lineage["metrics"]["global"]["pooled_auc"] > 0.6


def test_validation_stopping_keeps_the_best_round(airport_data: Path) -> None:
    """With patience 1 and a learning rate far too high, training stops once the pooled
    held-out AUC fails to improve, and the registered model is the best round's: its
    final pooled AUC equals the best one seen."""
    config = {"num-server-rounds": 8, "patience": 1, "learning-rate": 3.0, "local-epochs": 1}
    coordinator, _ = job(airport_data, **config)
    lineage = coordinator.run()
    stopping = lineage["stopping"]
    assert stopping["best_round"] is not None
    assert lineage["metrics"]["global"]["pooled_auc"] == pytest.approx(
        stopping["best_pooled_auc"], abs=1e-9
    )
    if stopping["stopped_early"]:
        assert len(released(coordinator)) < 8


def test_stopping_counts_evaluations_without_improvement() -> None:
    """The rule itself: the best model is kept, a worse or equal AUC adds to the count,
    an unevaluated round (None) or a repeated one does not, 0 never stops."""
    from federation.coordinator import Stopping

    rule = Stopping(2)
    for released_, auc in [(0, 0.5), (1, 0.6), (1, 0.1), (2, None), (2, 0.55), (3, 0.6)]:
        rule.observe(released_, np.full(3, float(released_)), auc)
    assert rule.stop and rule.best is not None and rule.best[0] == 1 and rule.best_auc == 0.6
    never = Stopping(0)
    for released_ in range(10):
        never.observe(released_, np.zeros(1), 0.5)
    assert not never.stop


def test_adaptive_clipping_moves_the_norm_every_round_and_fixed_keeps_it(
    airport_data: Path,
) -> None:
    """With DP, C starts at clipping-norm (0.001, far below these updates' norms, about
    10) and each round moves geometrically towards their median from the domains' noisy
    bits, so all three rounds clip with a different norm and it grows; with
    dp-adaptive-clipping off every round keeps 0.001. False-failure rate: C shrinks in a
    round only if the bits' noise (sd 0.5 on a sum of -1.5) exceeds +3 sd: 1.3e-3 a
    round, and the last is below the first only if two of three do (< 1e-5)."""
    dp = {"num-server-rounds": 3, "dp-noise-multiplier": 0.5, "clipping-norm": 0.001}
    coordinator, _ = job(airport_data, **dp, patience=0)
    lineage = coordinator.run()
    norms = [r["clipping_norm"] for r in lineage["rounds"]["history"]]
    assert len(norms) == 3 and len(set(norms)) == 3 and norms[0] == 0.001
    assert norms[-1] > norms[0]
    adaptive = lineage["dp"]["adaptive_clipping"]
    assert adaptive["enabled"] and adaptive["final_norm"] != norms[-1]
    fixed, _ = job(airport_data, **dp, patience=0, **{"dp-adaptive-clipping": False})
    fixed_lineage = fixed.run()
    assert {r["clipping_norm"] for r in fixed_lineage["rounds"]["history"]} == {0.001}
    assert not fixed_lineage["dp"]["adaptive_clipping"]["enabled"]


def test_each_domain_adds_the_noise_sized_for_the_domains_taking_part(
    airport_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three domains share keys with min-domains 2: every update's noise has standard
    deviation z_u * C_r / sqrt(3) for the round's own C_r (not sized for min-domains,
    sqrt(3/2) times more), the bit's z_b / sqrt(3), and the round is charged as complete."""
    from federation import rounds
    from federation.dp import DPConfig

    used: list[tuple[int, float]] = []
    real = rounds.gaussian_noise

    def spy(vector: np.ndarray, scale: float) -> np.ndarray:
        used.append((len(vector), scale))
        return real(vector, scale)

    monkeypatch.setattr(rounds, "gaussian_noise", spy)
    coordinator, _ = job(
        airport_data, **{"num-server-rounds": 2, "dp-noise-multiplier": 1.0, "patience": 0}
    )
    lineage = coordinator.run()
    config: DPConfig = coordinator.config.dp
    z_u = config.update_noise_multiplier
    history = lineage["rounds"]["history"]
    expected_updates = sorted(
        config.domain_scale(3, z_u, r["clipping_norm"]) for r in history for _ in range(3)
    )
    update_scales = sorted(s for n, s in used if n > 1)
    assert update_scales == pytest.approx(expected_updates, rel=1e-12)
    assert [r["noise_std"] for r in history] == pytest.approx(
        [config.domain_scale(3, z_u, r["clipping_norm"]) for r in history]
    )
    assert all(r["noise_sized_for"] == 3 for r in history)
    bit = config.adaptive_clipping()
    assert bit is not None
    bit_scales = [s for n, s in used if n == 1]
    assert bit_scales == pytest.approx([bit.bit_noise / np.sqrt(3)] * 6)
    assert z_u > config.noise_multiplier  # the bits took their share of the budget
    assert lineage["dp"]["rounds_charged"] == [[3, 3], [3, 3]]
    assert lineage["dp"]["rho_total"] == pytest.approx(2 * 1 / (2 * 1.0**2))


def test_a_domain_refuses_noise_sized_for_more_domains_than_the_task_has() -> None:
    """A coordinator claiming more participants than the task has domains would shrink
    every domain's noise: the domain refuses the round."""
    from federation.errors import FederationError
    from federation.participant import _round_clipping
    from federation.run_config import RunConfig
    from federation.task_specs import get_task

    config = RunConfig.from_flower({"dp-noise-multiplier": 1.0})
    task = get_task("flight_delay")
    assert _round_clipping({"clipping_norm": 0.5, "participants": 3}, config, task) == (0.5, 3)
    with pytest.raises(FederationError, match="under-noise"):
        _round_clipping({"clipping_norm": 0.5, "participants": 1000}, config, task)
    with pytest.raises(FederationError, match="positive"):
        _round_clipping({"clipping_norm": float("nan"), "participants": 3}, config, task)


def test_server_side_dp_adapts_the_norm_from_the_clipped_flags(airport_data: Path) -> None:
    """Without SecAgg+ and with dp-clipping = server, the coordinator takes the bits from
    the domains' clipped flags (C = 0.001 clips every update, so C grows) and noises the
    sum itself at z_u * C: the round is charged whole. False-failure rate as in the
    secure test (< 1e-5)."""
    config = {
        "num-server-rounds": 3,
        "secure-aggregation": False,
        "dp-clipping": "server",
        "dp-noise-multiplier": 0.5,
        "clipping-norm": 0.001,
        "patience": 0,
    }
    coordinator, _ = job(airport_data, **config)
    lineage = coordinator.run()
    norms = [r["clipping_norm"] for r in lineage["rounds"]["history"]]
    assert len(set(norms)) == 3 and norms[-1] > norms[0] == 0.001
    z_u = coordinator.config.dp.update_noise_multiplier
    assert [r["noise_std"] for r in lineage["rounds"]["history"]] == pytest.approx(
        [z_u * c for c in norms]
    )
    assert lineage["dp"]["rounds_charged"] == [[1, 1]] * 3
