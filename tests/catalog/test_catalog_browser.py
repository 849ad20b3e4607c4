"""The governance page in a real browser (headless Debian chromium) against a real server:
products and fields with their tags and protections, budget use, lineage, search."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.query_classes import load_product_budgets, load_query_classes
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import KeyGrant
from domains.registry import load_contracts
from infra.api_app import with_catalog
from tests.catalog.conftest import NOW, SPENT
from tests.dashboards_api.test_dashboard_browser import browser, require_browser, serve
from tests.fakes import FakeWindowSource

SAVE_SCREENSHOT = os.environ.get("PRIVMESH_SAVE_SCREENSHOT") == "1"
DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "img" / "catalog.png"
KEYS = {"gov": KeyGrant(role="governance"), "reader": KeyGrant(role="consumer")}
WAIT = 15.0


@dataclass
class Page:
    """The governance page in a browser."""

    driver: WebDriver

    def wait(self, css: str, count: int = 1) -> list[object]:
        """Wait until ``css`` matches at least ``count`` elements; return them."""
        WebDriverWait(self.driver, WAIT).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count
        )
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def enter_key(self, key: str) -> None:
        """Type ``key`` in the key field and submit it."""
        field = self.driver.find_element(By.ID, "api-key")
        field.clear()
        field.send_keys(key)
        field.submit()


@pytest.fixture
def page(tmp_path: Path, ledger: SqliteLedger) -> Iterator[Page]:
    """The served app (catalog mounted, ledger with today's spend) and a browser on it."""
    require_browser()
    service = ReleaseService(
        classes=load_query_classes(),
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource()},
        ledger=ledger,
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=NOW.timestamp,
        product_budgets=load_product_budgets(),
    )
    app = with_catalog(create_app(service, KEYS), ttl_seconds=0)
    with serve(app) as url:
        driver = browser()
        try:
            driver.get(url + "/catalog")
            yield Page(driver)
        finally:
            driver.quit()


@pytest.mark.integration
def test_products_fields_budget_and_lineage_render(page: Page, tmp_path: Path) -> None:
    """With a governance key: the summary, every product, the shop's fields with tag and
    protection, class budgets from the ledger, and a field's lineage to its classes."""
    page.enter_key("gov")
    stats = {s.get_attribute("data-stat"): s.text for s in page.wait(".stat", 10)}  # type: ignore[attr-defined]
    assert stats["products"].startswith("6")
    assert stats["classes > 80% budget"].startswith("1")
    products = page.wait(".products button", 6)
    assert len(products) == 6
    shop = page.driver.find_element(
        By.CSS_SELECTOR, '.products button[data-id="product:shop.orders"]'
    )
    shop.click()
    WebDriverWait(page.driver, WAIT).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail h2"), "shop.orders")
    )
    facts = page.driver.find_element(By.CSS_SELECTOR, "#detail .facts").text
    total = load_product_budgets()["shop.orders"].budget_per_day
    assert f"ε = {total} per person per UTC day (pure DP)" in facts
    assert "pseudonymous subject (customer_email) over the UTC day" in facts
    bounds = load_contracts()["shop"].product("orders").contribution  # type: ignore[union-attr]
    assert f"at most {bounds.max_records_per_period} records per subject per UTC day" in facts
    assert "amount_cents clamped to [" in facts
    rows = page.wait("#fields tr[data-field]", 9)
    assert len(rows) == 9
    email = page.driver.find_element(
        By.CSS_SELECTOR, 'tr[data-field="field:shop.orders.customer_email"]'
    )
    assert (
        email.find_element(By.CSS_SELECTOR, ".tag").get_attribute("data-tag") == "direct_identifier"
    )
    assert "tokenise" in email.find_element(By.CSS_SELECTOR, "[data-protection]").text
    assert "customer_email_token" in email.text
    dropped = page.driver.find_element(
        By.CSS_SELECTOR, 'tr[data-field="field:shop.orders.customer_name"]'
    )
    assert "(dropped)" in dropped.text
    busy = page.driver.find_element(
        By.CSS_SELECTOR, 'tr[data-class="query_class:shop.orders.distinct_customers"]'
    )
    budget = load_query_classes()["shop.orders.distinct_customers"].budget_per_day
    assert f"{SPENT['shop.orders.distinct_customers']} / {budget}" in busy.text
    assert "warn" in busy.find_element(By.CSS_SELECTOR, ".bar").get_attribute("class")
    share = busy.find_element(By.CSS_SELECTOR, ".allocation").text
    assert share == f"{budget} ({float(budget / total) * 100:.0f}%)"
    amount = page.driver.find_element(
        By.CSS_SELECTOR, 'tr[data-field="field:shop.orders.amount_cents"] td.linkish button'
    )
    amount.click()
    page.wait('.lnode[data-node="query_class:shop.orders.revenue_cents"]')
    assert page.driver.find_elements(By.CSS_SELECTOR, "#lineage svg path")
    # The drawing may be redrawn once its layout settles: wait for the root in the final one
    # rather than holding an element the redraw replaces.
    page.wait('.lnode.root[data-node="field:shop.orders.amount_cents"]')
    _screenshot(page.driver, tmp_path / "catalog.png")


@pytest.mark.integration
def test_search_by_tag_and_budget(page: Page) -> None:
    """The tag filter lists every quasi-identifier; the budget filter the busy class."""
    page.enter_key("gov")
    page.wait(".products button", 6)
    Select(page.driver.find_element(By.ID, "f-tag")).select_by_value("quasi_identifier")
    page.driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    WebDriverWait(page.driver, WAIT).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail h2"), "6 fields")
    )
    tags = {
        t.get_attribute("data-tag")
        for t in page.driver.find_elements(By.CSS_SELECTOR, "#fields .tag")
    }
    assert tags == {"quasi_identifier"}
    page.driver.find_element(By.ID, "f-budget").click()
    page.driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    item = page.wait("#over-budget li")[0]
    assert "shop.orders.distinct_customers" in item.text  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_consumer_key_is_refused_with_a_message(page: Page) -> None:
    """A non-governance key gets the API's 403 as a visible message, and no data."""
    page.enter_key("reader")
    WebDriverWait(page.driver, WAIT).until(
        ec.text_to_be_present_in_element((By.ID, "problem"), "Forbidden")
    )
    assert page.driver.find_elements(By.CSS_SELECTOR, ".products button") == []


def _screenshot(driver: WebDriver, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, int(height) + 140)
    driver.save_screenshot(str(path))
    if SAVE_SCREENSHOT:
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGE)
