"""The API's documentation pages work offline: Swagger UI and ReDoc load their assets
from the API (the installed fastapi-offline package), in headless chromium that cannot
resolve any host but 127.0.0.1, and render every operation."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.routes.docs import ASSETS, EMPTY_IMAGE, REDOC_LOGO
from dashboards_api.settings import Role
from tests.dashboards_api.test_api import make_service
from tests.dashboards_api.test_dashboard_browser import browser, require_browser, serve

KEYS: dict[str, Role] = {"g-key": "governance"}
WAIT = 20.0
# Every host name but 127.0.0.1 fails to resolve: a page that needs a CDN stays blank.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
URL = re.compile(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""")


def make_app(tmp_path: Path) -> FastAPI:
    return create_app(make_service(SqliteLedger(tmp_path / "ledger.db"), {}), KEYS)


def operations(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(method, path, summary) of every operation in an OpenAPI document."""
    return [
        (method.upper(), path, op["summary"])
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]


def test_pages_name_only_their_own_assets(tmp_path: Path) -> None:
    """/docs and /redoc are open without a key and reference only this API's own asset
    routes, which serve the installed package's files (ReDoc's without its CDN logo)."""
    client = TestClient(make_app(tmp_path))
    static = files("fastapi_offline") / "static"
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/html"
        )
        assert "https://" not in response.text and "http://" not in response.text, page
        urls = URL.findall(response.text)
        assert urls and all(u.startswith(("/docs/assets/", "/openapi.json")) for u in urls), urls
        for url in urls:
            assert client.get(url).status_code == 200, url
    for name, media_type in ASSETS.items():
        asset = client.get(f"/docs/assets/{name}")
        assert asset.headers["content-type"] == media_type
        packaged = (static / name).read_bytes()
        assert asset.content == packaged.replace(REDOC_LOGO, EMPTY_IMAGE)
    assert REDOC_LOGO not in client.get("/docs/assets/redoc.standalone.js").content
    assert client.get("/docs/assets/other.js").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "privmesh dashboards API"


def test_inline_scripts_run_by_their_hash_alone(tmp_path: Path) -> None:
    """The pages' policy allows scripts from this origin and exactly the page's own inline
    script (by its SHA-256), and nothing from another origin."""
    client = TestClient(make_app(tmp_path))
    response = client.get("/docs")
    policy = response.headers["content-security-policy"]
    [inline] = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    script_src = next(d for d in policy.split(";") if d.strip().startswith("script-src"))
    assert script_src.split() == ["script-src", "'self'", f"'sha256-{digest}'"]
    assert "'unsafe-inline'" not in script_src and "http" not in policy
    assert "default-src 'none'" in policy


def test_docs_follow_a_root_path(tmp_path: Path) -> None:
    """Behind a proxy that serves the API under a prefix, the pages ask for their assets
    and the document under that prefix."""
    client = TestClient(make_app(tmp_path), root_path="/api")
    text = client.get("/docs").text
    assert "/api/docs/assets/swagger-ui-bundle.js" in text and "'/api/openapi.json'" in text


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[tuple[WebDriver, str, dict[str, Any]]]:
    """The API on a free loopback port; chromium that resolves no other host and keeps
    its network and console logs."""
    require_browser()
    app = make_app(tmp_path)
    spec = TestClient(app).get("/openapi.json").json()
    with serve(app) as url:
        driver = browser(OFFLINE, logs=("performance", "browser"))
        try:
            yield driver, url, spec
        finally:
            driver.quit()


def browser_log(driver: WebDriver, kind: str) -> list[dict[str, Any]]:
    """Chromium's ``kind`` log entries since the last read (chromedriver's getLog)."""
    return list(driver.execute("getLog", {"type": kind})["value"])


def requested(driver: WebDriver) -> list[str]:
    """URLs of every request the page made (from chromium's network log)."""
    urls = []
    for entry in browser_log(driver, "performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_stayed_local(driver: WebDriver, url: str) -> None:
    """Every request went to the API (or was a data/blob URL); no policy refusals."""
    urls = requested(driver)
    assert any(u.endswith("/openapi.json") for u in urls), urls
    outside = [u for u in urls if not u.startswith((url + "/", "data:", "blob:"))]
    assert outside == [], outside
    refused = [e["message"] for e in browser_log(driver, "browser") if "Security" in e["message"]]
    assert refused == [], refused


@pytest.mark.integration
def test_swagger_ui_renders_every_operation_offline(
    offline: tuple[WebDriver, str, dict[str, Any]],
) -> None:
    """Swagger UI, with no network but the API's, lists every operation with its summary."""
    driver, url, spec = offline
    driver.get(url + "/docs")
    wanted = operations(spec)
    blocks = ".opblock .opblock-summary"
    WebDriverWait(driver, WAIT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, blocks)) >= len(wanted)
    )
    shown = {
        (
            b.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
            b.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"),
            b.find_element(By.CSS_SELECTOR, ".opblock-summary-description").text,
        )
        for b in driver.find_elements(By.CSS_SELECTOR, blocks)
    }
    assert shown == set(wanted)
    assert ("GET", "/v1/queries/{class_id}", "Release") in shown
    assert driver.find_element(By.CSS_SELECTOR, ".info .title").text.startswith(
        "privmesh dashboards API"
    )
    assert_stayed_local(driver, url)


@pytest.mark.integration
def test_redoc_renders_every_operation_offline(
    offline: tuple[WebDriver, str, dict[str, Any]],
) -> None:
    """ReDoc, with no network but the API's, shows every operation's summary and path."""
    driver, url, spec = offline
    driver.get(url + "/redoc")
    wanted = operations(spec)
    WebDriverWait(driver, WAIT).until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']")) >= len(wanted)
        )
    )
    headings = {h.text for h in driver.find_elements(By.CSS_SELECTOR, "h2")}
    assert {summary for _, _, summary in wanted} <= headings
    text = driver.find_element(By.TAG_NAME, "body").get_attribute("textContent") or ""
    assert all(path in text for _, path, _ in wanted)
    assert_stayed_local(driver, url)
