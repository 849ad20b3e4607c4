"""The web dashboard in a real browser (headless Debian chromium) against a real server.

The app runs in uvicorn on a free port with a SqliteLedger, API keys, and fake window
sources; the service's clock is one the test moves, so "a window closes" is a step of
the test. The page is driven with selenium through /usr/bin/chromedriver. The shipped
daily classes are viewed over a simulated stretch of time across a UTC midnight (every
window, as a dashboard left open sees them); per-window classes have their own test.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.query_classes import (
    QueryClass,
    load_product_budgets,
    load_query_classes,
)
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
DAY = 86_400
SEEDED = 14  # windows released before the page opens: the history its charts start from
# Per-window classes (the shipped ones are daily): one plain, one with a budget for one
# release a day, one suppressed below 300.
PLAIN = "shop.orders.distinct_customers_window"
CAPPED = "shop.orders.distinct_customers_capped"
WITHHELD = "support.tickets.distinct_customers_withheld"
# A daily class with a tiny epsilon: too noisy at its finest resolutions.
NOISY = "shop.orders.order_count_noisy"
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
    span: text('.span'),
    resolution: shown(q('.resolution')) ? q('.resolution').dataset.resolution : null,
    selected: shown(q('.res-select')) ? q('.res-select').value : null,
    options: Array.from(t.querySelectorAll('.res-select option')).map((o) => o.value),
    too_noisy: text('.too-noisy-text'),
    coarser: shown(q('.coarser')) ? q('.coarser').dataset.resolution : null,
    lasts_until: shown(q('.lasts-until')) ? q('.lasts-until').dateTime : null,
    user_level: text('.user-level'),
    released: text('.released-at'),
    spent: text('.budget-spent'), total: text('.budget-total'),
    remaining: text('.budget-remaining'), gauge: q('.gauge-fill').style.width,
    problem: text('.problem'),
    problem_code: shown(q('.problem')) ? q('.problem').dataset.code : null,
    problem_status: shown(q('.problem')) ? q('.problem').dataset.status : null,
    bands: t.querySelectorAll('svg.chart path.ci-band').length,
    points: t.querySelectorAll('svg.chart circle.point').length,
    suppressed_points: t.querySelectorAll('svg.chart .point-suppressed:not(.legend)').length,
  };
});
"""

