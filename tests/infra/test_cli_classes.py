"""``privmesh classes plan FILE``: a readable plan per daily class; ``privmesh classes bounds``:
the bound advisor spends first, then shows; bad input is one line."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import yaml

from domains.registry import load_contracts
from feature_repo.events import events_folder_name
from tests.dashboards_api.test_planner import DAILY
from tests.infra.test_cli import assert_one_line_error, run_cli

WIDE = {"COLUMNS": "200"}


def test_plan_prints_widths_and_what_would_meet_the_accuracy(tmp_path: Path) -> None:
    """With a given volume the table has every resolution's 95% half-width and relative
    width, the verdict on the declared accuracy and the suggestion (shop.orders has no room
    left: 1.7 allocated to its classes and 0.3 reserved for planning); without one, the
    absolute widths only."""
    path = tmp_path / "class.yaml"
    path.write_text(yaml.safe_dump(DAILY))
    env = {**WIDE, "PRIVMESH_DATA_DIR": str(tmp_path / "data")}
    given = run_cli("classes", "plan", str(path), "--volume-per-day", "20000", env=env)
    assert given.returncode == 0, given.stderr
    out = given.stdout
    for text in (
        "1h (declared)",
        "288",
        "1,364",
        "21.5%",
        "NOT met",
        "epsilon 2.152041",
        "0 not allocated to its other classes or its planning reserve",
    ):
        assert text in out, out
    unknown = run_cli("classes", "plan", str(path), env=env)
    assert unknown.returncode == 0, unknown.stderr
    assert "typical volume: unknown" in unknown.stdout and "not checked" in unknown.stdout


def test_plan_of_a_bad_class_is_one_line(tmp_path: Path) -> None:
    """A class of an unknown product is refused in one line naming it."""
    path = tmp_path / "class.yaml"
    path.write_text(yaml.safe_dump({**DAILY, "product": "nothing"}))
    result = run_cli(
        "classes", "plan", str(path), env={"PRIVMESH_DATA_DIR": str(tmp_path / "data")}
    )
    assert_one_line_error(result, "no data product shop.nothing")


def write_orders_day(data_dir: Path) -> None:
    """One day (2026-12-01) of shop.orders events where the processor writes them:
    30,000 customers whose orders follow a geometric tail (about 3% with more than 7)."""
    product = load_contracts()["shop"].product("orders")
    assert product is not None
    folder = data_dir / "features" / "shop" / "offline" / events_folder_name(product.name)
    folder.mkdir(parents=True)
    counts = [1 + int(-math.log(1 - (i + 0.5) / 30_000) / 0.5) for i in range(30_000)]
    subjects = [f"s{i}" for i, n in enumerate(counts) for _ in range(n)]
    start = datetime(2026, 12, 1, tzinfo=UTC)
    pl.DataFrame(
        {
            product.subject_field: subjects,
            product.event_time: [
                start + timedelta(seconds=i * 86_400 // len(subjects)) for i in range(len(subjects))
            ],
            "amount_cents": [1_000 + 13 * i % 9_000 for i in range(len(subjects))],
        }
    ).write_parquet(folder / "part-00001.parquet")


def test_bounds_spends_first_then_shows_the_advice(tmp_path: Path) -> None:
    """`classes bounds` prints the DP quantiles, the candidates' dropped shares, each
    measure's day-total quantiles and the suggestion with the epsilon it spent (a ledger
    entry; by default shop.orders' planning room, 0.3: its total less its classes'
    allocations); asked again for the same day it reuses the entry; an epsilon beyond the
    room is refused in one line."""
    data = tmp_path / "data"
    write_orders_day(data)
    env = {**WIDE, "PRIVMESH_DATA_DIR": str(data)}
    args = ("classes", "bounds", "shop.orders", "--day", "2026-12-01")
    first = run_cli(*args, "--json", env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    body = json.loads(first.stdout)
    assert body["epsilon"] == "0.300000" and not body["reused"] and body["ledger_entry"] >= 1
    [caps] = body["sum_caps"]
    assert caps["measure"] == "amount_cents" and set(caps["values"]) == {"0.9", "0.95", "0.99"}
    assert 1 <= body["record_quantiles"]["0.9"] <= body["record_quantiles"]["0.99"]
    assert body["suggestion"]["max_records_per_period"] <= 100
    # a candidate's source lists every origin of its bound ("q0.99, contract" when the noisy
    # quantile lands on the contract's bound)
    origins = {o for c in body["candidates"] for o in c["source"].split(", ")}
    assert "contract" in origins and origins <= {"contract", "q0.9", "q0.95", "q0.99"}, origins
    assert body["noise_by_class"]["shop.orders.order_count"][0]["half_widths"]
    table = run_cli(*args, env=env, timeout=120)
    assert table.returncode == 0, table.stderr
    for text in (
        "reused, nothing spent",
        "records dropped",
        "amount_cents per subject-day: q0.9 = ",
        "suggested: max_records_per_period",
    ):
        assert text in table.stdout, table.stdout
    refused = run_cli(*args[:3], "--day", "2026-12-02", "--epsilon", "0.5", env=env, timeout=120)
    assert_one_line_error(refused, "budget_exhausted", "bound advisor needs 0.5")
    bad = run_cli(*args, "--epsilon", "lots", env=env, timeout=120)
    assert_one_line_error(bad, "--epsilon 'lots' is not a number")
