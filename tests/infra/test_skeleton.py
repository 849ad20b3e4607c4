"""The walking skeleton end to end on real components: `privmesh up` -> DP answer -> down."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.broker import tansu_binary
from infra.errors import BrokerBinaryMissing
from infra.ports import port_is_free
from streams.generator import make_people
from streams.reading import read_records
from tests.conftest import free_port
from tests.infra.test_cli import run_cli

CLASS = "shop.orders.distinct_customers"
PEOPLE, SEED = 300, 11


async def read_topic(bootstrap: str, topic: str, limit: int, within: float = 45.0) -> list[bytes]:
    """Up to ``limit`` record values of ``topic``, from its start; reads again until one
    arrives or ``within`` seconds pass (a loaded machine's first fetch can be slow, and a
    product that is 3% of the traffic can have nothing yet)."""
    deadline = time.monotonic() + within
    while True:
        values = [
            r.value
            async for r in read_records(bootstrap, topic, limit=limit, idle_timeout=5.0)
            if r.value is not None
        ]
        if values or time.monotonic() > deadline:
            return values
        await asyncio.sleep(1.0)


@pytest.mark.integration
def test_skeleton_end_to_end(tmp_path: Path) -> None:
    """A generated event reaches a DP answer with its epsilon and a ledger entry, and no raw
    e-mail, name, phone, cookie, IP or birth date appears in the product topics, feature
    stores, API or logs;
    `privmesh down` leaves no process and frees every port."""
    try:
        tansu_binary()
    except BrokerBinaryMissing as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    ports = {
        "PRIVMESH_KAFKA_EMBEDDED_PORT": free_port(),
        "PRIVMESH_API_PORT": free_port(),
        "PRIVMESH_STREAMS_WORKER_WEB_PORT": free_port(),
    }
    data_dir = tmp_path / "stack"
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "PRIVMESH_DATA_DIR": str(data_dir),
        "PRIVMESH_GENERATOR_PEOPLE": str(PEOPLE),
        "PRIVMESH_GENERATOR_SEED": str(SEED),
        "PRIVMESH_GENERATOR_RATE": "300",
        # orders often enough for dead letters within seconds (the default share is 0.4%)
        "PRIVMESH_GENERATOR_PRODUCT_SHARES": '{"web.page_views": 0.66, "shop.orders": 0.03, '
        '"support.tickets": 0.01, "ewr.departures": 0.1, "jfk.departures": 0.1, '
        '"lga.departures": 0.1}',
        "PRIVMESH_STREAMS_WINDOW_SECONDS": "4",
        "PRIVMESH_STREAMS_GRACE_SECONDS": "1",
    }
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{ports['PRIVMESH_API_PORT']}"
    bootstrap = f"127.0.0.1:{ports['PRIVMESH_KAFKA_EMBEDDED_PORT']}"
    answer = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and up.poll() is None:
            try:
                response = httpx.get(f"{api}/v1/queries/{CLASS}", timeout=5)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 200:
                answer = response.json()
                break
            time.sleep(1)
        assert answer is not None, (tmp_path / "up.log").read_text()
        # A daily class: its day's epsilon is one ledger entry, paid before this value,
        # which is committed (at cost 0) under its own entry.
        assert answer["privacy_unit"] == "subject_day" and isinstance(answer["value"], int)
        assert answer["epsilon"] == "0" and answer["ledger_entry"] >= 1
        paid = answer["daily_epsilon"]
        assert paid["epsilon"] == "0.5" and paid["paid_by_ledger_entry"] < answer["ledger_entry"]
        ledger = httpx.get(f"{api}/v1/ledger", timeout=5).json()["entries"]
        assert any(e["id"] == answer["ledger_entry"] and e["epsilon"] == "0" for e in ledger)
        assert any(
            e["id"] == paid["paid_by_ledger_entry"] and e["epsilon"] == "0.5" for e in ledger
        )
        status = run_cli("status", env=env, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        # The governance catalog of the running stack: every demo field, spend = ledger.
        catalog = httpx.get(f"{api}/v1/catalog", timeout=10).json()
        assert catalog["entities"]["field"] == 55
        spend = httpx.get(f"{api}/v1/catalog/entities/query_class:{CLASS}", timeout=10).json()[
            "budget"
        ]["spent"]
        entries = httpx.get(f"{api}/v1/ledger", params={"class_id": CLASS}, timeout=5).json()
        assert Decimal(spend) == sum(Decimal(e["epsilon"]) for e in entries["entries"])
        lint = run_cli("catalog", "lint", "--json", env=env, timeout=120)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert not [f for f in json.loads(lint.stdout) if f["severity"] == "error"]
        catalog_text = json.dumps(catalog) + lint.stdout
        # The privacy posture of the running stack: every worker reachable, web opt-in with
        # the generator's grants applied; a worker's Prometheus series.
        posture = httpx.get(f"{api}/v1/posture", timeout=10).json()
        assert sorted(posture["streams"]) == ["ewr", "jfk", "lga", "shop", "support", "web"]
        assert all(s["reachable"] and s["consent_ready"] for s in posture["streams"].values())
        web = posture["streams"]["web"]
        assert web["consent_subjects"]["product_analytics"]["granted"] > 0
        assert web["published"] > 0
        worker_port = ports["PRIVMESH_STREAMS_WORKER_WEB_PORT"] + 3  # shop: 4th in sorted order
        metrics = httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=5).text
        published = [
            s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
            if s.name == "privmesh_stream_events_total"
            and s.labels == {"domain": "shop", "product": "orders", "outcome": "published"}
        ]
        assert published and published[0] > 0, metrics[:2000]
        catalog_text += json.dumps(posture) + metrics

        # Up to 500 records a topic: the generator keeps producing (a read ends at the limit
        # or after 5 s without a record, and is repeated until a record arrives or 45 s pass),
        # and orders are 3% of its traffic (env above).
        product = asyncio.run(read_topic(bootstrap, "shop.orders.v1", 500))
        dlq = asyncio.run(read_topic(bootstrap, "shop.orders.dlq", 500))
        other_products = [
            raw
            for topic in ("web.page_views.v1", "support.tickets.v1")
            for raw in asyncio.run(read_topic(bootstrap, topic, 500))
        ]
        assert other_products, "no web or support product events"
        assert product, "no product events"
        assert dlq, "no dead letters (the generator sends 2% malformed events)"
        for raw in product:
            event = json.loads(raw)
            assert "customer_name" not in event and "customer_email" not in event
            assert event["ip_address"].endswith(".0/24")
            assert event["customer_email_token"].startswith("k1.")
        api_text = json.dumps(answer) + json.dumps(ledger) + catalog_text
    finally:
        stopped = run_cli("down", env=env, timeout=60)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()
    assert stopped.returncode == 0
    assert up.returncode == 0, (tmp_path / "up.log").read_text()
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
    assert all(port_is_free(p) for p in ports.values())

    people = make_people(PEOPLE, SEED)
    secrets_ = [p.email.encode() for p in people] + [p.name.encode() for p in people]
    secrets_ += [p.birth_date.isoformat().encode() for p in people]
    secrets_ += [p.phone.encode() for p in people] + [p.cookie.encode() for p in people]
    raw_ips = {p.ip.encode() for p in people}
    haystacks = {
        "product topics": b"\n".join(product + other_products),
        "api": api_text.encode(),
    }
    # The embedded broker's journal is a copy of its topics, ingest topics included: it is
    # inside the ingestion boundary like the broker itself, so it is readable by its owner
    # only and is not scanned (the product topics it mirrors are, above).
    journal = data_dir / "broker" / "journal.sqlite3"
    assert journal.is_file() and journal.stat().st_mode & 0o777 == 0o600
    for path in data_dir.rglob("*"):
        if path.is_file() and not {"secrets", "broker"} & set(path.parts):
            haystacks[str(path.relative_to(data_dir))] = path.read_bytes()
    haystacks["up.log"] = (tmp_path / "up.log").read_bytes()
    for where, blob in haystacks.items():
        leaked = [s for s in secrets_ if s in blob]
        assert not leaked, f"raw identifiers in {where}: {len(leaked)}"
        leaked_ips = [ip for ip in raw_ips if ip in blob and not ip.endswith(b".0")]
        assert not leaked_ips, f"raw IPs in {where}: {len(leaked_ips)}"