PRODUCTS_JS = """
return Array.from(document.querySelectorAll('#products .product-level')).map((p) => ({
  product: p.dataset.product,
  guarantee: p.querySelector('.guarantee').textContent,
  left: p.querySelector('.product-remaining')?.textContent ?? null,
  shares: Object.fromEntries(Array.from(p.querySelectorAll('.share')).map(
    (s) => [s.dataset.classId, s.dataset.epsilon])),
  shown: p.closest('[hidden]') === null,
}));
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


def sources(first: int, lo: int = -40, hi: int = 40) -> dict[str, WindowSource]:
    """Window rows ``lo``..``hi`` windows around ``first`` (window index 0): every aggregate
    the classes read, with the per-day bounds the processor applied (the contract's)."""
    contracts = load_contracts()
    applied = {d: contracts[d].products[0].contribution for d in ("shop", "support", "web")}
    shop, support, web = {}, {}, {}
    for i in range(lo, hi):
        w = first + WINDOW * i
        customers = wave(i, 420, 45, 3.0) + 2 * (i % 200)
        orders = round(customers * 2.4)
        hour_start = w % 3_600 < WINDOW  # windows opening an hour see more new subjects
        day_start = w % DAY == 0
        shop[w] = {
            "distinct_subjects": customers,
            "events": orders,
            "contribution_bound": 3,
            "amount_cents_sum": orders * 4150.0,
            "amount_cents_sum_cap": applied["shop"].max_sum_per_period["amount_cents"],
            "new_subjects_period": customers if day_start else wave(i, 6, 2, 5.0),
            "new_subjects_hour": customers if hour_start else wave(i, 40, 10, 4.0),
            "truncated_events": wave(i, 3, 2, 2.0),
            "max_records_per_period": applied["shop"].max_records_per_period,
            "max_windows_per_period": applied["shop"].max_windows_per_period,
        }
        # Window 0 is withheld (below 300), window 1 is shown; the rest wander across 300.
        tickets = {0: 240, 1: 410}.get(i, wave(i, 330, 100, 2.2))
        support[w] = {
            "distinct_subjects": tickets,
            "events": tickets,
            "contribution_bound": 1,
            "new_subjects_period": tickets if day_start else wave(i, 5, 2, 3.0),
            "new_subjects_hour": tickets if hour_start else wave(i, 30, 8, 3.0),
            "truncated_events": 0,
            "max_records_per_period": applied["support"].max_records_per_period,
            "max_windows_per_period": applied["support"].max_windows_per_period,
        }
        visitors = wave(i, 1800, 220, 4.0)
        web[w] = {
            "distinct_subjects": visitors,
            "events": visitors * 3,
            "contribution_bound": 3,
            "new_subjects_period": visitors if day_start else wave(i, 25, 6, 4.0),
            "new_subjects_hour": visitors if hour_start else wave(i, 150, 30, 4.0),
            "truncated_events": wave(i, 20, 5, 3.0),
            "max_records_per_period": applied["web"].max_records_per_period,
            "max_windows_per_period": applied["web"].max_windows_per_period,
        }
    return {
        "shop": FakeWindowSource(rows=shop),
        "support": FakeWindowSource(rows=support),
        "web": FakeWindowSource(rows=web),
    }


def window_classes() -> dict[str, QueryClass]:
    """Per-window classes: a plain one, a capped one and a suppressing one."""
    common = {"aggregate": "count_distinct_subjects", "epsilon_per_release": "0.05"}
    return {
        qc.id: qc
        for qc in (
            QueryClass.model_validate(
                {
                    **common,
                    "id": PLAIN,
                    "title": "Distinct customers in the last closed window",
                    "domain": "shop",
                    "product": "orders",
                    "budget_per_day": "1",
                }
            ),
            QueryClass.model_validate(
                {
                    **common,
                    "id": CAPPED,
                    "title": "Distinct customers (capped at one release a day)",
                    "domain": "shop",
                    "product": "orders",
                    "budget_per_day": "0.05",
                }
            ),
            QueryClass.model_validate(
                {
                    **common,
                    "id": WITHHELD,
                    "title": "Customers with resolved tickets (withheld below 300)",
                    "domain": "support",
                    "product": "tickets",
                    "suppress_below": 300,
                    "budget_per_day": "1",
                }
            ),
        )
    }


def daily_classes() -> dict[str, QueryClass]:
    """The shipped daily classes (the mean among them), and one too noisy to read finely."""
    classes = {k: qc for k, qc in load_query_classes().items() if qc.release == "daily"}
    classes[NOISY] = QueryClass.model_validate(
        {
            "id": NOISY,
            "title": "Orders placed (a tiny epsilon: too noisy per window)",
            "domain": "shop",
            "product": "orders",
            "aggregate": "count_records",
            "release": "daily",
            "privacy_unit": "subject_day",
            "epsilon_per_release": "0.001",
            "budget_per_day": "0.001",
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
    # (status, path and query) of every request the server answered
    requests: list[tuple[int, str]] = field(default_factory=list)

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
def serve(app: ASGIApp) -> Iterator[str]:
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


def browser(*extra: str, logs: tuple[str, ...] = ()) -> WebDriver:
    """Headless Debian chromium through its chromedriver (``extra`` arguments; ``logs``:
    the log types to keep, e.g. performance for the network requests)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--lang=en-US",
        *extra,
    ):
        options.add_argument(arg)
    if logs:
        options.set_capability("goog:loggingPrefs", dict.fromkeys(logs, "ALL"))
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


class RecordStatuses:
    """ASGI wrapper appending (status, path?query) of every answered request to ``seen``
    (a pure ASGI layer: the live stream keeps streaming and sees disconnects)."""

    def __init__(self, app: ASGIApp, seen: list[tuple[int, str]]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode()
        target = scope["path"] + (f"?{query}" if query else "")

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.seen.append((int(message["status"]), target))
            await send(message)

        await self.app(scope, receive, recording)


@contextmanager
def open_dashboard(
    tmp_path: Path,
    classes: dict[str, QueryClass],
    clock: Clock,
    first: int,
    windows: dict[str, WindowSource],
    seed: int = 0,
) -> Iterator[Dashboard]:
    """The app over ``classes`` with keys, the shipped product totals and a movable clock,
    ``seed`` per-window releases made before, and a browser on /dashboard."""
    require_browser()
    service = ReleaseService(
        classes=classes,
        contracts=load_contracts(),
        sources=windows,
        ledger=SqliteLedger(tmp_path / "ledger.db"),
        window_seconds=WINDOW,
        grace_seconds=2,
        lookback_windows=3,
        clock=clock,
        product_budgets=load_product_budgets(),
    )
    for k in range(seed, 0, -1):  # earlier live streams released these windows
        for class_id in service.classes:
            if class_id != CAPPED:
                service.release(class_id, first - WINDOW * k)
    settings = ApiSettings(live_poll_seconds=0.1, live_keepalive_seconds=2.0)
    app = create_app(service, {KEY: "consumer"}, settings)
    seen: list[tuple[int, str]] = []
    with serve(RecordStatuses(app, seen)) as url:
        driver = browser()  # quit before the server stops, so its live stream ends first
        try:
            driver.get(url + "/dashboard")
            yield Dashboard(url, clock, first, driver, seen)
        finally:
            driver.quit()


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    """Per-window classes with seeded history and a movable clock, a browser on /dashboard."""
    aligned = int(time.time())
    if aligned % DAY > DAY - 120:  # keep the test's windows in one UTC budget day
        aligned -= 120
    aligned -= aligned % WINDOW
    clock = Clock(aligned + 5.0)  # 5 s into a window; the grace period is 2 s
    first = aligned - WINDOW
    with open_dashboard(tmp_path, window_classes(), clock, first, sources(first), SEEDED) as page:
        yield page


def _drawn(tile: dict[str, Any]) -> int:
    """Releases a tile's chart draws: shown points and suppressed ones."""
    return int(tile["points"]) + int(tile["suppressed_points"])


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
            set(ts) == set(classes)
            and all(latest in (t["window"] or "") for t in ts.values())
            and all(_drawn(t) >= SEEDED for k, t in ts.items() if k != CAPPED)
        ),
        f"every class shows window {latest} over its history",
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
        if class_id != CAPPED:  # the history (the withheld class's counts cross 300)
            assert tile["bands"] >= 1 and _drawn(tile) >= SEEDED, tile
    assert tiles[WITHHELD]["suppressed_points"] >= 1
    assert tiles[CAPPED]["spent"] == tiles[CAPPED]["total"] and tiles[CAPPED]["remaining"] == "0"
    # "budget lasts until": at the class's spend rate so far today (the capped one: now).
    for class_id in (PLAIN, CAPPED):
        body = dashboard.api(f"/v1/queries/{class_id}").json()
        shown = datetime.fromisoformat(tiles[class_id]["lasts_until"])
        assert shown == datetime.fromisoformat(body["budget_lasts_until"]), (class_id, body)
    assert datetime.fromisoformat(tiles[CAPPED]["lasts_until"]).timestamp() == pytest.approx(
        dashboard.clock.now, abs=1
    )

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
            and all(_drawn(t) >= SEEDED + 2 for k, t in ts.items() if k != CAPPED)
        ),
        "the charts are drawn from history after a reload",
    )
    assert dashboard.wait_text("conn", "live")


