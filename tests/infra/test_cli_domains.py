"""``privmesh domains``: list, show, lint (exit status), schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from domains.runtime import DEMO_DOMAINS_DIR
from tests.infra.test_cli import assert_one_line_error, run_cli


def test_list_shows_every_product() -> None:
    result = run_cli("domains", "list", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for domain, product in [("shop", "orders"), ("web", "page_views"), ("support", "tickets")]:
        assert domain in result.stdout and product in result.stdout


def test_show_prints_tags_and_protections() -> None:
    result = run_cli("domains", "show", "shop", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "customer_email (privacy unit)" in result.stdout
    assert "direct_identifier" in result.stdout and "tokenise" in result.stdout
    as_json = run_cli("domains", "show", "web", "--json")
    assert json.loads(as_json.stdout)["products"][0]["privacy_unit"] == "visitor_id"


def test_show_unknown_domain_is_one_line() -> None:
    result = run_cli("domains", "show", "nope")
    assert result.returncode == 2
    assert "unknown domain 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_lint_exit_status(tmp_path: Path) -> None:
    assert run_cli("domains", "lint").returncode == 0
    raw = yaml.safe_load((DEMO_DOMAINS_DIR / "shop" / "contract.yaml").read_text(encoding="utf-8"))
    raw["products"][0]["fields"][1]["protection"] = "keep"  # customer_name in clear
    bad = tmp_path / "shop.yaml"
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    result = run_cli("domains", "lint", str(bad), "--json")
    assert result.returncode == 1
    [finding] = [json.loads(line) for line in result.stdout.splitlines()]
    assert finding["code"] == "direct_identifier_in_clear"
    assert "1 error(s)" in result.stderr


def test_lint_strict_fails_on_warnings(tmp_path: Path) -> None:
    raw = yaml.safe_load((DEMO_DOMAINS_DIR / "web" / "contract.yaml").read_text(encoding="utf-8"))
    raw["products"][0]["retention_days"] = 5000
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert run_cli("domains", "lint", str(path)).returncode == 0
    assert run_cli("domains", "lint", "--strict", str(path)).returncode == 1


def test_contracts_dir_setting(tmp_path: Path) -> None:
    shutil.copy(DEMO_DOMAINS_DIR / "web" / "contract.yaml", tmp_path / "web.yaml")
    result = run_cli(
        "domains", "list", env={"PRIVMESH_CONTRACTS_DIR": str(tmp_path), "COLUMNS": "200"}
    )
    assert result.returncode == 0, result.stderr
    assert "page_views" in result.stdout and "orders" not in result.stdout


def test_schema_to_file(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    assert run_cli("domains", "schema", "-o", str(out)).returncode == 0
    assert json.loads(out.read_text())["title"] == "privmesh domain contract"


def test_init_then_lint_a_folder_of_new_domains(tmp_path: Path) -> None:
    """Two scaffolded domains lint clean and are the only ones listed when configured."""
    folder = tmp_path / "mesh"
    assert run_cli("domains", "init", "north", "--dir", str(folder)).returncode == 0
    made = run_cli("domains", "init", "south", "--dir", str(folder), "--train-with", "north")
    assert made.returncode == 0, made.stderr
    assert str(folder / "south" / "contract.yaml") in made.stdout
    env = {"PRIVMESH_DOMAIN_DIRS": str(folder), "COLUMNS": "200"}
    result = run_cli("domains", "lint", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 error(s), 0 warning(s)" in result.stderr
    listed = run_cli("domains", "list", env=env)
    assert "north" in listed.stdout and "south" in listed.stdout and "shop" not in listed.stdout
    again = run_cli("domains", "init", "north", "--dir", str(folder))
    assert_one_line_error(again, "already exists", "[invalid_domain_folder]")


def test_lint_names_file_line_and_a_suggestion(tmp_path: Path) -> None:
    """A class naming a missing product: file:line:location, code and the likely name, for
    the configured folders, a folder argument and a single domain folder argument."""
    assert run_cli("domains", "init", "north", "--dir", str(tmp_path)).returncode == 0
    path = tmp_path / "north" / "query_classes.yaml"
    path.write_text(path.read_text().replace("    product: visits", "    product: visit"))
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.endswith("product: visit"))
    expected = f"{path}:{line}:classes.0.product: error [unknown_product]"
    env = {"PRIVMESH_DOMAIN_DIRS": str(tmp_path), "COLUMNS": "80"}
    for args in ([], [str(tmp_path)], [str(tmp_path / "north")]):
        result = run_cli("domains", "lint", *args, env=env)
        assert result.returncode == 1, args
        assert expected in result.stdout and "did you mean 'visits'?" in result.stdout
        assert "1 error(s)" in result.stderr


def test_up_lints_first_and_starts_nothing(tmp_path: Path, isolated_env: Path) -> None:
    """``up`` with a broken domain prints the lint's findings and exits 1 before starting
    anything (no data directory, no traceback)."""
    assert run_cli("domains", "init", "north", "--dir", str(tmp_path)).returncode == 0
    path = tmp_path / "north" / "contract.yaml"
    path.write_text(path.read_text().replace("owner: north-team", "owner: nobody", 1))
    result = run_cli("up", env={"PRIVMESH_DOMAIN_DIRS": str(tmp_path), "COLUMNS": "80"})
    assert result.returncode == 1
    assert f"{path}:" in result.stdout and "[unknown_owner]" in result.stdout
    assert "nothing started" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not isolated_env.exists()


def test_lint_runs_the_apis_start_checks(tmp_path: Path) -> None:
    """A product total above the governance policy's cap passes the file checks but the
    API would refuse to start: lint reports it with the API's code."""
    assert run_cli("domains", "init", "north", "--dir", str(tmp_path)).returncode == 0
    path = tmp_path / "north" / "query_classes.yaml"
    path.write_text(path.read_text().replace('budget_per_day: "1"', 'budget_per_day: "3"', 1))
    result = run_cli("domains", "lint", env={"PRIVMESH_DOMAIN_DIRS": str(tmp_path)})
    assert result.returncode == 1
    assert "[invalid_query_classes]" in result.stdout
    assert "max_product_budget_per_day" in result.stdout


