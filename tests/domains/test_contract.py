"""Contract models refuse contradictions; the loader names the file and the problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from domains.contract import Bounds, ContributionBounds, DomainContract, PrivacyTag, Protection
from domains.errors import ContractNotFound, InvalidContract
from domains.registry import get_product, load_contract, load_contracts
from domains.runtime import DEMO_DOMAINS_DIR

SHOP = yaml.safe_load((DEMO_DOMAINS_DIR / "shop" / "contract.yaml").read_text(encoding="utf-8"))


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


# ---------------------------------------------------------------- contribution bounds


def refused_code(raw: dict[str, Any]) -> str:
    """The machine-readable code of the (single) refusal of ``raw``."""
    with pytest.raises(ValidationError) as caught:
        DomainContract.model_validate(raw)
    return str(caught.value.errors()[0]["type"])


def with_contribution(**block: Any) -> dict[str, Any]:
    raw = shop()
    raw["products"][0]["contribution"] = block
    return raw


def test_shipped_products_declare_day_bounds_and_clamps() -> None:
    """Every shipped product states its per-day bounds; shop.orders' are 10 records in at
    most 10 windows with amounts clamped to 0..20000 cents."""
    for contract in load_contracts().values():
        for product in contract.products:
            bounds = product.contribution
            assert bounds.privacy_period == "day" and bounds.period_seconds == 86_400
            assert 1 <= bounds.max_windows_per_period <= bounds.max_records_per_period
    _, orders = get_product("shop", "orders")
    assert orders.contribution.max_records_per_period == 10
    assert orders.contribution.max_windows_per_period == 10
    assert orders.clamp_of("amount_cents") == Bounds(min=0, max=20_000)


def test_clamp_of_defaults_to_the_field_bounds() -> None:
    """Without a contribution block a product gets the documented defaults and each measure
    is clamped to its field's bounds; a field that is not a bounded measure has no clamp."""
    raw = shop()
    del raw["products"][0]["contribution"]
    product = DomainContract.model_validate(raw).products[0]
    assert product.contribution == ContributionBounds()
    assert (product.contribution.max_records_per_period, product.contribution.clamp) == (10, {})
    assert product.clamp_of("amount_cents") == Bounds(min=0, max=100_000)
    for name in ("order_id", "nope"):
        with pytest.raises(KeyError):
            product.clamp_of(name)


@pytest.mark.parametrize(
    ("block", "code"),
    [
        ({"max_records_per_period": 5, "max_windows_per_period": 6}, "windows_exceed_records"),
        (
            {"max_records_per_period": 0, "max_windows_per_period": 0},
            "contribution_bound_below_one",
        ),
        (
            {"max_records_per_period": 5, "max_windows_per_period": 0},
            "contribution_bound_below_one",
        ),
        ({"max_records_per_period": -3}, "contribution_bound_below_one"),
        ({"max_records_per_period": 1_000_001}, "contribution_bound_too_large"),
        (
            {"max_records_per_period": 1_000_000, "max_windows_per_period": 86_401},
            "windows_exceed_period",
        ),
        ({"clamp": {"nope": {"min": 0, "max": 1}}}, "clamp_unknown_field"),
        ({"clamp": {"payment_method": {"min": 0, "max": 1}}}, "clamp_on_non_numeric"),
        ({"clamp": {"amount_cents": {"min": 0, "max": 100_001}}}, "clamp_outside_bounds"),
        ({"clamp": {"amount_cents": {"min": -1, "max": 10}}}, "clamp_outside_bounds"),
        ({"clamp": {"amount_cents": {"min": 500, "max": 10}}}, "inverted_bounds"),
        ({"clamp": {"amount_cents": {"min": 0, "max": "nan"}}}, "non_finite_bounds"),
        ({"clamp": {"amount_cents": {"min": "-inf", "max": 10}}}, "non_finite_bounds"),
        ({"privacy_period": "week"}, "literal_error"),
        ({"max_records_per_period": 10, "surprise": 1}, "extra_forbidden"),
    ],
)
def test_contradictory_contribution_bounds_are_refused(block: dict[str, Any], code: str) -> None:
    """Each contradiction in a contribution block is refused with its own stable code."""
    assert refused_code(with_contribution(**block)) == code


def test_clamp_on_a_field_without_bounds_is_refused() -> None:
    """A numeric field that is dropped (so has no bounds) cannot be clamped: it is no measure."""
    raw = shop()
    raw["products"][0]["fields"].append(
        {"name": "basket_items", "type": "int", "description": "Items.", "tag": "sensitive",
         "protection": "drop"}
    )  # fmt: skip
    raw["products"][0]["contribution"] = {"clamp": {"basket_items": {"min": 0, "max": 5}}}
    assert refused_code(raw) == "clamp_without_bounds"


