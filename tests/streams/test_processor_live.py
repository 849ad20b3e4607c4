"""A domain processor as a worker process (`privmesh worker`) on a real embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from domains.contract import DomainContract, FieldType
from domains.registry import get_contract
from infra.broker import ensure_topics
from streams import transform as reasons
from streams.erasure_listener import ErasureListener
from streams.generator import BUILDERS, Person, make_people
from streams.keys import derive_domain_key
from streams.pipeline import partition_for
from streams.producing import RawProducer
from streams.pseudonymise import Tokeniser, normalise
from streams.reading import Record, read_records
from streams.settings import KafkaSettings
from streams.topics import (
    DETAIL_HEADER,
    REASON_HEADER,
    SOURCE_HEADER,
    ProductTopics,
    domain_topics,
    erasures_topic,
)
from streams.transform import ProductTransform, Rejected
from tests.conftest import FreshBroker, free_port

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
SHOP = get_contract("shop")
ORDERS = SHOP.products[0]
ORDER_TOPICS = ProductTopics.of("shop", ORDERS)
# Every reason a dead letter may carry; processing_error (a transform crash) is not one.
KNOWN_REASONS = {
    reasons.MALFORMED_JSON,
    reasons.NOT_AN_OBJECT,
    reasons.TOO_LARGE,
    reasons.MISSING_FIELD,
    reasons.UNKNOWN_FIELD,
    reasons.WRONG_TYPE,
    reasons.OUT_OF_BOUNDS,
    reasons.TOO_LONG,
    reasons.PERSONAL_VALUE,
    reasons.INVALID_FORMAT,
    reasons.OUT_OF_WINDOW,
    reasons.WRONG_KEY,
    reasons.INVALID_VALUE,
    reasons.NOT_ALLOWED,
    reasons.WRONG_PARTITION,
}
# The fields of a shop.orders product event: tokens and generalised values, no identifier.
ORDER_PRODUCT_FIELDS = {
    "order_id",
    "customer_email_token",
    "ip_address",
    "birth_date",
    "zip_code",
    "payment_method",
    "amount_cents",
    "occurred_at",
}


# ---------------------------------------------------------------- worker and broker helpers
class Worker:
    """One `privmesh worker --domain D` process, its log file and its health page."""

    def __init__(
        self,
        domain: str,
        bootstrap: str,
        data_dir: Path,
        log_path: Path,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.domain = domain
        self.web_port = free_port()
        self.log_path = log_path
        self._terminated = False
        env = {
            **os.environ,
            "PRIVMESH_DATA_DIR": str(data_dir),
            "PRIVMESH_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PRIVMESH_KAFKA_PARTITIONS": str(PARTITIONS),
            **(settings or {}),
        }
        command = [sys.executable, "-m", "infra.cli", "worker", "--domain", domain]
        command += ["--web-port", str(self.web_port)]
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )

    def health(self) -> dict[str, Any] | None:
        """The health page's report, or None when it does not answer."""
        try:
            response = httpx.get(f"http://127.0.0.1:{self.web_port}/privmesh/health", timeout=2)
            return dict(response.json()) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the worker's log, without the repeated connection errors."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        noise = (
            "Unable connect to node",
            "Unable to update metadata",
            "Failed fetch messages",
            "Group Coordinator Request failed",
            "DeprecationWarning",
            "importlib",
        )
        kept = [line for line in text.splitlines() if not any(n in line for n in noise)]
        return "\n".join(kept)[-chars:]

    def assert_alive(self) -> None:
        """Fail with the worker's log if its process has exited."""
        code = self.proc.poll()
        assert code is None, f"{self.domain} worker exited with {code}:\n{self.log_tail()}"

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the health page answers with assigned ingest partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_alive()
            report = self.health()
            if report and report.get("assigned_partitions"):
                return report
            time.sleep(0.3)
        raise AssertionError(f"{self.domain} worker not ready in {timeout} s:\n{self.log_tail()}")

    def terminate(self) -> None:
        """Send SIGTERM once: the worker flushes its features and offline files, then exits
        (a second SIGTERM would cut its shutdown short)."""
        if self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return int(self.proc.returncode)


def stop_all(workers: dict[str, Worker]) -> dict[str, int]:
    """Stop ``workers`` side by side; their exit codes by domain."""
    for worker in workers.values():
        worker.terminate()
    return {domain: worker.stop() for domain, worker in workers.items()}


