"""The web dashboard in a real browser (headless Debian chromium) against a real server.

The app runs in uvicorn on a free port with a SqliteLedger, API keys, and fake window
sources; the service's clock is one the test moves, so "a window closes" is a step of
the test. The page is driven with selenium through /usr/bin/chromedriver.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.query_classes import QueryClass, load_query_classes
from dashboards_api.releases import ReleaseService, WindowSource
from dashboards_api.settings import ApiSettings
from domains.registry import load_contracts
from infra.ports import wait_for_port
from tests.conftest import free_port
from tests.fakes import FakeWindowSource

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Read at import: the autouse isolated_env fixture clears PRIVMESH_* before each test.
SAVE_SCREENSHOT = os.environ.get("PRIVMESH_SAVE_SCREENSHOT") == "1"
README_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"

KEY = "consumer-key"
WINDOW = 10
SEEDED = 14  # windows released before the page opens: the history its charts start from
CAPPED = "shop.orders.distinct_customers_capped"  # budget for one release a day
WITHHELD = "support.tickets.distinct_customers_withheld"  # suppressed below 300
WAIT = 15.0
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, never fetched

# Everything the test reads from a tile, in one round trip.
SNAPSHOT_JS = """
const shown = (node) => node !== null && node.closest('[hidden]') === null;
return Array.from(document.querySelectorAll('article.tile')).map((t) => {
  const q = (s) => t.querySelector(s);
  const text = (s) => (shown(q(s)) ? q(s).textContent : null);
  return {
    id: t.dataset.classId,
    value: text('.value'), lo: text('.ci-lo'), hi: text('.ci-hi'),
    suppressed: shown(q('.suppressed-mark')),
    window: text('.window'),
    spent: text('.budget-spent'), total: text('.budget-total'),
    remaining: text('.budget-remaining'), gauge: q('.gauge-fill').style.width,
    problem: text('.problem'),
    problem_code: shown(q('.problem')) ? q('.problem').dataset.code : null,
    bands: t.querySelectorAll('svg.chart path.ci-band').length,
    points: t.querySelectorAll('svg.chart circle.point').length,
    suppressed_points: t.querySelectorAll('svg.chart .point-suppressed:not(.legend)').length,
  };
});
"""

Tiles = dict[str, dict[str, Any]]


class Clock:
    """The service's clock; the test moves it a window at a time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wave(i: int, mean: float, amplitude: float, period: float) -> int:
    """A smooth synthetic count for window ``i``."""
    return round(mean + amplitude * math.sin(i / period))


def sources(first: int) -> dict[str, WindowSource]:
    """Window rows around ``first`` (window index 0): every aggregate the classes read."""
    shop, support, web = {}, {}, {}
    for i in range(-40, 40):
        w = first + WINDOW * i
        customers = wave(i, 420, 45, 3.0) + 2 * i
        orders = round(customers * 2.4)
        shop[w] = {
            "distinct_subjects": customers,
            "events": orders,
            "contribution_bound": 3,
            "amount_cents_sum": orders * 4150.0,
        }
        # Window 0 is withheld (below 300), window 1 is shown; the rest wander across 300.
        tickets = {0: 240, 1: 410}.get(i, wave(i, 330, 100, 2.2))
        support[w] = {"distinct_subjects": tickets, "events": tickets, "contribution_bound": 1}
        web[w] = {"distinct_subjects": wave(i, 1800, 220, 4.0), "events": None}
    return {
        "shop": FakeWindowSource(rows=shop),
        "support": FakeWindowSource(rows=support),
        "web": FakeWindowSource(rows=web),
    }


def query_classes() -> dict[str, QueryClass]:
    """The registered window classes, a capped one and a suppressing one."""
    classes = {k: qc for k, qc in load_query_classes().items() if qc.source == "windows"}
    base = classes["shop.orders.distinct_customers"]
    classes[CAPPED] = base.model_copy(
        update={
            "id": CAPPED,
            "title": "Distinct customers (capped at one release a day)",
            "budget_per_day": base.epsilon_per_release,
        }
    )
    classes[WITHHELD] = QueryClass.model_validate(
        {
            "id": WITHHELD,
            "title": "Customers with resolved tickets (withheld below 300)",
            "domain": "support",
            "product": "tickets",
            "aggregate": "count_distinct_subjects",
            "suppress_below": 300,
            "epsilon_per_release": "0.5",
            "budget_per_day": "50",
        }
    )
    return classes