GUIDE = Path(__file__).parents[2] / "docs" / "publish-a-data-product.md"
_GUIDE_STEPS = ("mkdir ", "privmesh domains ", "export PRIVMESH_DOMAIN_DIRS=")


def guide_blocks(kind: str) -> list[str]:
    """The fenced ``kind`` blocks of the publishing guide, in order."""
    parts = GUIDE.read_text(encoding="utf-8").split("```")
    return [p.removeprefix(kind).strip() for p in parts[1::2] if p.startswith(kind + "\n")]


def test_the_publishing_guide_runs(tmp_path: Path) -> None:
    """The guide's scaffold and lint commands, run as written in an empty folder, lint
    clean; its sample finding is what lint prints for the misspelling it shows."""
    steps = [
        line.split("  #")[0].strip()
        for block in guide_blocks("bash")
        for line in block.splitlines()
        if line.startswith(_GUIDE_STEPS)
    ]
    assert any(s.startswith("privmesh domains init") for s in steps)
    assert steps[-1] == "privmesh domains lint"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "300"}
    script = "set -e\n" + "\n".join(steps)
    ran = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "0 error(s), 0 warning(s)" in ran.stderr
    [sample] = [b for b in guide_blocks("text") if "did you mean" in b]
    classes = tmp_path / "my-domains" / "clinic_north" / "query_classes.yaml"
    classes.write_text(classes.read_text().replace("product: visits", "product: visit"))
    relint = "\n".join(s for s in steps if not s.startswith(("mkdir", "privmesh domains init")))
    ran = subprocess.run(
        ["bash", "-c", relint], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert ran.returncode != 0
    assert f"{tmp_path}/{sample}" in ran.stdout.splitlines()