@contextmanager
def running_workers(
    domains: list[str],
    bootstrap: str,
    data_dir: Path,
    log_dir: Path,
    settings: dict[str, str] | None = None,
) -> Iterator[dict[str, Worker]]:
    """One worker per domain, sharing ``data_dir`` as `privmesh up` does; stopped on exit.

    ``settings`` are extra ``PRIVMESH_*`` environment variables of the workers.
    """
    workers: dict[str, Worker] = {}
    try:
        for domain in domains:
            log_path = log_dir / f"worker-{domain}.log"
            workers[domain] = Worker(domain, bootstrap, data_dir, log_path, settings)
        yield workers
    finally:
        stop_all(workers)


def create_topics(bootstrap: str, contracts: list[DomainContract]) -> None:
    """Every topic of ``contracts``' domains, with PARTITIONS partitions."""
    topics = [t for c in contracts for t in domain_topics(c)]
    ensure_topics(bootstrap, topics, PARTITIONS, 1)


def read_topics(
    bootstrap: str, topics: list[str], idle_timeout: float = 1.0
) -> dict[str, list[Record]]:
    """Every record of each of ``topics`` as stored now, read side by side (never counted
    through end offsets, which Tansu under-reports)."""

    async def collect(topic: str) -> list[Record]:
        return [r async for r in read_records(bootstrap, topic, idle_timeout=idle_timeout)]

    async def collect_all() -> list[list[Record]]:
        return list(await asyncio.gather(*(collect(t) for t in topics)))

    return dict(zip(topics, asyncio.run(collect_all()), strict=True))


def read_topic(bootstrap: str, topic: str, idle_timeout: float = 1.0) -> list[Record]:
    """Every record of ``topic`` as stored now."""
    return read_topics(bootstrap, [topic], idle_timeout)[topic]


def wait_for_records(
    bootstrap: str,
    expected: dict[str, int],
    workers: list[Worker],
    timeout: float = 60.0,
) -> dict[str, list[Record]]:
    """Read ``expected``'s topics until each holds at least its count; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    found: dict[str, list[Record]] = {}
    while True:
        for worker in workers:
            worker.assert_alive()
        found = read_topics(bootstrap, list(expected))
        if all(len(found[t]) >= n for t, n in expected.items()):
            return found
        if time.monotonic() > deadline:
            counts = {t: f"{len(found[t])}/{n}" for t, n in expected.items()}
            tails = "\n".join(f"--- {w.domain} {w.health()}:\n{w.log_tail()}" for w in workers)
            raise AssertionError(f"records after {timeout} s: {counts}\n{tails}")
        time.sleep(0.5)


def wait_for_consent(
    worker: Worker, purpose: str, granted: int = 0, withdrawn: int = 0, timeout: float = 60.0
) -> dict[str, Any]:
    """Wait until ``worker``'s consent index holds at least these decisions for ``purpose``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.assert_alive()
        report = worker.health()
        held = (report or {}).get("consent", {}).get("subjects", {}).get(purpose, {})
        if held.get("granted", 0) >= granted and held.get("withdrawn", 0) >= withdrawn:
            return dict(report or {})
        time.sleep(0.3)
    raise AssertionError(
        f"{worker.domain}: consent for {purpose} not applied in {timeout} s: "
        f"{worker.health()}\n{worker.log_tail()}"
    )


def order_event(person: Person, seq: int, at: float | None = None) -> dict[str, object]:
    """A valid raw shop order of ``person``."""
    iso = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC).isoformat()
    return BUILDERS[("shop", "orders")](person, random.Random(seq), seq, iso)


def unit_key(event: dict[str, object]) -> bytes | None:
    """The ingest key `privmesh produce` gives an order: its normalised e-mail, if any."""
    email = event.get("customer_email")
    return normalise(email, FieldType.EMAIL).encode() if isinstance(email, str) else None


# ---------------------------------------------------------------- payload strategies
PEOPLE = make_people(40, 23)
FIELDS = [f.name for f in ORDERS.fields]
PAYMENTS = {v for f in ORDERS.fields if f.name == "payment_method" for v in f.allowed_values or []}
STRING_FIELDS = [f.name for f in ORDERS.fields if f.name not in {"amount_cents", "occurred_at"}]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
non_strings = (
    st.integers()
    | st.floats()
    | st.booleans()
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)