VIEW_STEPS = 120  # windows viewed one by one: 20 minutes, past the UTC midnight
START_BEFORE_MIDNIGHT = 600  # the page opens at 23:50:05 UTC of the simulated day


@pytest.fixture
def daily(tmp_path: Path) -> Iterator[Dashboard]:
    """The shipped daily classes (and a too-noisy one) on a simulated day: every window
    since its UTC midnight exists, the page opens at 23:50:05 and the clock may cross into
    the next day."""
    day0 = (int(time.time()) // DAY - 1) * DAY  # yesterday's UTC midnight
    opens = day0 + DAY - START_BEFORE_MIDNIGHT
    clock = Clock(opens + 5.0)
    first = opens - WINDOW  # the last closed window when the page opens
    lo = (day0 - first) // WINDOW
    windows = sources(first, lo, VIEW_STEPS + 20)
    with open_dashboard(tmp_path, daily_classes(), clock, first, windows) as page:
        yield page


def _wait_released(page: Dashboard, ids: set[str], what: str) -> Tiles:
    """The tiles once every one of ``ids`` shows a value released at the clock's time."""
    now = _hms(int(page.clock.now))
    return page.wait_tiles(
        lambda ts: ids <= set(ts) and all(ts[i]["released"] == f"released {now} UTC" for i in ids),
        f"{what}: every daily tile shows a value released at {now}",
    )


def _shows(class_id: str, resolution: str) -> Callable[[Tiles], bool]:
    """Whether a tile has ``resolution`` chosen and shows a value at it."""

    def ready(tiles: Tiles) -> bool:
        tile = tiles[class_id]
        return bool(tile["resolution"] == resolution == tile["selected"])

    return ready


def _choose(page: Dashboard, class_id: str, resolution: str) -> None:
    tile = page.driver.find_element(By.CSS_SELECTOR, f'article.tile[data-class-id="{class_id}"]')
    Select(tile.find_element(By.CSS_SELECTOR, ".res-select")).select_by_value(resolution)


def _assert_as_the_api_says(page: Dashboard, tiles: Tiles) -> None:
    """Each daily tile shows the API's answer at its chosen resolution: the value, its
    (clamped) 95% interval, the resolution, the span and when the budget lasts until."""
    for class_id, tile in tiles.items():
        body = page.api(f"/v1/queries/{class_id}?resolution={tile['selected']}").json()
        assert tile["resolution"] == body["resolution"], (tile, body)
        assert number(tile["value"]) == pytest.approx(body["value"], abs=0.01), (tile, body)
        low, high = body["ci95"]
        assert number(tile["lo"]) <= low and number(tile["hi"]) >= high, (tile, body)
        assert number(tile["lo"]) >= 0  # counts and sums of non-negative measures
        assert low <= body["value"] <= high
        start = datetime.fromisoformat(body["span"]["start"])
        end = datetime.fromisoformat(body["span"]["end"])
        assert tile["span"] is not None and tile["span"].startswith("covers ")
        assert (
            start.strftime("%H:%M:%S") in tile["span"] and end.strftime("%H:%M:%S") in tile["span"]
        )
        lasts = datetime.fromisoformat(tile["lasts_until"])
        assert lasts == datetime.fromisoformat(body["budget_lasts_until"]), (tile, body)
        level = body["user_level"]
        assert tile["user_level"] == (
            f"ε {level['epsilon_per_subject_per_day']} of the product's "
            f"{level['product_total']} per person per UTC day"
        )
        assert bool(tile["too_noisy"]) == body["too_noisy"], (tile, body)


def _assert_products(page: Dashboard) -> None:
    """The page's product banner states what the API's list does, left today included."""
    listed = {p["product"]: p for p in page.api("/v1/queries").json()["products"]}

    def same(_: WebDriver) -> bool:
        shown = {p["product"]: p for p in page.driver.execute_script(PRODUCTS_JS)}
        return set(shown) == set(listed) and all(
            shown[k]["left"] == p["epsilon_left_today"] for k, p in listed.items()
        )

    try:
        WebDriverWait(page.driver, META_WAIT).until(same)
    except TimeoutException as exc:
        shown = page.driver.execute_script(PRODUCTS_JS)
        raise AssertionError(f"products shown {shown}, the API lists {listed}") from exc
    for shown in page.driver.execute_script(PRODUCTS_JS):
        product = listed[shown["product"]]
        eps = product["epsilon_per_subject_per_day"]
        assert (
            shown["shown"] and shown["guarantee"] == f"ε = {eps} per person per UTC day (pure DP)"
        )
        assert shown["shares"] == product["allocation"]


META_WAIT = 20.0  # the page re-reads the class list shortly after releases arrive


@pytest.mark.integration
def test_daily_tiles_resolutions_noise_budgets_and_no_429_over_a_day_change(
    daily: Dashboard, tmp_path: Path
) -> None:
    """Daily tiles show their resolution (a selector of the class's resolutions, auto by
    default), the value with its clamped 95% interval and span as the API answers them,
    "too noisy at this resolution" with a button to the coarser one, when each class's
    budget lasts until, and per product the loss per person per UTC day and what is left;
    viewing every window for 20 minutes across a UTC midnight never meets a 429, and the
    key never travels in a URL."""
    page, driver = daily, daily.driver
    page.wait_text("auth-error", "API key needed")
    page.enter_key(KEY)
    listed = page.api("/v1/queries").json()
    classes = {c["id"]: c for c in listed["classes"]}
    ids = set(classes)
    tiles = _wait_released(page, ids, "the page opened")
    assert page.wait_text("conn", "live")
    for class_id, tile in tiles.items():
        assert tile["options"] == ["auto", *classes[class_id]["resolutions"]], tile
        assert tile["selected"] == "auto" and tile["resolution"], tile
    _assert_as_the_api_says(page, tiles)
    _assert_products(page)

    # Too noisy per window: the tile says so and its button steps to the coarser resolution
    # until the value is readable.
    _choose(page, NOISY, "window")
    tile = page.wait_tiles(
        lambda ts: ts[NOISY]["resolution"] == "window" and ts[NOISY]["too_noisy"] is not None,
        f"{NOISY} is too noisy per window",
    )[NOISY]
    assert tile["too_noisy"] == "too noisy at this resolution" and tile["coarser"] == "1m"
    steps = []
    while tile["too_noisy"] is not None:
        coarser = tile["coarser"]
        assert coarser, f"too noisy with no coarser resolution: {tile}"
        driver.find_element(
            By.CSS_SELECTOR, f'article.tile[data-class-id="{NOISY}"] button.coarser'
        ).click()
        tile = page.wait_tiles(_shows(NOISY, coarser), f"{NOISY} switched to {coarser}")[NOISY]
        steps.append(coarser)
    assert steps[0] == "1m" and steps[-1] in ("1h", "today"), steps
    # The viewer picks "today so far" on the order count: it covers the day from 00:00.
    _choose(page, "shop.orders.order_count", "today")
    tiles = page.wait_tiles(
        lambda ts: ts["shop.orders.order_count"]["resolution"] == "today",
        "the order count shows today so far",
    )
    assert tiles["shop.orders.order_count"]["span"].startswith("covers 00:00:00 → ")
    _assert_as_the_api_says(page, tiles)

    # A dashboard left open: every window for 20 minutes, across the UTC midnight.
    midnight = (int(page.clock.now) // DAY + 1) * DAY
    for step in range(VIEW_STEPS):
        page.clock.now += WINDOW
        tiles = _wait_released(page, ids, f"step {step}")
        problems = {k: t["problem"] for k, t in tiles.items() if t["problem"] is not None}
        assert not problems, f"step {step}: {problems}"
    # The new day: yesterday's structure makes "last 24 h" available.
    assert page.clock.now > midnight + WINDOW
    _choose(page, "shop.orders.revenue_cents", "24h")
    tiles = page.wait_tiles(
        lambda ts: ts["shop.orders.revenue_cents"]["resolution"] == "24h",
        "revenue shows the last 24 h",
    )
    assert tiles["shop.orders.order_count"]["span"].startswith("covers 00:00:00 → ")
    _assert_as_the_api_says(page, tiles)
    _assert_products(page)
    refused = [(status, target) for status, target in page.requests if status == 429]
    assert not refused, refused
    assert len(page.requests) > VIEW_STEPS  # the page did read the API while viewing
    assert not [t for _, t in page.requests if KEY in t], "the key travelled in a URL"
    _screenshot(driver, tmp_path / "dashboard.png", readme=True)


def test_dashboard_assets_are_self_contained(tmp_path: Path) -> None:
    """The page and its assets are served without a key, under a same-origin-only CSP,
    and reference nothing outside this origin."""
    service = ReleaseService(
        classes={**window_classes(), **daily_classes()},
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


def _screenshot(driver: WebDriver, path: Path, readme: bool = False) -> None:
    """The whole page as a PNG at ``path`` (and as the README image when asked)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, int(height) + 140)  # window chrome is not page height
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    if SAVE_SCREENSHOT and readme:
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_IMAGE)