@dataclass
class Dashboard:
    """A running server and a browser on its dashboard."""

    url: str
    clock: Clock
    first: int  # start of the last closed window when the page opened
    driver: WebDriver

    def api(self, path: str) -> httpx.Response:
        """GET ``path`` with the consumer key."""
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)

    def tiles(self) -> Tiles:
        """What every tile shows now."""
        return {t["id"]: t for t in self.driver.execute_script(SNAPSHOT_JS)}

    def wait_tiles(self, ready: Callable[[Tiles], bool], what: str) -> Tiles:
        """The tiles once ``ready`` holds (fails after WAIT seconds saying ``what``)."""
        seen: list[Tiles] = []

        def check(_: WebDriver) -> Tiles | Literal[False]:
            seen[:] = [self.tiles()]
            return seen[0] if ready(seen[0]) else False

        try:
            result: Tiles = WebDriverWait(self.driver, WAIT).until(check)
        except TimeoutException as exc:
            raise AssertionError(f"timed out waiting until {what}; tiles: {seen}") from exc
        return result

    def wait_text(self, element_id: str, text: str) -> str:
        """The text of ``element_id`` once it contains ``text``."""
        WebDriverWait(self.driver, WAIT).until(
            ec.text_to_be_present_in_element((By.ID, element_id), text)
        )
        return str(self.driver.find_element(By.ID, element_id).text)

    def enter_key(self, key: str) -> None:
        """Type ``key`` in the key field and submit it."""
        field = self.driver.find_element(By.ID, "api-key")
        field.clear()
        field.send_keys(key)
        self.driver.find_element(By.ID, "key-save").click()


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` in uvicorn on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="none",
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    try:
        if not wait_for_port(port, 10):
            raise RuntimeError(f"uvicorn did not listen on port {port} within 10 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def require_browser() -> None:
    """Skip (with the fix) when Debian's chromium or its chromedriver is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} missing: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver), as .ci/run does"
        )


def browser() -> WebDriver:
    """Headless Debian chromium through its chromedriver."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    """The app with keys, seeded history and a movable clock, and a browser on /dashboard."""
    require_browser()
    aligned = int(time.time())
    if aligned % 86_400 > 86_400 - 120:  # keep the test's windows in one UTC budget day
        aligned -= 120
    aligned -= aligned % WINDOW
    clock = Clock(aligned + 5.0)  # 5 s into a window; the grace period is 2 s
    first = aligned - WINDOW
    service = ReleaseService(
        classes=query_classes(),
        contracts=load_contracts(),
        sources=sources(first),
        ledger=SqliteLedger(tmp_path / "ledger.db"),
        window_seconds=WINDOW,
        grace_seconds=2,
        lookback_windows=3,
        clock=clock,
    )
    for k in range(SEEDED, 0, -1):  # earlier live streams released these windows
        for class_id in service.classes:
            if class_id != CAPPED:
                service.release(class_id, first - WINDOW * k)
    settings = ApiSettings(live_poll_seconds=0.1, live_keepalive_seconds=2.0)
    app = create_app(service, {KEY: "consumer"}, settings)
    with serve(app) as url:
        driver = browser()  # quit before the server stops, so its live stream ends first
        try:
            driver.get(url + "/dashboard")
            yield Dashboard(url, clock, first, driver)
        finally:
            driver.quit()


def number(text: str | None) -> float:
    """A number as the page formats it ("1,234", "-5", "12.5")."""
    assert text is not None, "no number shown"
    return float(text.replace(",", "").replace("\u2212", "-"))


@pytest.mark.integration
def test_wrong_key_shows_an_auth_error(dashboard: Dashboard) -> None:
    """Without a key the page asks for one, a wrong key gets the API's 401 detail, no data."""
    asked = dashboard.wait_text("auth-error", "API key needed")
    assert "Authorization: Bearer" in asked  # the API's own problem detail
    dashboard.enter_key("not-a-key")
    message = dashboard.wait_text("auth-error", "Not authorised")
    assert "the API key is not recognised" in message
    assert dashboard.wait_text("conn", "not authorised")
    assert dashboard.tiles() == {}
    assert "not-a-key" not in dashboard.driver.current_url


@pytest.mark.integration
def test_live_tiles_charts_budgets_and_problems(dashboard: Dashboard, tmp_path: Path) -> None:
    """With a key, every class gets a tile (value inside its CI, budget as the API says, a
    CI band over the history), releases arrive live as windows close, an exhausted budget
    and a suppressed value show on their tiles, and the key survives a reload."""
    driver, first = dashboard.driver, dashboard.first
    dashboard.wait_text("auth-error", "API key needed")
    dashboard.enter_key(KEY)
    classes = {c["id"]: c for c in dashboard.api("/v1/queries").json()["classes"]}
    # A running total's window starts at its horizon: compare where windows end.
    latest = f"→ {_hms(first + WINDOW)}"

    tiles = dashboard.wait_tiles(
        lambda ts: (
            set(ts) == set(classes) and all(latest in (t["window"] or "") for t in ts.values())
        ),
        f"every class shows window {latest}",
    )
    assert dashboard.wait_text("conn", "live")
    assert KEY not in driver.current_url
    budgets = {c["id"]: c["budget"] for c in dashboard.api("/v1/queries").json()["classes"]}
    for class_id, tile in tiles.items():
        if class_id == WITHHELD:
            assert tile["suppressed"] and tile["value"] == "—" and tile["lo"] is None
        else:
            assert number(tile["lo"]) <= number(tile["value"]) <= number(tile["hi"]), tile
        _assert_gauge(tile, budgets[class_id])
        if class_id != CAPPED:
            assert tile["bands"] >= 1 and tile["points"] >= SEEDED // 2, tile  # history
    assert tiles[WITHHELD]["suppressed_points"] >= 1
    assert tiles[CAPPED]["spent"] == tiles[CAPPED]["total"] and tiles[CAPPED]["remaining"] == "0"

    # A window closes: new releases arrive on the open page, the capped class has a problem.
    driver.execute_script("window.__sameDocument = true;")
    dashboard.clock.now += WINDOW
    newer = f"→ {_hms(first + 2 * WINDOW)}"
    tiles = dashboard.wait_tiles(
        lambda ts: (
            all(newer in (t["window"] or "") for k, t in ts.items() if k != CAPPED)
            and ts[CAPPED]["problem_code"] == "budget_exhausted"
        ),
        f"every class shows window {newer} and {CAPPED} a problem",
    )
    assert driver.execute_script("return window.__sameDocument === true;"), "page reloaded"
    budgets = {c["id"]: c["budget"] for c in dashboard.api("/v1/queries").json()["classes"]}
    for class_id, tile in tiles.items():
        assert number(tile["lo"]) <= number(tile["value"]) <= number(tile["hi"]), tile
        _assert_gauge(tile, budgets[class_id])
    assert not tiles[WITHHELD]["suppressed"]
    refused = dashboard.api(f"/v1/queries/{CAPPED}")
    assert refused.status_code == 429
    assert refused.json()["detail"] in tiles[CAPPED]["problem"]
    assert latest in tiles[CAPPED]["window"]  # its last release stays on show

    _screenshot(driver, tmp_path / "dashboard.png")

    # A reload keeps the key (session storage) and redraws the charts from history.
    driver.refresh()
    tiles = dashboard.wait_tiles(
        lambda ts: (
            set(ts) == set(classes)
            and all(
                t["points"] + t["suppressed_points"] >= SEEDED + 2
                for k, t in ts.items()
                if k != CAPPED
            )
        ),
        "the charts are drawn from history after a reload",
    )
    assert dashboard.wait_text("conn", "live")


def test_dashboard_assets_are_self_contained(tmp_path: Path) -> None:
    """The page and its assets are served without a key, under a same-origin-only CSP,
    and reference nothing outside this origin."""
    service = ReleaseService(
        classes=query_classes(),
        contracts=load_contracts(),
        sources={},
        ledger=SqliteLedger(tmp_path / "ledger.db"),
        window_seconds=WINDOW,
        grace_seconds=2,
        lookback_windows=3,
    )
    client = TestClient(create_app(service, {KEY: "consumer"}))
    for path, kind in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind)
        assert "default-src 'none'" in response.headers["content-security-policy"]
        text = response.text.replace(SVG_NAMESPACE, "")
        assert "http://" not in text and "https://" not in text, f"{path} names another origin"
    assert client.get("/v1/queries").status_code == 401


def _hms(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%H:%M:%S")


def _assert_gauge(tile: dict[str, Any], budget: dict[str, str]) -> None:
    assert (tile["spent"], tile["total"], tile["remaining"]) == (
        budget["epsilon_spent"],
        budget["epsilon_budget"],
        budget["epsilon_remaining"],
    ), tile
    share = min(1.0, float(budget["epsilon_spent"]) / float(budget["epsilon_budget"]))
    assert abs(float(tile["gauge"].rstrip("%")) - 100 * share) < 0.1, tile


def _screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page as a PNG at ``path`` (and as the README image when asked)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, int(height) + 140)  # window chrome is not page height
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    if SAVE_SCREENSHOT:
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_IMAGE)
