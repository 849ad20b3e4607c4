"""ODCS v3 interop: round trips, the standard's schema, outside documents, hostile files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from open_data_contract_standard.model import OpenDataContractStandard
from typer.testing import CliRunner

from domains.contract import DomainContract, PrivacyTag, Protection
from domains.errors import ContractError, OdcsInvalid, OdcsUnmappable, OdcsUnreadable
from domains.lint import Severity, lint_contract
from domains.odcs import from_odcs, odcs_yaml, parse_odcs, read_odcs, to_odcs
from domains.registry import get_contract, load_contract, load_contracts
from infra.commands.domains import app as domains_cli

DATA = Path(__file__).with_name("data")
OUTSIDE = DATA / "library_loans.odcs.yaml"
SHIPPED = sorted(load_contracts().items())
VALIDATOR = jsonschema.Draft201909Validator(json.loads(OpenDataContractStandard.json_schema()))


def schema_errors(document: Any) -> list[str]:
    """Problems of ``document`` under the standard's own JSON Schema."""
    return [f"{list(e.path)}: {e.message}" for e in VALIDATOR.iter_errors(document)]


@pytest.mark.parametrize(("domain", "contract"), SHIPPED, ids=[d for d, _ in SHIPPED])
def test_round_trip_equal(domain: str, contract: DomainContract) -> None:
    """A shipped contract exported to ODCS YAML and imported back is the same contract."""
    back = from_odcs(parse_odcs(odcs_yaml(contract)))
    assert back == contract


@pytest.mark.parametrize(("domain", "contract"), SHIPPED, ids=[d for d, _ in SHIPPED])
def test_export_validates_against_the_standard(domain: str, contract: DomainContract) -> None:
    """An exported document passes the ODCS pydantic model and the standard's JSON Schema."""
    document = yaml.safe_load(odcs_yaml(contract))
    OpenDataContractStandard.model_validate(document)
    assert schema_errors(document) == []
    assert document["apiVersion"].startswith("v3") and document["kind"] == "DataContract"


def test_schema_check_can_fail() -> None:
    """The JSON Schema check used above refuses a document with an unknown logicalType."""
    document = yaml.safe_load(odcs_yaml(get_contract("shop")))
    document["schema"][0]["properties"][0]["logicalType"] = "varchar"
    assert schema_errors(document)


def test_export_uses_the_standards_own_fields() -> None:
    """Tag, bounds, public values, owner and retention sit in ODCS fields, not custom ones."""
    document = to_odcs(get_contract("shop"))
    orders = document.schema_[0] if document.schema_ else None
    assert orders is not None and orders.properties is not None
    by_name = {p.name: p for p in orders.properties}
    assert by_name["customer_email"].classification == PrivacyTag.DIRECT_IDENTIFIER.value
    assert by_name["customer_email"].logicalTypeOptions == {"format": "email", "maxLength": 256}
    amount = by_name["amount_cents"]
    assert amount.logicalType == "integer"
    assert amount.logicalTypeOptions == {"minimum": 0, "maximum": 100000}
    assert [e.value for e in by_name["payment_method"].enum or []][:2] == ["card", "paypal"]
    assert by_name["occurred_at"].required is True
    members = document.team.members if document.team and not isinstance(document.team, list) else []
    assert next((m.username, m.role) for m in members or []) == ("shop-data@example.com", "owner")
    retention = [(s.property, s.value, s.unit, s.element) for s in document.slaProperties or []]
    assert ("retention", 90, "d", "orders") in retention


