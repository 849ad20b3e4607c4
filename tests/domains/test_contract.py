"""Contract models refuse contradictions; the loader names the file and the problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from domains.contract import DomainContract, PrivacyTag, Protection
from domains.errors import ContractNotFound, InvalidContract
from domains.registry import CONTRACTS_DIR, get_product, load_contract, load_contracts

SHOP = yaml.safe_load((CONTRACTS_DIR / "shop.yaml").read_text(encoding="utf-8"))


def shop() -> dict[str, Any]:
    return copy.deepcopy(SHOP)


def field(raw: dict[str, Any], name: str) -> dict[str, Any]:
    fields: list[dict[str, Any]] = raw["products"][0]["fields"]
    return next(f for f in fields if f["name"] == name)


def test_packaged_contracts_load_and_every_field_is_tagged() -> None:
    contracts = load_contracts()
    assert "shop" in contracts
    for contract in contracts.values():
        for product in contract.products:
            assert product.field(product.privacy_unit) is not None
            assert all(isinstance(f.tag, PrivacyTag) for f in product.fields)


@pytest.mark.parametrize("protection", ["keep", "generalise"])
def test_direct_identifier_in_clear_is_refused(protection: str) -> None:
    raw = shop()
    field(raw, "customer_name")["protection"] = protection
    with pytest.raises(ValidationError, match="direct identifier"):
        DomainContract.model_validate(raw)


def test_quasi_identifier_kept_in_clear_is_refused() -> None:
    raw = shop()
    zip_code = field(raw, "zip_code")
    zip_code["protection"] = "keep"
    del zip_code["generalise"]
    with pytest.raises(ValidationError, match="quasi-identifier kept in clear"):
        DomainContract.model_validate(raw)


def test_sensitive_numeric_without_bounds_is_refused() -> None:
    raw = shop()
    del field(raw, "amount_cents")["bounds"]
    with pytest.raises(ValidationError, match="without bounds"):
        DomainContract.model_validate(raw)


def test_inverted_bounds_are_refused() -> None:
    raw = shop()
    field(raw, "amount_cents")["bounds"] = {"min": 10, "max": 1}
    with pytest.raises(ValidationError, match="greater than max"):
        DomainContract.model_validate(raw)


def test_product_without_privacy_unit_is_refused() -> None:
    raw = shop()
    del raw["products"][0]["privacy_unit"]
    with pytest.raises(ValidationError, match="privacy_unit"):
        DomainContract.model_validate(raw)


def test_privacy_unit_must_be_tokenised() -> None:
    raw = shop()
    raw["products"][0]["privacy_unit"] = "order_id"
    with pytest.raises(ValidationError, match="tokenised"):
        DomainContract.model_validate(raw)


def test_event_time_must_be_a_timestamp() -> None:
    raw = shop()
    raw["products"][0]["event_time"] = "order_id"
    with pytest.raises(ValidationError, match="timestamp"):
        DomainContract.model_validate(raw)


def test_unknown_keys_and_tags_are_refused() -> None:
    raw = shop()
    field(raw, "order_id")["colour"] = "blue"
    with pytest.raises(ValidationError, match="Extra inputs"):
        DomainContract.model_validate(raw)
    raw = shop()
    field(raw, "order_id")["tag"] = "probably_fine"
    with pytest.raises(ValidationError, match="direct_identifier"):
        DomainContract.model_validate(raw)


def test_duplicate_fields_are_refused() -> None:
    raw = shop()
    raw["products"][0]["fields"].append(copy.deepcopy(field(raw, "order_id")))
    with pytest.raises(ValidationError, match="twice"):
        DomainContract.model_validate(raw)


def test_loader_names_the_file_and_the_location(tmp_path: Path) -> None:
    raw = shop()
    field(raw, "customer_name")["protection"] = "keep"
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(InvalidContract) as info:
        load_contract(path)
    assert str(path) in str(info.value)
    assert "products.0.fields" in str(info.value)
    assert info.value.code == "invalid_contract"


def test_loader_reports_broken_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("domain: [unclosed\n", encoding="utf-8")
    with pytest.raises(InvalidContract, match="cannot read contract"):
        load_contract(path)


def test_same_domain_twice_is_refused(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(yaml.safe_dump(shop()), encoding="utf-8")
    with pytest.raises(InvalidContract, match="declared twice"):
        load_contracts(tmp_path)


def test_get_product_lists_what_exists() -> None:
    contract, product = get_product("shop", "orders")
    assert contract.domain == "shop"
    assert product.field("customer_email") is not None
    assert product.subject_field == "customer_email_token"
    with pytest.raises(ContractNotFound, match=r"known: .*shop"):
        get_product("nope", "orders")
    with pytest.raises(ContractNotFound, match="known: orders"):
        get_product("shop", "refunds")


def test_protection_of_the_shop_identifiers() -> None:
    _, product = get_product("shop", "orders")
    name, email = product.field("customer_name"), product.field("customer_email")
    assert name is not None and name.protection is Protection.DROP
    assert email is not None and email.protection is Protection.TOKENISE


def test_format_and_event_time_window_are_declared_and_checked() -> None:
    """A contract may declare an id's format and its event-time window; a regex that does
    not compile, or a format without its pattern or values, is refused with a stable code."""
    from domains.lint import lint_contract
    from domains.registry import get_contract

    raw = get_contract("shop").model_dump(mode="json")
    product = raw["products"][0]
    product["event_time_window"] = {"max_age_seconds": 3600, "max_future_seconds": 60}
    assert lint_contract(raw) == []
    ids = next(f for f in product["fields"] if f["name"] == "order_id")
    for bad, code in (
        ({"kind": "regex", "pattern": "ord-(["}, "invalid_format_regex"),
        ({"kind": "regex"}, "format_mismatch"),
        ({"kind": "enum"}, "format_mismatch"),
        ({"kind": "uuid", "values": ["a"]}, "format_mismatch"),
    ):
        ids["format"] = bad
        assert [f.code for f in lint_contract(raw)] == [code]
    ids["format"] = {"kind": "uuid"}
    amount = next(f for f in product["fields"] if f["name"] == "amount_cents")
    amount["format"] = {"kind": "uuid"}
    assert [f.code for f in lint_contract(raw)] == ["format_on_non_string"]
