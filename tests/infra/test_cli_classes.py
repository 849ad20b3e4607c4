"""``privmesh classes plan FILE``: a readable plan per daily class; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.dashboards_api.test_planner import DAILY
from tests.infra.test_cli import assert_one_line_error, run_cli

WIDE = {"COLUMNS": "200"}


def test_plan_prints_widths_and_what_would_meet_the_accuracy(tmp_path: Path) -> None:
    """With a given volume the table has every resolution's 95% half-width and relative
    width, the verdict on the declared accuracy and the suggestion; without one, the
    absolute widths only."""
    path = tmp_path / "class.yaml"
    path.write_text(yaml.safe_dump(DAILY))
    env = {**WIDE, "PRIVMESH_DATA_DIR": str(tmp_path / "data")}
    given = run_cli("classes", "plan", str(path), "--volume-per-day", "20000", env=env)
    assert given.returncode == 0, given.stderr
    out = given.stdout
    for text in ("1h (declared)", "240", "2,071", "28.8%", "NOT met", "epsilon 2.886826"):
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
