"""``privmesh catalog``: show, search, lineage, lint, export, push; bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from domains.runtime import DEMO_DOMAINS_DIR
from tests.conftest import free_port
from tests.fakes import OpenMetadataTestServer
from tests.infra.test_cli import assert_one_line_error, run_cli

WIDE = {"COLUMNS": "220"}


def test_show_search_and_lineage() -> None:
    """The overview lists every product; search and lineage answer as JSON."""
    shown = run_cli("catalog", "show", env=WIDE)
    assert shown.returncode == 0, shown.stderr
    for product in ("shop.orders", "web.page_views", "ewr.departures"):
        assert product in shown.stdout
    found = run_cli("catalog", "search", "--tag", "quasi_identifier", "--kind", "field", "--json")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)) == 6
    graph = run_cli("catalog", "lineage", "field:shop.orders.amount_cents", "--json")
    ids = {n["id"] for n in json.loads(graph.stdout)["nodes"]}
    assert "query_class:shop.orders.revenue_cents" in ids
    tree = run_cli("catalog", "lineage", "field:shop.orders.zip_code", env=WIDE)
    assert "topic:shop.orders.v1#zip_code" in tree.stdout and "(generalise)" in tree.stdout


def test_bad_input_is_one_line() -> None:
    """An unknown entity, a wrong kind, a wrong direction: one line naming the fix."""
    assert_one_line_error(
        run_cli("catalog", "show", "field:shop.orders.zipcode"),
        "no catalog entity", "field:shop.orders.zip_code", "[entity_not_found]",
    )  # fmt: skip
    wrong_kind = run_cli("catalog", "search", "--kind", "column")
    assert_one_line_error(wrong_kind, "--kind 'column' is not one of", "[invalid_cli_value]")
    mixed = run_cli("catalog", "search", "--kind", "owner", "--budget-above", "0.5")
    assert_one_line_error(mixed, "budget_above applies to", "[invalid_search]")


def test_unknown_owner_names_the_product(tmp_path: Path) -> None:
    """A contract whose owner is not in the owners directory: one line naming both."""
    domains = tmp_path / "domains"
    shutil.copytree(DEMO_DOMAINS_DIR, domains)
    path = domains / "web" / "contract.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["products"][0]["owner"] = "ghost@example.com"
    path.write_text(yaml.safe_dump(raw))
    result = run_cli("catalog", "show", env={"PRIVMESH_DOMAIN_DIRS": str(domains)})
    assert_one_line_error(result, "product:web.page_views", "ghost@example.com", "[unknown_owner]")


def test_lint_without_a_broker_warns_and_exports(tmp_path: Path) -> None:
    """lint reports findings (no errors on the demo) and says the topics were not scanned;
    export writes the OpenMetadata requests with their manifest, saying each step on
    stderr."""
    env = {"PRIVMESH_KAFKA_EMBEDDED_PORT": str(free_port())}
    lint = run_cli("catalog", "lint", "--json", env=env, timeout=120)
    assert lint.returncode == 0, lint.stderr
    codes = {f["code"] for f in json.loads(lint.stdout)}
    assert "topics_not_scanned" in codes and "direct_identifier_in_clear" not in codes
    out = tmp_path / "om"
    export = run_cli("catalog", "export", str(out), timeout=180)
    assert export.returncode == 0, export.stderr
    steps = export.stderr.splitlines()  # piped: one progress line per step, in order
    assert [line.split(":")[0] for line in steps] == ["catalog"] + ["catalog export"] * 2
    assert steps[-1].startswith("catalog export: writing") and steps[-1].endswith(" requests ...")
    assert export.stdout.startswith("wrote ") and " s: " in export.stdout
    # four topics per product; erasures, consent and consent DLQ per domain
    assert json.loads((out / "manifest.json").read_text())["counts"]["topic"] == 6 * 4 + 6 * 3


def test_push_reports_and_refuses_clearly() -> None:
    """push against a server: all created, then a wrong token and no server are one line."""
    with OpenMetadataTestServer("jwt") as server:
        pushed = run_cli("catalog", "push", "--server", server.url, "--token", "jwt", timeout=180)
        assert pushed.returncode == 0, pushed.stderr
        assert "0 failed" in pushed.stdout
        refused = run_cli("catalog", "push", "--server", server.url, "--token", "nope", timeout=180)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        *progress, last = [line for line in refused.stderr.splitlines() if line.strip()]
        assert [line for line in progress if "connecting to OpenMetadata" not in line] == []
        assert last.startswith("privmesh: error:") and "rejects the token" in last
        assert "[openmetadata_token_rejected]" in last
    gone = run_cli(
        "catalog", "push", "--server", f"http://127.0.0.1:{free_port()}", "--token", "x",
        timeout=180,
    )  # fmt: skip
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    last = [line for line in gone.stderr.splitlines() if line.strip()][-1]
    assert "does not answer" in last and "[openmetadata_unreachable]" in last
    missing = run_cli("catalog", "push", "--server", "http://127.0.0.1:1")
    assert missing.returncode == 2 and "no token" in missing.stderr
