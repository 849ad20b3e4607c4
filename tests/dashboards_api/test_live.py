"""The live endpoint pushes each class's new release as its window closes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from dashboards_api.ledger import SqliteLedger
from dashboards_api.main import create_app
from dashboards_api.releases import ReleaseService
from dashboards_api.settings import ApiSettings
from domains.registry import load_contracts
from tests.dashboards_api.per_window import raised_policy, window_classes
from tests.fakes import FakeWindowSource

CLASS = "shop.orders.distinct_customers"
FIRST = 1_795_427_040  # the last closed window at the start of the test


class Clock:
    """A clock the test moves forward."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse the SSE wire format into (event, data) pairs, skipping comments."""
    name, data = "message", ""
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "" and data:
            yield name, json.loads(data)
            name, data = "message", ""


def make(tmp_path: Path, clock: Clock, budget_releases: int | None = None) -> TestClient:
    classes = window_classes()
    if budget_releases is not None:
        qc = classes[CLASS]
        classes = {
            CLASS: qc.model_copy(
                update={"budget_per_day": qc.epsilon_per_release * budget_releases}
            )
        }
    windows = {FIRST + 10 * i: 100 + i for i in range(-2, 5)}
    service = ReleaseService(
        classes=classes,
        contracts=load_contracts(),
        sources={"shop": FakeWindowSource(windows)},
        ledger=SqliteLedger(tmp_path / "ledger.db"),
        window_seconds=10,
        grace_seconds=2,
        lookback_windows=3,
        clock=clock,
        policy=raised_policy(),
    )
    settings = ApiSettings(live_poll_seconds=0.02, live_keepalive_seconds=0.2)
    return TestClient(create_app(service, None, settings))


def test_pushes_each_closed_window_once(tmp_path: Path) -> None:
    """Each newly closed window is pushed as one release event, spent once, in order."""
    clock = Clock(FIRST + 15.0)
    client = make(tmp_path, clock)
    seen = []
    with client.stream("GET", f"/v1/live?classes={CLASS}") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for name, data in events(response.iter_lines()):
            assert name == "release" and data["class_id"] == CLASS
            seen.append(data["data_version"])
            if len(seen) == 3:
                break
            clock.now += 10
    assert seen == [f"window:{FIRST + 10 * i}" for i in range(3)]
    ledger = client.app.state.service.ledger  # type: ignore[attr-defined]
    assert len(ledger.entries()) == 3


def test_two_listeners_share_one_spend(tmp_path: Path) -> None:
    """A second listener gets the release the first one paid for, reused."""
    clock = Clock(FIRST + 15.0)
    client = make(tmp_path, clock)
    bodies = []
    for _ in range(2):
        with client.stream("GET", f"/v1/live?classes={CLASS}") as response:
            bodies.append(next(events(response.iter_lines()))[1])
    assert bodies[0]["value"] == bodies[1]["value"]
    assert [b["reused"] for b in bodies] == [False, True]


def test_exhausted_budget_is_a_problem_event(tmp_path: Path) -> None:
    """When the budget runs out, the stream says so with the problem document, once."""
    clock = Clock(FIRST + 15.0)
    client = make(tmp_path, clock, budget_releases=1)
    with client.stream("GET", f"/v1/live?classes={CLASS}") as response:
        stream = events(response.iter_lines())
        assert next(stream)[0] == "release"
        clock.now += 10
        name, data = next(stream)
    assert name == "problem" and data["code"] == "budget_exhausted"
    assert data["class_id"] == CLASS and data["status"] == 429


def test_unknown_class_is_404_before_streaming(tmp_path: Path) -> None:
    """An unknown class in the list is a 404 problem, not an empty stream."""
    client = make(tmp_path, Clock(FIRST + 15.0))
    response = client.get("/v1/live?classes=shop.orders.nope")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_query_class"