def test_a_clamp_inside_the_bounds_is_accepted() -> None:
    """A tighter clamp and bounds equal to each other are fine."""
    product = DomainContract.model_validate(
        with_contribution(
            max_records_per_period=3,
            max_windows_per_period=3,
            clamp={"amount_cents": {"min": 100, "max": 100}},
        )
    ).products[0]
    assert product.clamp_of("amount_cents") == Bounds(min=100, max=100)


def with_cap(cap: Any, **block: Any) -> dict[str, Any]:
    """The shop contract with ``amount_cents`` clamped to 0..20000 and capped at ``cap``."""
    clamp = block.pop("clamp", {"amount_cents": {"min": 0, "max": 20_000}})
    return with_contribution(clamp=clamp, max_sum_per_period={"amount_cents": cap}, **block)


@pytest.mark.parametrize(
    ("cap", "code"),
    [
        (0, "sum_cap_not_positive"),
        (-5, "sum_cap_not_positive"),
        (float("nan"), "sum_cap_not_positive"),
        (float("inf"), "sum_cap_not_positive"),
        (float("-inf"), "sum_cap_not_positive"),
        (1e300, "sum_cap_too_large"),
        (2**53 + 2, "sum_cap_too_large"),
        ("5000", "float_type"),  # a string is no number, even a numeric one
        ("", "float_type"),
        ("\x00", "float_type"),
        ("\ud800", "float_type"),
        (True, "float_type"),
        (None, "float_type"),
        ([1], "float_type"),
        (100.5, "sum_cap_not_integral"),  # amount_cents is an int measure
    ],
)
def test_hostile_sum_caps_are_refused(cap: Any, code: str) -> None:
    """A per-day sum cap must be a finite number above 0, at most 2**53, and whole for an int
    measure; anything else is refused with its own code."""
    assert refused_code(with_cap(cap)) == code


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (with_contribution(max_sum_per_period={"nope": 5}), "sum_cap_unknown_measure"),
        (with_contribution(max_sum_per_period={"payment_method": 5}), "sum_cap_unknown_measure"),
        (with_contribution(max_sum_per_period={"occurred_at": 5}), "sum_cap_unknown_measure"),
        (with_contribution(max_sum_per_period={"amount_cents": 50_000}), "sum_cap_without_clamp"),
        (with_cap(99, clamp={"amount_cents": {"min": 100, "max": 200}}), "sum_cap_below_clamp"),
    ],
)
def test_contradictory_sum_caps_are_refused(raw: dict[str, Any], code: str) -> None:
    """A cap names a bounded numeric measure with a clamp, and is at least the clamp's min (a
    counted record would otherwise pass it on its own)."""
    assert refused_code(raw) == code


def test_a_cap_on_a_measure_that_can_be_negative_is_refused() -> None:
    """A per-day cap bounds a non-negative total: a clamp admitting negatives is refused."""
    raw = with_cap(500, clamp={"amount_cents": {"min": 0, "max": 20_000}})
    field(raw, "amount_cents")["bounds"] = {"min": -100, "max": 100_000}
    raw["products"][0]["contribution"]["clamp"] = {"amount_cents": {"min": -100, "max": 100}}
    assert refused_code(raw) == "sum_cap_negative_measure"


def test_a_cap_bounds_the_period_sum_of_its_measure() -> None:
    """A cap lowers a measure's per-day L1 bound to min(records x max|clamp|, cap); without a
    cap the bound is records x max|clamp|."""
    product = DomainContract.model_validate(with_cap(50_000)).products[0]
    assert product.sum_cap_of("amount_cents") == 50_000
    assert product.period_sum_bound("amount_cents") == 50_000
    loose = DomainContract.model_validate(with_cap(1_000_000)).products[0]
    assert loose.period_sum_bound("amount_cents") == 10 * 20_000
    uncapped = DomainContract.model_validate(with_contribution()).products[0]
    assert uncapped.sum_cap_of("amount_cents") is None
    assert uncapped.period_sum_bound("amount_cents") == 10 * 100_000


def test_shipped_shop_caps_a_customers_day_of_revenue() -> None:
    """shop.orders caps a customer's day of revenue below its records x clamp bound (the
    cap the bound advisor suggested on the demo day)."""
    orders = load_contracts()["shop"].product("orders")
    assert orders is not None
    cap = orders.sum_cap_of("amount_cents")
    assert cap is not None and cap < 10 * 20_000
    assert orders.period_sum_bound("amount_cents") == cap
