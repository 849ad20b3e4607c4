"""Two real API replicas race for one class's budget over a shared Postgres ledger.

The module gets a fresh database (``privmesh_race_<random>`` on the machine's trust-auth
server, dropped afterwards: the ledger is append-only, so rows of earlier runs could not be
cleaned) and two uvicorn processes of ``tests.dashboards_api.race_app`` (started once, ~10 s
of imports each; a test finding one dead restarts it). Each test spends its own class's
budget. Requests ask for distinct closed windows (``window_start``), so each one is a fresh
data version that spends.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from dashboards_api.budget import to_micro
from tests.conftest import free_port
from tests.dashboards_api.race_app import (
    CLASS_IDS,
    DAILY_IDS,
    DAILY_TOTAL,
    EPSILON,
    PERIOD,
    closed_windows,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RELEASES = 50  # each class's budget allows exactly this many releases
REQUESTS = 200  # one per distinct window, across both replicas
BUDGET_MICRO = RELEASES * to_micro(EPSILON)
RESETS_AT = "2026-11-24T00:00:00+00:00"  # the end of the frozen clock's UTC day


class Replica(NamedTuple):
    """One API process and its base URL."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path


class Outcome(NamedTuple):
    """What a client saw for the window it asked for (status None: no answer)."""

    window: int
    replica: int
    status: int | None
    body: dict[str, Any] | None
    content_type: str | None


class Cluster:
    """Two replicas of the race app over one ledger database."""

    def __init__(self, ledger_url: str, logs: Path) -> None:
        self.ledger_url = ledger_url
        self.logs = logs
        self.env = {
            **os.environ,
            "RACE_LEDGER_URL": ledger_url,
            "RACE_BUDGET": str(RELEASES * int(EPSILON)),
            "RACE_WINDOWS": str(REQUESTS + 100),
        }
        self.replicas: list[Replica] = []

    def start(self, i: int) -> Replica:
        """Start replica ``i`` on a free port (not waiting for it)."""
        port = free_port()
        log = self.logs / f"replica-{i}-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "uvicorn", "tests.dashboards_api.race_app:create"),
                    *("--factory", "--host", "127.0.0.1", "--port", str(port)),
                    *("--log-level", "warning"),
                ],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return Replica(proc, f"http://127.0.0.1:{port}", log)

    def ensure_running(self) -> list[Replica]:
        """Both replicas up: start the missing or dead ones and wait until they answer."""
        if not self.replicas:
            self.replicas = [self.start(0), self.start(1)]
        for i, replica in enumerate(self.replicas):
            if replica.proc.poll() is not None:
                self.replicas[i] = self.start(i)
        for replica in self.replicas:
            wait_ready(replica, timeout=120)  # ~10 s idle; minutes on a loaded box
        return self.replicas

    def stop(self) -> None:
        """Terminate the replicas still running."""
        for replica in self.replicas:
            if replica.proc.poll() is None:
                replica.proc.terminate()
        for replica in self.replicas:
            try:
                replica.proc.wait(10)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait(5)