@st.composite
def valid_orders(draw: st.DrawFn) -> dict[str, object]:
    """A valid order of one of PEOPLE."""
    return order_event(draw(st.sampled_from(PEOPLE)), draw(st.integers(1, 10**8)))


@st.composite
def mutated_orders(draw: st.DrawFn) -> dict[str, object]:
    """A valid order with one field broken (a few mutations leave it valid by chance)."""
    event = draw(valid_orders())
    kind = draw(
        st.sampled_from(
            [
                "wrong_type",
                "out_of_bounds",
                "missing",
                "null",
                "unknown",
                "oversized",
                "email",
                "ip",
                "date",
                "category",
            ]
        )
    )
    if kind == "wrong_type":
        name = draw(st.sampled_from(FIELDS))
        strings = st.text(max_size=8) | st.floats() | st.booleans()
        event[name] = draw(strings if name == "amount_cents" else non_strings)
    elif kind == "out_of_bounds":
        event["amount_cents"] = draw(st.integers(max_value=-1) | st.integers(min_value=100_001))
    elif kind == "missing":
        del event[draw(st.sampled_from(FIELDS))]
    elif kind == "null":
        event[draw(st.sampled_from(FIELDS))] = None
    elif kind == "unknown":
        name = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in FIELDS))
        event[name] = draw(json_values)
    elif kind == "oversized":
        name = draw(st.sampled_from(STRING_FIELDS))
        event[name] = "x" * draw(st.integers(257, 6000))
    elif kind == "email":
        bad = st.sampled_from(["", "   ", "no-at-sign", "a@b", "@example.com", "user@", "a@.b@"])
        event["customer_email"] = draw(bad | st.text(max_size=20).filter(lambda s: "@" not in s))
    elif kind == "ip":
        bad = st.sampled_from(["256.1.1.1", "1.2.3", "1.2.3.4.5", "::1", "", "01.2.3.4", "a.b.c.d"])
        event["ip_address"] = draw(bad | st.text(max_size=15))
    elif kind == "date":
        name = draw(st.sampled_from(["birth_date", "occurred_at"]))
        bad = st.sampled_from(
            ["1990-13-01", "2026-02-30", "yesterday", "31/12/1990", "", "2026-11-23T10:00:00"]
        )
        event[name] = draw(bad | st.text(max_size=25) | st.integers(max_value=-1))
    else:
        event["payment_method"] = draw(st.text(max_size=10).filter(lambda s: s not in PAYMENTS))
    return event


def encode(event: object) -> bytes:
    return json.dumps(event).encode()


# Weighted towards near-valid orders: they reach the deepest validation paths.
PAYLOAD_KINDS: list[st.SearchStrategy[bytes]] = [
    st.binary(max_size=5000),
    json_values.map(encode),
    st.dictionaries(st.text(max_size=12), json_values, max_size=6).map(encode),
    *[mutated_orders().map(encode)] * 4,
    *[valid_orders().map(encode)] * 2,
]
payloads = st.sampled_from(PAYLOAD_KINDS).flatmap(lambda kind: kind)


def draw_payloads(count: int) -> list[bytes]:
    """``count`` reproducible payloads (hypothesis as a generator, never shrinking)."""
    drawn: list[bytes] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(payloads)
    def collect(payload: bytes) -> None:
        drawn.append(payload)

    collect()
    return drawn


# The oracle: the contract transform alone (any key: tokens do not decide an outcome).
ORACLE = ProductTransform(ORDERS, Tokeniser(derive_domain_key(b"o" * 32, "shop", 1), 1))


def expected_reason(raw: bytes, partition: int | None, key: bytes | None) -> str | None:
    """The dead-letter reason ``raw`` should get, or None if it should be a product event."""
    outcome = ORACLE.apply(raw)
    if isinstance(outcome, Rejected):
        return outcome.reason
    if key != outcome.unit_key:
        return reasons.WRONG_KEY
    if partition is not None and key is not None and partition != partition_for(key, PARTITIONS):
        return reasons.WRONG_PARTITION
    return None


