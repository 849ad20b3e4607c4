"""The privacy-posture page in a real browser (headless Debian chromium) against a real
server: findings, streams, consent modes, keys, budgets, operations and models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from dashboards_api.main import create_app
from dashboards_api.query_classes import load_product_budgets, load_query_classes
from governance.posture import PostureSources
from governance.posture_api import mount
from infra.api_app import with_catalog
from tests.dashboards_api.test_dashboard_browser import browser, require_browser, serve
from tests.governance.test_posture import KEYS, sources  # noqa: F401 - the fixture

WAIT = 15.0
SAVE_SCREENSHOT = os.environ.get("PRIVMESH_SAVE_SCREENSHOT") == "1"  # read before fixtures


@pytest.fixture
def driver(sources: PostureSources) -> Iterator[tuple[WebDriver, str]]:  # noqa: F811
    require_browser()
    app = with_catalog(create_app(sources.service, KEYS), ttl_seconds=0)
    mount(app, sources)
    with serve(app) as url:
        chrome = browser()
        try:
            yield chrome, url
        finally:
            chrome.quit()


def cells(driver: WebDriver, section: str) -> list[list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{section} tbody tr")
    return [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]


@pytest.mark.integration
def test_posture_page_shows_findings_and_every_section(driver: tuple[WebDriver, str]) -> None:
    chrome, url = driver
    chrome.get(url + "/posture")
    WebDriverWait(chrome, WAIT).until(lambda d: d.find_element(By.ID, "problem").is_displayed())
    assert "API key needed" in chrome.find_element(By.ID, "problem").text
    field = chrome.find_element(By.ID, "api-key")
    field.send_keys("gov")
    field.submit()
    WebDriverWait(chrome, WAIT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#findings tbody tr")) >= 3
    )
    assert not chrome.find_element(By.ID, "problem").is_displayed()
    findings = cells(chrome, "findings")
    assert findings[1][:2] == ["error", "membership_leak"]
    assert any(row[1] == "worker_unreachable" and row[2] == "shop" for row in findings)
    stats = {
        s.get_attribute("data-stat"): s.text for s in chrome.find_elements(By.CSS_SELECTOR, ".stat")
    }
    assert stats["erasures"].startswith("2") and stats["workers up"].startswith("0/1")
    assert cells(chrome, "streams")[0][:2] == ["shop", "unreachable"]
    purposes = {row[0]: row for row in cells(chrome, "consent")}
    assert purposes["web.page_views"][2] == "opt-in"
    assert purposes["shop.orders"][2] == "opt-out"
    assert next(r for r in cells(chrome, "keys") if r[0] == "shop")[:2] == ["shop", "k1"]
    bars = chrome.find_elements(By.CSS_SELECTOR, "#budgets .bar")
    assert len(bars) >= len(cells(chrome, "budgets")) > 0
    # Per product: the user-level loss per person per UTC day, what is left, the allocation.
    shop = chrome.find_element(
        By.CSS_SELECTOR, '#budgets .product-budget[data-product="shop.orders"]'
    )
    total = load_product_budgets()["shop.orders"].budget_per_day
    assert shop.find_element(By.CSS_SELECTOR, ".statement").text == (
        f"ε = {total} per person per UTC day (pure DP)"
    )
    assert shop.find_element(By.CSS_SELECTOR, ".left").text == f"{float(total):.3f} ε left today"
    allocated = {
        row[0]: row[1]
        for row in (
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in shop.find_elements(By.CSS_SELECTOR, "tbody tr")
        )
    }
    assert allocated["shop.orders.order_count"] == str(
        load_query_classes()["shop.orders.order_count"].budget_per_day
    )
    models = cells(chrome, "models")
    assert models[1][0] == "flight_delay-v1" and models[1][-1] == "0.310 (loss_threshold)"
    assert "1 erase" in chrome.find_element(By.ID, "ops").text
    if SAVE_SCREENSHOT:
        chrome.set_window_size(1400, 1500)
        chrome.save_screenshot(str(Path(__file__).resolve().parents[2] / "docs/img/posture.png"))