def test_outside_document_imports_to_a_contract_that_lints() -> None:
    """A hand-written ODCS v3.0.2 document imports; the contract lints without errors and
    missing protections default to the safe side (identifier tokenised, postcode dropped)."""
    assert schema_errors(yaml.safe_load(OUTSIDE.read_text(encoding="utf-8"))) == []
    contract = from_odcs(read_odcs(OUTSIDE), str(OUTSIDE))
    findings = lint_contract(contract.model_dump(mode="json"), str(OUTSIDE))
    assert [f for f in findings if f.severity is Severity.ERROR] == []
    loans = contract.products[0]
    assert (contract.domain, contract.owner, loans.retention_days) == (
        "library",
        "circulation-data@libraries.example",
        365,
    )
    assert loans.privacy_unit == "member_card" and loans.event_time == "borrowed_at"
    assert loans.purpose == "lending_statistics"
    protections = {f.name: f.protection for f in loans.fields}
    assert protections["member_card"] is Protection.TOKENISE
    assert protections["member_postcode"] is Protection.DROP
    assert protections["member_email"] is Protection.DROP  # declared in a custom property
    assert protections["branch"] is Protection.KEEP  # public values declared in enum
    fee = loans.field("late_fee")
    assert fee is not None and fee.bounds is not None and fee.bounds.max == 100
    loan_id = loans.field("loan_id")
    assert loan_id is not None and loan_id.format is not None
    assert loan_id.format.pattern == "L[0-9]{6,12}" and loan_id.max_length == 40


def _outside(**changes: Any) -> str:
    """The outside document with top-level keys replaced (None: removed)."""
    document = yaml.safe_load(OUTSIDE.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return yaml.safe_dump(document)


def _property_changed(index: int, key: str, value: object) -> str:
    """The outside document with one key of property ``index`` replaced (None: removed)."""
    document = yaml.safe_load(OUTSIDE.read_text(encoding="utf-8"))
    prop = document["schema"][0]["properties"][index]
    if value is None:
        del prop[key]
    else:
        prop[key] = value
    return yaml.safe_dump(document)


@pytest.mark.parametrize(
    ("content", "error", "needle"),
    [
        (b"", OdcsInvalid, "empty file"),
        (b"\x00\x01\x02\xff\xfe binary", OdcsUnreadable, "not UTF-8"),
        (b"name: \x00nul\n", OdcsUnreadable, "not YAML"),
        (b"- just\n- a list\n", OdcsInvalid, "mapping"),
        (b"a: [unclosed\n", OdcsUnreadable, "not YAML"),
        (b"a: &x [1]\nb: *x\n", OdcsUnreadable, "aliases"),
        (b"[" * 5000 + b"]" * 5000, OdcsUnreadable, "not YAML"),
        (b"kind: DataContract\napiVersion: v2.2.0\n", OdcsInvalid, "v3"),
        (b"apiVersion: v3.0.2\nkind: DataContract\nbogus: 1\n", OdcsInvalid, "bogus"),
        (b"apiVersion: v3.0.2\nkind: DataContract\nschema: 7\n", OdcsInvalid, "schema"),
        (b"apiVersion: v3.0.2\nkind: DataContract\nname: x\n", OdcsUnmappable, "owner"),
        (_outside(slaProperties=None).encode(), OdcsUnmappable, "retention"),
        (_outside(team=[]).encode(), OdcsUnmappable, "owner"),
        (_property_changed(1, "classification", None).encode(), OdcsUnmappable, "privacy tag"),
        (_property_changed(2, "required", True).encode(), OdcsUnmappable, "privacy unit"),
        (_property_changed(7, "required", False).encode(), OdcsUnmappable, "event time"),
        (_property_changed(0, "logicalType", "boolean").encode(), OdcsUnmappable, "boolean"),
        (
            _property_changed(5, "logicalTypeOptions", {"minimum": 1}).encode(),
            OdcsUnmappable,
            "both minimum and maximum",
        ),
        (
            _property_changed(6, "logicalTypeOptions", {}).encode(),
            OdcsUnmappable,
            "without bounds",
        ),
        (_outside(domain="Library Loans", name=None).encode(), OdcsUnmappable, "domain"),
    ],
    ids=[
        "empty", "binary", "nul", "list", "bad-yaml", "alias", "deep", "v2", "unknown-key",
        "schema-not-list", "no-owner", "no-retention", "empty-team", "no-tag", "two-units",
        "no-time",
        "boolean", "half-bounds", "no-bounds", "bad-domain",
    ],
)  # fmt: skip
def test_hostile_documents_raise_coded_errors(
    tmp_path: Path, content: bytes, error: type[ContractError], needle: str
) -> None:
    """Each malformed document raises the named ContractError (a stable code), no other."""
    path = tmp_path / "bad.odcs.yaml"
    path.write_bytes(content)
    with pytest.raises(error) as caught:
        from_odcs(read_odcs(path), str(path))
    assert needle in str(caught.value)
    assert caught.value.code.startswith("odcs_")


def test_missing_and_huge_files(tmp_path: Path) -> None:
    """A missing file and one over the size limit are unreadable, not tracebacks."""
    with pytest.raises(OdcsUnreadable):
        read_odcs(tmp_path / "absent.yaml")
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (6 * 1024 * 1024))
    with pytest.raises(OdcsUnreadable, match="at most"):
        read_odcs(huge)