# ---------------------------------------------------------------- tests
@pytest.mark.integration
def test_random_payloads_end_in_exactly_one_topic(
    fresh_broker: FreshBroker, isolated_env: Path, tmp_path: Path
) -> None:
    """Every produced payload, however broken, comes out exactly once: valid ones on the
    product topic without identifiers, the rest (wrong partition included) as dead letters
    carrying their raw bytes and a known reason, and the worker keeps running."""
    bootstrap = fresh_broker.bootstrap
    create_topics(bootstrap, [SHOP])
    drawn = draw_payloads(300)
    assert len(drawn) >= 250
    # (raw, key, explicit partition or None for the default partitioner)
    sent: list[tuple[bytes, bytes | None, int | None]] = []
    for raw in drawn:
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        sent.append((raw, unit_key(event) if isinstance(event, dict) else None, None))
    for i, person in enumerate(PEOPLE[:10]):  # valid orders on another partition than their key's
        raw = encode(order_event(person, 10**9 + i))
        key = normalise(person.email, FieldType.EMAIL).encode()
        sent.append((raw, key, (partition_for(key, PARTITIONS) + 1 + i % 3) % PARTITIONS))
    expected = [(raw, expected_reason(raw, part, key)) for raw, key, part in sent]
    accepted = [raw for raw, reason in expected if reason is None]
    rejected = Counter((raw, reason) for raw, reason in expected if reason is not None)
    assert len(accepted) >= 30 and len(rejected) >= 150
    assert sum(n for (_, r), n in rejected.items() if r == reasons.WRONG_PARTITION) == 10

    with running_workers(["shop"], bootstrap, isolated_env, tmp_path) as workers:
        worker = workers["shop"]
        worker.wait_ready()
        with RawProducer(KafkaSettings(bootstrap_servers=bootstrap), "test-random") as producer:
            for value, unit, partition in sent:
                if partition is None:
                    producer.send(ORDER_TOPICS.ingest, value, key=unit)
        pinned = KafkaProducer(bootstrap_servers=bootstrap, acks=1)
        try:
            for value, unit, partition in sent:
                if partition is not None:
                    pinned.send(ORDER_TOPICS.ingest, value=value, key=unit, partition=partition)
            pinned.flush(30)
        finally:
            pinned.close(10)

        topics = {ORDER_TOPICS.product: len(accepted), ORDER_TOPICS.dlq: sum(rejected.values())}
        wait_for_records(bootstrap, topics, [worker])
        time.sleep(2)  # anything beyond the expected count (a duplicate) has time to show
        outputs = read_topics(bootstrap, [ORDER_TOPICS.product, ORDER_TOPICS.dlq])
        product, dlq = outputs[ORDER_TOPICS.product], outputs[ORDER_TOPICS.dlq]

        assert len(product) + len(dlq) == len(sent)
        assert len(product) == len(accepted)
        for record in dlq:
            assert record.header(REASON_HEADER) in KNOWN_REASONS
            assert record.header(DETAIL_HEADER)
            source = record.header(SOURCE_HEADER) or ""
            assert source.startswith(f"{ORDER_TOPICS.ingest}/")
        assert Counter((r.value, r.header(REASON_HEADER)) for r in dlq) == rejected
        product_ids: Counter[str] = Counter()
        for record in product:
            assert record.value is not None
            event = json.loads(record.value)
            assert isinstance(event, dict) and set(event) == ORDER_PRODUCT_FIELDS
            assert record.key == event["customer_email_token"].encode()
            assert event["customer_email_token"].startswith("k1.")
            assert str(event["ip_address"]).endswith(".0/24") and len(event["zip_code"]) <= 3
            product_ids[event["order_id"]] += 1
        assert product_ids == Counter(json.loads(raw)["order_id"] for raw in accepted)
        raw_emails = {p.email.lower().encode() for p in PEOPLE}
        assert not any(e in (r.value or b"").lower() for r in product for e in raw_emails)

        worker.assert_alive()
        report = worker.health()
        assert report is not None and report["assigned_partitions"]
        assert report["ingest"]["consumed"] >= len(sent)
        counters = report["products"]["orders"]
        assert counters[f"rejected.{reasons.WRONG_PARTITION}"] == 10
        assert counters["accepted"] == len(accepted)


