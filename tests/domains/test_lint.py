"""The linter: contradictions are errors with stable codes; personal-looking fields warn."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from domains.contract import contract_json_schema
from domains.lint import Severity, lint_contract, lint_paths, looks_personal
from domains.runtime import DEMO_DOMAINS_DIR
from domains.yaml_files import key_lines

SHOP = yaml.safe_load((DEMO_DOMAINS_DIR / "shop" / "contract.yaml").read_text(encoding="utf-8"))
DEMO_CONTRACTS = sorted(DEMO_DOMAINS_DIR.glob("*/contract.yaml"))


def shop() -> dict[str, Any]:
    return copy.deepcopy(SHOP)


def fields(raw: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = raw["products"][0]["fields"]
    return result


def field(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in fields(raw) if f["name"] == name)


def codes(raw: object, severity: Severity | None = None) -> list[str]:
    return [f.code for f in lint_contract(raw) if severity in (None, f.severity)]


def test_packaged_contracts_are_clean() -> None:
    assert lint_paths(DEMO_CONTRACTS) == []


def test_direct_identifier_kept_in_clear() -> None:
    raw = shop()
    field(raw, "customer_name")["protection"] = "keep"
    [finding] = lint_contract(raw, "shop.yaml")
    assert finding.severity is Severity.ERROR
    assert finding.code == "direct_identifier_in_clear"
    assert finding.location.startswith("products.0.fields.1")
    assert "customer_name" in finding.message and "shop.yaml" in str(finding)


def test_numeric_field_without_bounds() -> None:
    raw = shop()
    raw["products"][0]["fields"].append(
        {"name": "items", "type": "int", "description": "Items.", "tag": "non_personal"}
    )
    assert codes(raw) == ["unbounded_numeric"]


def test_dropped_numeric_field_needs_no_bounds() -> None:
    raw = shop()
    raw["products"][0]["fields"].append(
        {
            "name": "loyalty_points",
            "type": "int",
            "description": "Points balance.",
            "tag": "sensitive",
            "protection": "drop",
        }
    )
    assert codes(raw) == []


def test_product_without_privacy_unit() -> None:
    raw = shop()
    del raw["products"][0]["privacy_unit"]
    assert codes(raw) == ["no_privacy_unit"]


def test_privacy_unit_must_exist_and_be_tokenised() -> None:
    raw = shop()
    raw["products"][0]["privacy_unit"] = "nobody"
    assert codes(raw) == ["privacy_unit_unknown"]
    raw["products"][0]["privacy_unit"] = "order_id"
    assert codes(raw) == ["privacy_unit_not_tokenised"]


def test_quasi_identifier_kept_only_with_public_values() -> None:
    raw = shop()
    zip_code = field(raw, "zip_code")
    zip_code["protection"] = "keep"
    del zip_code["generalise"]
    assert codes(raw) == ["quasi_identifier_in_clear"]
    zip_code["allowed_values"] = ["100", "101"]
    assert codes(raw) == []


def test_schema_errors_have_author_friendly_codes() -> None:
    raw = shop()
    field(raw, "order_id")["colour"] = "blue"
    field(raw, "amount_cents")["tag"] = "secret"
    assert sorted(codes(raw)) == ["invalid_choice", "unknown_key"]


def test_several_errors_are_all_reported() -> None:
    raw = shop()
    field(raw, "customer_name")["protection"] = "keep"
    field(raw, "customer_email")["protection"] = "generalise"
    field(raw, "customer_email")["generalise"] = {"method": "prefix"}
    assert codes(raw) == ["direct_identifier_in_clear", "direct_identifier_in_clear"]


@pytest.mark.parametrize(
    ("name", "example"),
    [
        ("contact", "jane.doe@example.org"),
        ("origin", "203.0.113.7"),
        ("callback", "+44 20 7946 0958"),
        ("reference", "DE89370400440532013000"),
        ("token", "4111 1111 1111 1111"),
        ("day", "1984-03-09"),
    ],
)
def test_personal_looking_sample_values_warn(name: str, example: str) -> None:
    raw = shop()
    fields(raw).append(
        {
            "name": name,
            "type": "string",
            "description": "Looks harmless.",
            "tag": "non_personal",
            "examples": [example],
        }
    )
    found = lint_contract(raw)
    assert [f.code for f in found] == ["personal_value_tagged_non_personal"]
    assert found[0].severity is Severity.WARNING
    assert example not in found[0].message  # findings never echo the value


@pytest.mark.parametrize("name", ["customer_phone", "user_id", "dob", "home_address"])
def test_personal_looking_names_warn(name: str) -> None:
    raw = shop()
    fields(raw).append({"name": name, "type": "string", "description": "x", "tag": "non_personal"})
    assert codes(raw, Severity.WARNING) == ["personal_name_tagged_non_personal"]


def test_public_categories_silence_the_name_warning() -> None:
    raw = shop()
    fields(raw).append(
        {
            "name": "device_type",
            "type": "string",
            "description": "x",
            "tag": "non_personal",
            "allowed_values": ["desktop", "mobile"],
        }
    )
    assert codes(raw) == []


def test_sensitive_free_text_and_long_retention_warn() -> None:
    raw = shop()
    raw["products"][0]["retention_days"] = 3650
    fields(raw).append({"name": "note", "type": "string", "description": "x", "tag": "sensitive"})
    assert sorted(codes(raw, Severity.WARNING)) == ["long_retention", "sensitive_free_text_kept"]


@pytest.mark.parametrize("value", ["ord-7f3a9c", "card", "12", "T-2026-004211", "home"])
def test_ordinary_values_do_not_look_personal(value: str) -> None:
    assert looks_personal(value) is None


def test_duplicate_domains_across_files(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(yaml.safe_dump(shop()), encoding="utf-8")
    assert [f.code for f in lint_paths([tmp_path])] == ["duplicate_domain"]


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("domain: [\n", encoding="utf-8")
    [finding] = lint_paths([path])
    assert finding.code == "unreadable"


def test_committed_json_schema_is_current() -> None:
    committed = json.loads((DEMO_DOMAINS_DIR.parent / "contract.schema.json").read_text())
    assert committed == contract_json_schema(), (
        "run: privmesh domains schema -o domains/contract.schema.json"
    )


def test_json_schema_validates_the_packaged_contracts() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = contract_json_schema()
    for path in DEMO_CONTRACTS:
        document = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))
        jsonschema.validate(document, schema)


def test_contribution_contradictions_are_errors_with_their_code() -> None:
    """The linter reports the contract's refusal of contradictory day bounds by its code,
    at the contribution block."""
    raw = shop()
    raw["products"][0]["contribution"] = {"max_records_per_period": 2, "max_windows_per_period": 3}
    [finding] = lint_contract(raw, "shop.yaml")
    assert (finding.severity, finding.code) == (Severity.ERROR, "windows_exceed_records")
    assert finding.location.startswith("products.0.contribution")


def test_window_length_checks_need_the_settings() -> None:
    """Given the processor's window length, more windows per day than a day has is an error;
    windows that do not tile the day or the hour warn; the shipped contracts are clean at
    the default 10-second windows."""
    raw = shop()
    raw["products"][0]["contribution"] = {
        "max_records_per_period": 100,
        "max_windows_per_period": 48,
    }
    assert lint_contract(raw) == []  # without settings nothing depends on the window
    assert [f.code for f in lint_contract(raw, window_seconds=3_600)] == [
        "windows_exceed_windows_per_day"
    ]
    assert lint_contract(raw, window_seconds=1_800) == []  # 48 windows a day exactly
    assert [f.code for f in lint_contract(raw, window_seconds=1_801)] == ["window_straddles_day"]
    assert [(f.severity, f.code) for f in lint_contract(raw, window_seconds=32)] == [
        (Severity.WARNING, "window_straddles_hour")
    ]
    assert lint_paths(DEMO_CONTRACTS, window_seconds=10) == []
    assert [f.code for f in lint_contract(shop(), window_seconds=0)] == ["invalid_window_seconds"]


def test_a_sum_cap_refusal_points_at_its_own_key_and_line() -> None:
    """A cap refused by a cross-field check (no clamp) is reported at its own key path and
    line in the file, not at the product."""
    text = (DEMO_DOMAINS_DIR / "shop" / "contract.yaml").read_text(encoding="utf-8")
    text = text.replace("max_sum_per_period: {amount_cents: 100658}", "max_sum_per_period: {x: 1}")
    [finding] = lint_contract(yaml.safe_load(text), "shop.yaml", None, key_lines(text))
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "max_sum_per_period: {x" in t)
    assert (finding.code, finding.line) == ("sum_cap_unknown_measure", line)
    assert finding.location == "products.0.contribution.max_sum_per_period.x"
    assert str(finding).startswith(f"shop.yaml:{line}:products.0.contribution.max_sum_per_period")


@pytest.mark.parametrize(("cap", "warned"), [(100_658, False), (199_999, False), (200_000, True)])
def test_a_sum_cap_that_never_binds_warns(cap: int, warned: bool) -> None:
    """A cap at or above max_records_per_period x the clamp (10 x 20000 for shop.orders)
    never cuts anything: a warning at the cap's key, not an error (the contract is valid)."""
    raw = shop()
    raw["products"][0]["contribution"]["max_sum_per_period"] = {"amount_cents": cap}
    assert codes(raw, Severity.ERROR) == []
    assert ("sum_cap_never_binds" in codes(raw, Severity.WARNING)) is warned
    if warned:
        [finding] = [f for f in lint_contract(raw) if f.code == "sum_cap_never_binds"]
        assert finding.location == "products.0.contribution.max_sum_per_period.amount_cents"
        assert "10 x 20000 = 200000" in finding.message
