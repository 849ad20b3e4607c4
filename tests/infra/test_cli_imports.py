"""The CLI's fast commands import no heavy library (issue #23 item 5: every command that
does not need the OpenMetadata SDK answers in <= 2 s on a 2-core host)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("feast", "pandas", "torch", "sklearn", "flwr", "faust", "openmetadata", "opendp")
# (argv, expected exit status): run in one process, in this order, on an empty data dir
COMMANDS: list[tuple[list[str], int]] = [
    (["--version"], 0),
    (["status", "--json"], 1),
    (["domains", "lint"], 0),
    (["domains", "list", "--json"], 0),
    (["keys", "status", "--json"], 0),
    (["models", "list", "--json"], 0),
    (["ledger", "--json"], 0),
    (["dsr", "access", "--subject", "a@b.org"], 0),
    (["catalog", "show", "--json"], 0),
    (["catalog", "search", "--tag", "quasi_identifier", "--json"], 0),
    (["catalog", "lineage", "product:shop.orders", "--json"], 0),
]
PROBE = """
import json, sys
from typer.testing import CliRunner
from infra.cli import app
loaded = {"import infra.cli": sorted(m for m in sys.modules if m.startswith("infra.commands."))}
codes = []
for argv, _ in json.loads(sys.argv[1]):
    codes.append(CliRunner().invoke(app, argv).exit_code)
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy, **loaded}))
"""


def _run(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVMESH_")}
    env["PRIVMESH_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip


def test_fast_commands_import_no_heavy_library(tmp_path: Path) -> None:
    """Version, status, lint, listings, the ledger, a DSR access and the catalog's show,
    search and lineage answer as usual without importing Feast, pandas, PyTorch,
    scikit-learn, Flower, Faust, the OpenMetadata SDK or OpenDP; importing the CLI loads no
    sub-command module."""
    done = _run(tmp_path, PROBE, json.dumps(COMMANDS), json.dumps(HEAVY))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["codes"] == [expected for _, expected in COMMANDS]
    assert report["heavy"] == []
    assert report["import infra.cli"] == []


def test_help_lists_every_command(tmp_path: Path) -> None:
    """``--help`` still lists the lazily loaded sub-commands with their help."""
    from infra.cli import LAZY_COMMANDS

    code = (
        "from typer.testing import CliRunner; from infra.cli import app; "
        "print(CliRunner().invoke(app, ['--help'], terminal_width=200).output)"
    )
    done = _run(tmp_path, code)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in [*LAZY_COMMANDS, "up", "down", "status", "ledger", "features"]:
        assert f" {name} " in done.stdout, name
    assert "Data-subject requests" in done.stdout


def test_every_sub_app_stays_a_group() -> None:
    """A lazily loaded Typer app is a group even with one command (``retention run``), as
    ``add_typer`` made it; a function is a command of its own name."""
    import importlib

    import click
    import typer

    from infra.cli import LAZY_COMMANDS, app

    root = typer.main.get_command(app)
    ctx = click.Context(root)
    for name, target in LAZY_COMMANDS.items():
        module, attribute = target.split(":")
        loaded = root.get_command(ctx, name)  # type: ignore[attr-defined]
        assert loaded is not None and loaded.name == name
        is_app = isinstance(getattr(importlib.import_module(module), attribute), typer.Typer)
        assert isinstance(loaded, click.Group) == is_app, name