@pytest.mark.integration
def test_processor_survives_broker_restart(
    fresh_broker: FreshBroker, isolated_env: Path, tmp_path: Path
) -> None:
    """After the broker is killed and restarted empty (topics re-created as `privmesh up`
    does), the same worker process goes on: new events reach the product topic."""
    bootstrap = fresh_broker.bootstrap
    create_topics(bootstrap, [SHOP])
    people = make_people(120, 31)
    kafka = KafkaSettings(bootstrap_servers=bootstrap)

    def produce(prefix: str, count: int) -> set[str]:
        ids: set[str] = set()
        with RawProducer(kafka, f"test-restart-{prefix}") as producer:
            for i in range(count):
                event = order_event(people[i % len(people)], i)
                event["order_id"] = f"{prefix}-{i:04d}"
                ids.add(str(event["order_id"]))
                producer.send(ORDER_TOPICS.ingest, encode(event), key=unit_key(event))
        return ids

    def order_ids(records: list[Record]) -> set[str]:
        return {str(json.loads(r.value or b"{}").get("order_id")) for r in records}

    with running_workers(["shop"], bootstrap, isolated_env, tmp_path) as workers:
        worker = workers["shop"]
        worker.wait_ready()
        before = produce("before", 200)
        found = wait_for_records(bootstrap, {ORDER_TOPICS.product: 200}, [worker])
        assert order_ids(found[ORDER_TOPICS.product]) == before

        fresh_broker.restart(3.0)
        create_topics(bootstrap, [SHOP])  # as the supervisor does after a broker restart
        after = produce("after", 200)
        found = wait_for_records(bootstrap, {ORDER_TOPICS.product: 200}, [worker], timeout=60)
        missing = after - order_ids(found[ORDER_TOPICS.product])
        assert not missing, f"{len(missing)} new events lost:\n{worker.log_tail()}"
        assert read_topic(bootstrap, ORDER_TOPICS.dlq) == []

        worker.assert_alive()
        report = worker.wait_ready(timeout=30)
        assert report["ingest"]["consumed"] >= 400


def send_pinned(bootstrap: str, topic: str, values: dict[int, bytes]) -> None:
    """Produce one value to each given partition (kafka-python, explicit partitions)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1)
    try:
        for partition, value in values.items():
            producer.send(topic, value=value, partition=partition)
        producer.flush(30)
    finally:
        producer.close(10)


async def wait_until(condition: Callable[[], bool], within: float) -> bool:
    """Poll ``condition`` on the event loop until it holds or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


@pytest.mark.integration
def test_erasure_listener_applies_requests_after_broker_restart(
    fresh_broker: FreshBroker,
) -> None:
    """A running listener applies erasure requests written after the broker restarted empty,
    on every partition, the ones it had read requests from before included."""
    bootstrap = fresh_broker.bootstrap
    topic = erasures_topic("shop")
    ensure_topics(bootstrap, [topic], PARTITIONS, 1)
    tokens = Tokeniser(derive_domain_key(b"e" * 32, "shop", 1), 1)

    def request(n: int) -> bytes:
        token = tokens.token(f"user{n}@example.org", FieldType.EMAIL)
        return json.dumps({"erasure_id": f"e-{n}", "tokens": [token]}).encode()

    def token_of(raw: bytes) -> str:
        return str(json.loads(raw)["tokens"][0])

    before = {2: request(0)}
    after = {p: request(1 + p) for p in range(PARTITIONS)}
    evicted: set[str] = set()

    async def evict(found: set[str]) -> None:
        evicted.update(found)

    async def scenario() -> None:
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        listener = ErasureListener("shop", kafka, evict)
        task = asyncio.create_task(listener.run())
        try:
            await asyncio.to_thread(send_pinned, bootstrap, topic, before)
            assert await wait_until(lambda: token_of(before[2]) in evicted, 20)
            await asyncio.to_thread(fresh_broker.restart, 3.0)
            await asyncio.to_thread(ensure_topics, bootstrap, [topic], PARTITIONS, 1)
            await asyncio.to_thread(send_pinned, bootstrap, topic, after)
            others = {token_of(v) for p, v in after.items() if p not in before}
            # The listener is alive after the restart: partitions it had not read from work.
            assert await wait_until(lambda: others <= evicted, 30), "no request applied"
            await wait_until(lambda: token_of(after[2]) in evicted, 15)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    missed = sorted(p for p, v in after.items() if token_of(v) not in evicted)
    assert not missed, f"erasure requests written after the restart missed on partitions {missed}"