def test_surrogates_refused(tmp_path: Path) -> None:
    """A lone surrogate escaped in YAML is refused (the reader rejects it)."""
    path = tmp_path / "s.yaml"
    path.write_text('name: "\\ud800"\n', encoding="utf-8")
    with pytest.raises((OdcsUnreadable, OdcsInvalid, OdcsUnmappable)):
        from_odcs(read_odcs(path))


# ------------------------------------------------------------------------ CLI commands
CLI = domains_cli  # privmesh domains: import and export are registered there


def test_cli_export_then_import(tmp_path: Path) -> None:
    """export writes <domain>.odcs.yaml; import writes <folder>/<domain>/contract.yaml (a
    domain folder), equal to the original, or a named file."""
    runner = CliRunner()
    exported = runner.invoke(CLI, ["export", "shop", "--out", str(tmp_path)])
    assert exported.exit_code == 0, exported.output
    document = tmp_path / "shop.odcs.yaml"
    assert document.is_file()
    out = tmp_path / "contracts"
    out.mkdir()
    imported = runner.invoke(CLI, ["import", str(document), "--out", str(out)])
    assert imported.exit_code == 0, imported.output
    written = out / "shop" / "contract.yaml"
    assert str(written) in " ".join(imported.output.split())
    assert load_contract(written) == get_contract("shop")
    again = runner.invoke(CLI, ["import", str(document), "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output
    named = runner.invoke(CLI, ["import", str(document), "--out", str(tmp_path / "s.yaml")])
    assert named.exit_code == 0, named.output
    assert load_contract(tmp_path / "s.yaml") == get_contract("shop")


def test_cli_import_of_a_hostile_file_is_a_coded_error(tmp_path: Path) -> None:
    """The import command raises the coded error the CLI prints in one line."""
    bad = tmp_path / "bad.odcs"
    bad.write_bytes(b"\xff\xfe\x00")
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(CLI, ["import", str(bad), "--out", str(out)])
    assert result.exit_code != 0
    assert isinstance(result.exception, OdcsUnreadable)
    assert not list(out.iterdir())


def test_the_sum_cap_travels_in_custom_properties() -> None:
    """shop.orders' max_sum_per_period is exported in the product's contribution custom
    property and comes back unchanged."""
    document = yaml.safe_load(odcs_yaml(get_contract("shop")))
    custom = {c["property"]: c["value"] for c in document["schema"][0]["customProperties"]}
    assert custom["contribution"]["max_sum_per_period"] == {"amount_cents": 100658.0}
    back = from_odcs(parse_odcs(yaml.safe_dump(document)))
    orders = back.product("orders")
    assert orders is not None and orders.sum_cap_of("amount_cents") == 100658


@pytest.mark.parametrize("cap", [-1, 0, ".nan", "1e400", "'5000'", "[]", "'\\0'", "1e300"])
def test_a_hostile_sum_cap_in_an_odcs_document_is_a_coded_error(cap: str) -> None:
    """A cap that the contract refuses, arriving through ODCS, is an odcs_ coded error."""
    text = odcs_yaml(get_contract("shop")).replace("amount_cents: 100658.0", f"amount_cents: {cap}")
    assert f"amount_cents: {cap}" in text
    with pytest.raises(ContractError) as caught:
        from_odcs(parse_odcs(text))
    assert caught.value.code.startswith("odcs_")