@pytest.fixture(scope="module")
def race_db(postgres_url: str) -> Iterator[str]:
    """URL of a fresh database of this module alone, dropped (with its connections) after."""
    import psycopg

    name = f"privmesh_race_{uuid.uuid4().hex[:12]}"
    base, _, _ = postgres_url.rpartition("/")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def cluster(race_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The module's two replicas (started lazily by ``replicas``), stopped at the end."""
    started = Cluster(race_db, tmp_path_factory.mktemp("replicas"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def replicas(cluster: Cluster) -> list[Replica]:
    """Both replicas, running and ready."""
    return cluster.ensure_running()


def wait_ready(replica: Replica, timeout: float) -> None:
    """Poll /healthz until the replica answers; fail with its log if it dies or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.proc.poll() is not None:
            pytest.fail(f"replica exited ({replica.proc.returncode}):\n{replica.log.read_text()}")
        try:
            if httpx.get(f"{replica.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"replica not ready in {timeout} s:\n{replica.log.read_text()}")


async def ask(
    client: httpx.AsyncClient, replica: Replica, index: int, class_id: str, window: int
) -> Outcome:
    """GET the release of ``window`` from ``replica`` (number ``index``)."""
    try:
        response = await client.get(
            f"{replica.url}/v1/queries/{class_id}", params={"window_start": window}
        )
    except httpx.TransportError:
        return Outcome(window, index, None, None, None)
    return Outcome(
        window, index, response.status_code, response.json(), response.headers.get("content-type")
    )


def ledger_rows(url: str, class_id: str) -> list[dict[str, Any]]:
    """Every ledger row of ``class_id``, read straight from Postgres."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, period, data_version, cost_micro, answer FROM releases WHERE class_id = %s",
            (class_id,),
        ).fetchall()
    return [
        {
            "id": r[0],
            "period": r[1],
            "data_version": r[2],
            "cost_micro": r[3],
            "answer": json.loads(r[4]),
        }
        for r in rows
    ]


def product_rows(url: str, product: str) -> list[dict[str, Any]]:
    """Every ledger row of ``product`` (all its classes), read straight from Postgres."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, class_id, period, data_version, cost_micro FROM releases "
            "WHERE product = %s",
            (product,),
        ).fetchall()
    return [
        {"id": r[0], "class_id": r[1], "period": r[2], "data_version": r[3], "cost_micro": r[4]}
        for r in rows
    ]


def check_releases_are_ledgered(outcomes: list[Outcome], rows: list[dict[str, Any]]) -> None:
    """Every 200 is a fresh spend of its own window, with the ledger's id, value and version;
    no data version is ledgered twice."""
    by_id = {row["id"]: row for row in rows}
    for o in outcomes:
        if o.status != 200:
            continue
        assert o.body is not None
        assert o.body["reused"] is False and o.body["epsilon_charged"] == EPSILON
        assert o.body["data_version"] == f"window:{o.window}"
        row = by_id.get(o.body["ledger_entry"])
        assert row is not None, f"release {o.body['ledger_entry']} has no ledger entry"
        # the ledger keys a release on its data version and its class definition
        assert (row["data_version"], row["answer"]["value"]) == (
            f"{o.body['data_version']}|def={o.body['definition']}",
            o.body["value"],
        )
    versions = [row["data_version"] for row in rows]
    assert len(versions) == len(set(versions)), "a data version was ledgered twice"
    assert {row["period"] for row in rows} == {PERIOD}


def test_two_replicas_release_exactly_the_budget(replicas: list[Replica], race_db: str) -> None:
    """200 concurrent requests for distinct windows over two replicas release exactly the 50
    the budget allows; the other 150 are 429 problems saying what is left and when it resets;
    the ledger spends exactly the budget and holds every released answer under the id the
    client was given."""
    class_id = CLASS_IDS[0]
    windows = closed_windows(REQUESTS)

    async def fire() -> list[Outcome]:
        limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(ask(client, replicas[n % 2], n % 2, class_id, w) for n, w in enumerate(windows))
            )

    outcomes = asyncio.run(fire())
    statuses = [o.status for o in outcomes]
    assert statuses.count(200) == RELEASES, sorted(set(statuses), key=str)
    assert statuses.count(429) == REQUESTS - RELEASES  # so both replicas answered every request

    rows = ledger_rows(race_db, class_id)
    assert len(rows) == RELEASES
    assert sum(row["cost_micro"] for row in rows) == BUDGET_MICRO
    check_releases_are_ledgered(outcomes, rows)

    for o in outcomes:
        if o.status != 429:
            continue
        assert o.content_type == "application/problem+json"
        assert o.body is not None and o.body["code"] == "budget_exhausted"
        assert o.body["spent_micro"] == BUDGET_MICRO == o.body["budget_micro"]
    # Last, so that the ledger checks above run first: the refusal says what is left and
    # when the budget resets, as a 200's "budget" object does.
    refused = next(o.body for o in outcomes if o.status == 429)
    assert refused is not None
    budget = refused.get("budget", refused)
    assert (budget.get("epsilon_remaining"), budget.get("resets_at")) == ("0", RESETS_AT), (
        f"429 problem lacks the remaining budget and reset time: {refused}"
    )


def test_killed_replica_loses_no_spend_and_releases_nothing_unledgered(
    replicas: list[Replica], race_db: str
) -> None:
    """SIGKILL of one replica after 50 requests were sent, the other carrying on: every answer
    a client got is in the ledger with its value and version, no version is ledgered twice, and
    the spend is at most the budget (exactly it: the dead replica strands no lock or budget)."""
    class_id = CLASS_IDS[1]
    windows = closed_windows(REQUESTS)
    killed_at = 50

    async def fire() -> list[Outcome]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        gate = asyncio.Semaphore(20)  # requests in flight at once

        async def one(index: int, window: int) -> Outcome:
            try:
                return await ask(client, replicas[index], index, class_id, window)
            finally:
                gate.release()

        async with httpx.AsyncClient(timeout=20, limits=limits) as client:
            tasks = []
            for n, window in enumerate(windows):
                if n == killed_at:
                    replicas[0].proc.send_signal(signal.SIGKILL)
                await gate.acquire()
                tasks.append(asyncio.create_task(one(n % 2 if n < killed_at else 1, window)))
            return await asyncio.gather(*tasks)

    outcomes = asyncio.run(fire())
    assert replicas[0].proc.wait(5) == -signal.SIGKILL
    answered = [o for o in outcomes if o.status is not None]
    assert {o.status for o in answered} <= {200, 429}, [o for o in answered if o.status != 200]
    assert all(o.status is not None for o in outcomes if o.replica == 1)
    assert any(o.status is None for o in outcomes if o.replica == 0)  # the kill hit live requests

    rows = ledger_rows(race_db, class_id)
    check_releases_are_ledgered(outcomes, rows)
    spent = sum(row["cost_micro"] for row in rows)
    assert spent <= BUDGET_MICRO
    assert spent == BUDGET_MICRO, f"only {spent} of {BUDGET_MICRO} spent after the kill"


def test_two_replicas_never_pass_a_product_total_with_daily_classes(
    replicas: list[Replica], race_db: str
) -> None:
    """Four daily classes of one product, each paying epsilon 1 for its day, are asked for 50
    windows each over two replicas at once: the product's total of 2 pays exactly two days;
    every 200 is a free value of a paid class committed under the id the client got, and the
    other two classes answer only 429s."""
    windows = closed_windows(50)
    asked = [(c, w) for w in windows for c in DAILY_IDS]

    async def fire() -> list[tuple[str, Outcome]]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            outcomes = await asyncio.gather(
                *(ask(client, replicas[n % 2], n % 2, c, w) for n, (c, w) in enumerate(asked))
            )
        return [(c, o) for (c, _), o in zip(asked, outcomes, strict=True)]

    outcomes = asyncio.run(fire())
    assert {o.status for _, o in outcomes} <= {200, 429}, [
        o.body for _, o in outcomes if o.status not in (200, 429)
    ]
    rows = product_rows(race_db, "web.page_views")
    payments = [r for r in rows if r["cost_micro"] > 0]
    assert sum(r["cost_micro"] for r in rows) == to_micro(DAILY_TOTAL)
    assert len(payments) == 2 and all(r["data_version"].startswith("day:") for r in payments)
    assert all(r["period"] == PERIOD for r in rows)
    paid = {r["class_id"] for r in payments}
    by_id = {r["id"]: r for r in rows}
    for class_id, o in outcomes:
        if o.status == 429:
            assert o.body is not None and o.body["code"] == "budget_exhausted"
            continue
        assert o.body is not None and class_id in paid
        assert o.body["epsilon_charged"] == "0" and o.body["privacy_unit"] == "subject_day"
        row = by_id.get(o.body["ledger_entry"])
        assert row is not None and row["cost_micro"] == 0 and row["class_id"] == class_id
        assert (
            row["data_version"].startswith("day:") and f":{o.window + 10}|" in row["data_version"]
        )
    statuses = {c: {o.status for k, o in outcomes if k == c} for c in DAILY_IDS}
    assert sorted(c for c, s in statuses.items() if s == {200}) == sorted(paid)
    assert all(s == {429} for c, s in statuses.items() if c not in paid)
