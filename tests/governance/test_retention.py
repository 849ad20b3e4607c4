"""Retention with a shortened contract retention: expired events, window history and
statistics and the online rows of subjects not seen since are purged, recent data is
kept, the pass is recorded; a zero retention cannot be declared."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from domains.contract import DomainContract
from domains.registry import get_contract
from domains.runtime import RuntimeSettings
from feature_repo.offline import read_all
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore
from governance.retention import read_runs, run_retention

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
OLD, NEW = "k1." + "a" * 26, "k1." + "b" * 26


def short_lived() -> DomainContract:
    """The support contract with its tickets kept 2 days."""
    contract = get_contract("support")
    product = contract.products[0].model_copy(update={"retention_days": 2})
    return contract.model_copy(update={"products": [product]})


def test_a_pass_purges_only_what_is_past_retention(isolated_env: Path) -> None:
    """Rows 5 days old go, rows from today stay; the subject seen only 5 days ago loses
    its online row; the record counts each kind."""
    contract = short_lived()
    runtime = RuntimeSettings()
    store = DomainFeatureStore(contract, runtime.data_dir, FeatureStoreSettings())
    store.apply()
    features = store.product_features("tickets")
    old, new = NOW - timedelta(days=5), NOW - timedelta(hours=1)
    history = pd.DataFrame(
        [
            {"subject": s, "window_start": int(t.timestamp()), "events": 1,
             "satisfaction_sum": 4.0, "handle_minutes_sum": 12.0, "event_timestamp": t}
            for s, t in ((OLD, old), (NEW, old), (NEW, new))
        ]
    )  # fmt: skip
    store.push(features.subject_push.name, history)
    store.append_offline(features.subject_view.name, history)
    windows = pd.DataFrame(
        [
            {"window_start": int(t.timestamp()), "partition": 0, "distinct_subjects": 3,
             "events": 4, "contribution_bound": 20, "satisfaction_sum": 9.0,
             "handle_minutes_sum": 30.0, "event_timestamp": t}
            for t in (old, new)
        ]
    )  # fmt: skip
    store.append_offline(features.window_view.name, windows)
    record = run_retention(
        {"support": contract}, {"support": store}, None, runtime.data_dir / "retention", NOW
    )
    [tickets] = record["domains"]["support"]["products"]
    assert tickets["subject_history"] == 2 and tickets["window_stats"] == 1
    assert tickets["expired_subjects"] == 1 and tickets["online"] >= 1
    kept = read_all(store.offline_folder(features.subject_view.name))
    assert kept["subject"].tolist() == [NEW]
    online = {r["subject"]: r["events"] for r in store.subject_features("tickets", [OLD, NEW])}
    assert online[OLD] is None and online[NEW] is not None
    assert read_runs(runtime.data_dir / "retention")[0]["run_id"] == record["run_id"]
    again = run_retention(
        {"support": contract}, {"support": store}, None, runtime.data_dir / "retention", NOW
    )
    assert again["domains"]["support"]["products"][0]["subject_history"] == 0


def test_zero_retention_is_refused() -> None:
    """A contract cannot declare keeping data for zero days."""
    contract = get_contract("support")
    raw = contract.model_dump(mode="json")
    raw["products"][0]["retention_days"] = 0
    with pytest.raises(ValidationError, match="retention_days"):
        DomainContract.model_validate(raw)


def test_cli_refuses_a_bad_time_and_runs_once(isolated_env: Path) -> None:
    """`privmesh retention run --now` needs an ISO time with offset; a pass runs without
    a broker (stores only) and is recorded."""
    from tests.conftest import free_port
    from tests.infra.test_cli import run_cli

    bad = run_cli("retention", "run", "--now", "yesterday")
    assert bad.returncode == 2 and "--now is not an ISO time" in bad.stderr
    env = {"PRIVMESH_KAFKA_EMBEDDED_PORT": str(free_port())}
    done = run_cli("retention", "run", "--domain", "support", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "removed 0 rows over 1 domains" in done.stdout
    assert len(read_runs(isolated_env / "retention")) == 1
