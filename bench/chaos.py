"""Faults and hostile input against a real local stack: what survives, what is lost.

One ``privmesh up`` on free ports (domains ``shop`` and ``support``, no demo generator:
the load comes from here so every accepted record is known). Under that load the run
``kill -9``s in turn a worker, the API, the embedded broker and the launcher (then starts
``privmesh up`` again at once, as a supervisor with a restart policy would; the new
launcher adopts the components that outlived the old one), and measures for each fault the
time until the mesh is whole again: every component recorded running (by a new launcher,
after its kill), the API answering DP queries, and each worker publishing events it had not
published at the kill; and when each of those first held (``phases_s``).

Afterwards every record the broker acknowledged on an ingest topic is looked for: in the
product topic (by its id field) or the dead-letter topic (by its source offset header);
records neither there nor consent-dropped are lost. The products run are opt-out and no
consent record is sent, so the consent-dropped share is zero by construction. The ledger
must hold at most one entry per query class and data version (no answer paid twice).

``python -m bench.chaos`` adds, measured in the same run: the same stack without faults
(the baseline: records lost and time to the first answer), a corpus of hostile records
(``bench.hostile``) sent to every topic a worker reads and how each ended, and the
broker's resident memory under a compressed hour of demo-rate traffic. Writes
``bench/results/chaos.json``; the last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from kafka import KafkaProducer
from kafka.errors import KafkaError

from bench.common import free_port, percentile
from streams.kafka_clients import aiokafka_config, kafka_python_config

RESULTS = Path(__file__).with_name("results") / "chaos.json"
DOMAINS = ("shop", "support")
CLASSES = ("shop.orders.distinct_customers", "support.tickets.distinct_customers")
ID_FIELDS = {"shop.orders": "order_id", "support.tickets": "ticket_id"}
RECOVERY_LIMIT_S = 30.0  # the target (#18), per fault; the chaos test asserts it
# How long a fault waits for the mesh to be whole again before it counts as not recovered
# (past the target, so that a miss says by how much)
RECOVERY_WAIT_S = 6 * RECOVERY_LIMIT_S
FAULTS = ("worker-shop", "api", "broker", "launcher")
DEMO_RATE = 1200.0  # events/s: the demo's six domains at the generator's default rate
DEMO_HOUR_EVENTS = int(DEMO_RATE * 3600)
# 6x the demo rate: an hour in ten minutes, what the journal mirror keeps up with on 2 busy
# cores (bench.broker_memory; faster, the broker rotates under overload)
MEMORY_RUN_RATE = 6 * DEMO_RATE


def stack_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a stack of its own under ``root``: free ports, short windows."""
    base = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PRIVMESH_") or k == "PRIVMESH_REQUIRE_INTEGRATION"
    }
    env.update(
        {
            "PRIVMESH_DATA_DIR": str(root / "data"),
            "PRIVMESH_KAFKA_EMBEDDED_PORT": str(free_port()),
            "PRIVMESH_API_PORT": str(free_port()),
            "PRIVMESH_STREAMS_WORKER_WEB_PORT": str(base),
            "PRIVMESH_STREAMS_WINDOW_SECONDS": "4",
            "PRIVMESH_STREAMS_GRACE_SECONDS": "1",
            "PRIVMESH_STACK_DOMAINS": json.dumps(list(DOMAINS)),
            "PRIVMESH_STACK_GENERATOR": "false",
            "PRIVMESH_STACK_RETENTION_EVERY_SECONDS": "0",
            "PRIVMESH_STACK_BACKOFF_INITIAL_SECONDS": "0.5",
            "PRIVMESH_STACK_STOP_TIMEOUT_SECONDS": "10",
            # the accounting reads every topic from the start: nothing may age out
            "PRIVMESH_KAFKA_RETENTION_MS": str(3_600_000),
        }
    )
    env.update(extra or {})
    return env


class LocalStack:
    """``privmesh up`` as a child process, with what a test or benchmark needs of it."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.data_dir = Path(env["PRIVMESH_DATA_DIR"])
        self.api = f"http://127.0.0.1:{env['PRIVMESH_API_PORT']}"
        self.bootstrap = f"127.0.0.1:{env['PRIVMESH_KAFKA_EMBEDDED_PORT']}"
        self.log_path = root / "up.log"
        self.up: subprocess.Popen[bytes] | None = None
        domains = json.loads(env.get("PRIVMESH_STACK_DOMAINS", "[]")) or list(DOMAINS)
        base = int(env["PRIVMESH_STREAMS_WORKER_WEB_PORT"])
        self.worker_urls = {
            d: f"http://127.0.0.1:{base + i}/privmesh/health" for i, d in enumerate(domains)
        }

    def start(self) -> None:
        """Start ``privmesh up`` (output appended to ``up.log``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.up = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "up"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        """What ``privmesh up`` printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def state(self) -> dict[str, Any]:
        """The launcher's ``run/stack.json`` (empty while there is none)."""
        try:
            data: dict[str, Any] = json.loads(
                (self.data_dir / "run" / "stack.json").read_text(encoding="utf-8")
            )
        except (OSError, ValueError):
            return {}
        return data

    def pid_of(self, component: str) -> int:
        """The recorded pid of ``component`` (``launcher``: the launcher's)."""
        state = self.state()
        if component == "launcher":
            return int(state["launcher_pid"])
        return int(state["components"][component]["pid"])

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one ``privmesh`` command against this stack."""
        return subprocess.run(
            [sys.executable, "-m", "infra.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def answer(self, class_id: str) -> dict[str, Any] | None:
        """The DP answer of ``class_id`` now, or None."""
        try:
            response = httpx.get(f"{self.api}/v1/queries/{class_id}", timeout=5)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body

    def published(self, domain: str) -> int | None:
        """Events the domain's worker has published since it started (None: no answer)."""
        try:
            body = httpx.get(self.worker_urls[domain], timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None
        return sum(int(p.get("accepted", 0)) for p in body.get("products", {}).values())

    def wait_answers(self, classes: Iterable[str], timeout: float) -> float | None:
        """Seconds until every class answers, or None."""
        began = time.monotonic()
        pending = set(classes)
        while time.monotonic() - began < timeout:
            pending = {c for c in pending if self.answer(c) is None}
            if not pending:
                return time.monotonic() - began
            if self.up is not None and self.up.poll() is not None:
                return None
            time.sleep(0.5)
        return None

    def parts(self, since: dict[str, int | None], classes: Iterable[str]) -> dict[str, bool]:
        """What "whole" needs, each part on its own: ``running`` (every component recorded
        running), ``answers`` (the API answers each class) and ``publishing`` (each worker
        published past what it had published at ``since``; a restarted worker: any)."""
        components = self.state().get("components", {})
        return {
            "running": bool(components)
            and all(c.get("state") == "running" for c in components.values()),
            "answers": all(self.answer(c) is not None for c in classes),
            "publishing": all(
                (now := self.published(domain)) is not None
                and now > 0
                and (before is None or now != before)
                for domain, before in since.items()
            ),
        }

    def whole(self, since: dict[str, int | None], classes: Iterable[str]) -> bool:
        """Every component running, the API answering each class, and each worker
        publishing past what it had published at ``since`` (a restarted worker: any)."""
        return all(self.parts(since, classes).values())

    def ledger(self) -> list[dict[str, Any]]:
        """Every ledger entry the API lists."""
        response = httpx.get(f"{self.api}/v1/ledger", params={"limit": 1000}, timeout=10)
        response.raise_for_status()
        entries: list[dict[str, Any]] = response.json()["entries"]
        return entries

    def stop(self) -> None:
        """``privmesh down``, then make sure nothing of this stack is left."""
        self.cli("down", timeout=90)
        if self.up is not None:
            try:
                self.up.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.up.pid, signal.SIGKILL)
                self.up.wait(10)
                self.cli("down", timeout=90)  # its components outlive it (forked ones too)
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.data_dir) in " ".join(proc.info["cmdline"] or []):
                proc.kill()


@dataclass
class Load:
    """Generated events to the ingest topics at ``rate``/s from a thread; keeps what the
    broker acknowledged (topic, partition, offset, id) and counts what it refused."""

    bootstrap: str
    rate: float
    bad_ratio: float = 0.02
    acked: list[tuple[str, int, int, str | None, float]] = field(default_factory=list)
    refused: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Start producing."""
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop producing and wait for the outstanding acknowledgements."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def _run(self) -> None:
        from domains.registry import get_contract
        from streams.generator import EventGenerator, make_people
        from streams.topics import ProductTopics

        people = make_people(500, 5)
        gens = []
        for index, domain in enumerate(DOMAINS):
            product = get_contract(domain).products[0]
            topic = ProductTopics.of(domain, product).ingest
            gens.append((topic, f"{domain}.{product.name}", EventGenerator(
                domain, product, people, self.bad_ratio, 100 + index)))  # fmt: skip
        producer = KafkaProducer(
            **kafka_python_config(bootstrap=self.bootstrap),
            client_id="chaos-load",
            acks=1,
            linger_ms=5,
            retries=3,
            request_timeout_ms=5000,
            delivery_timeout_ms=15000,
            max_block_ms=5000,
        )
        sent = 0
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                topic, name, gen = gens[sent % len(gens)]
                key, value = gen.next_event()
                ident = _id_of(value, ID_FIELDS[name])
                try:
                    future = producer.send(topic, value=value, key=key)
                except KafkaError:  # broker away: refused, not accepted
                    self._refuse()
                    time.sleep(0.2)
                    continue
                future.add_callback(self._ack, topic, ident, time.monotonic())
                future.add_errback(lambda _exc: self._refuse())
                sent += 1
                next_at += 1.0 / self.rate
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:
                    next_at = time.monotonic()
        finally:
            producer.flush(60)
            producer.close(10)

    def _ack(self, topic: str, ident: str | None, sent_at: float, meta: Any) -> None:
        with self._lock:
            self.acked.append((topic, int(meta.partition), int(meta.offset), ident, sent_at))

    def _refuse(self) -> None:
        with self._lock:
            self.refused += 1


def _id_of(value: bytes, name: str) -> str | None:
    try:
        event = json.loads(value)
    except (ValueError, RecursionError):  # hostile input: deep nesting, bad UTF-8
        return None
    ident = event.get(name) if isinstance(event, dict) else None
    return ident if isinstance(ident, str) else None


async def _read(bootstrap: str, topic: str) -> list[Any]:
    from streams.reading import read_records

    return [r async for r in read_records(bootstrap, topic, idle_timeout=3.0)]


def account(
    bootstrap: str,
    acked: list[tuple[str, int, int, str | None, float]],
) -> dict[str, Any]:
    """Each acknowledged ingest record's end: published, dead-lettered or lost.

    The embedded broker acknowledges a record only once its journal holds it (README,
    "What the embedded broker keeps"), so a ``kill -9`` of the broker loses no
    acknowledged record: any that is neither published nor dead-lettered is lost.
    """
    from domains.registry import get_contract
    from streams.topics import REASON_HEADER, SOURCE_HEADER, ProductTopics

    published: set[str] = set()
    dead: set[str] = set()
    ingest_held: set[str] = set()
    reasons: Counter[str] = Counter()
    for domain in DOMAINS:
        product = get_contract(domain).products[0]
        topics = ProductTopics.of(domain, product)
        id_field = ID_FIELDS[f"{domain}.{product.name}"]
        for rec in asyncio.run(_read(bootstrap, topics.product)):
            ident = _id_of(rec.value or b"", id_field)
            if ident is not None:
                published.add(ident)
        for rec in asyncio.run(_read(bootstrap, topics.dlq)):
            source = rec.header(SOURCE_HEADER)
            if source:
                dead.add(source)
            reasons[rec.header(REASON_HEADER) or "none"] += 1
        for rec in asyncio.run(_read(bootstrap, topics.ingest)):
            ingest_held.add(f"{rec.topic}/{rec.partition}/{rec.offset}")
    lost = []
    ends: Counter[str] = Counter()
    for topic, partition, offset, ident, _sent_at in acked:
        source = f"{topic}/{partition}/{offset}"
        if ident is not None and ident in published:
            ends["published"] += 1
        elif source in dead:
            ends["dead_lettered"] += 1
        else:
            lost.append(source)
    return {
        "accepted": len(acked),
        "published": ends["published"],
        "dead_lettered": ends["dead_lettered"],
        "consent_dropped": 0,  # opt-out products, no consent record sent
        "lost": len(lost),
        "lost_examples": lost[:5],
        "ingest_records_missing": sum(
            1 for t, p, o, _, _ in acked if f"{t}/{p}/{o}" not in ingest_held
        ),
        "dead_letter_reasons": dict(reasons),
    }


def ledger_spent_twice(entries: list[dict[str, Any]]) -> list[str]:
    """Query class + data version pairs with more than one ledger entry."""
    seen = Counter(
        f"{e.get('class_id')}@{e.get('period')}@{e.get('data_version')}" for e in entries
    )
    return sorted(k for k, n in seen.items() if n > 1)


def inject(
    stack: LocalStack, fault: str, classes: Iterable[str]
) -> tuple[float | None, dict[str, float]]:
    """``kill -9`` the fault's process; seconds until the mesh is whole again (None: not
    within ``RECOVERY_WAIT_S``) and when each part of "whole" first held after the kill.

    The phases (seconds after the kill): ``detected`` (the launcher recorded the death: a
    new pid or a pending restart; for the launcher, a new launcher recorded its state),
    ``running`` (every component recorded running), ``answers`` (the API answers each
    class), ``publishing`` (each worker published past what it had at the kill) and, for
    the launcher, ``served_throughout`` (1.0 when the API answered at every check between
    the kill and the new launcher's state). The launcher is started again by hand at once,
    as a supervisor (systemd ``Restart=always``, a Kubernetes restart policy) would.
    """
    classes = list(classes)
    since = {d: stack.published(d) for d in stack.worker_urls}
    pid = stack.pid_of(fault)
    began = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    phases: dict[str, float] = {}

    def mark(name: str) -> None:
        phases.setdefault(name, round(time.monotonic() - began, 2))

    if fault == "launcher":
        assert stack.up is not None
        stack.up.wait(30)
        stack.start()
    if fault.startswith("worker-"):
        since[fault.removeprefix("worker-")] = None
    served = True
    while time.monotonic() - began < RECOVERY_WAIT_S:
        if _death_recorded(stack, fault, pid):
            mark("detected")
        parts = stack.parts(since, classes)
        parts["running"] = parts["running"] and "detected" in phases
        served = served and (parts["answers"] or "detected" in phases)
        for name in (n for n, held in parts.items() if held):
            mark(name)
        if all(parts.values()):
            if fault == "launcher":
                phases["served_throughout"] = 1.0 if served else 0.0
            return time.monotonic() - began, phases
        time.sleep(0.25)
    return None, phases


def _death_recorded(stack: LocalStack, fault: str, pid: int) -> bool:
    """The launcher has recorded ``fault``'s death (a new pid or a pending restart); for
    the launcher itself, a new launcher has recorded its state."""
    state = stack.state()
    if fault == "launcher":
        return state.get("launcher_pid") not in (None, pid)
    info = state.get("components", {}).get(fault, {})
    return bool(info) and (info.get("pid") != pid or info.get("state") != "running")


def chaos_run(
    root: Path,
    *,
    rate: float = 150.0,
    faults: Iterable[str] = FAULTS,
    settle: float = 6.0,
    say: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One stack under load (``env``: extra settings); each fault in turn; then the
    accounting. A dict of results."""
    stack = LocalStack(root, stack_env(root, env))
    stack.start()
    out: dict[str, Any] = {"faults": {}, "rate_events_per_s": rate}
    load = Load(stack.bootstrap, rate)
    try:
        first = stack.wait_answers(CLASSES, 180)
        if first is None:
            raise RuntimeError("the stack gave no DP answer within 180 s:\n" + stack.log()[-3000:])
        load.start()
        out["first_answers_s"] = round(first, 2)
        time.sleep(settle)
        for fault in faults:
            recovery, phases = inject(stack, fault, CLASSES)
            say(f"chaos: kill -9 {fault}: whole again after {recovery} s ({phases})")
            out["faults"][fault] = {
                "recovery_s": None if recovery is None else round(recovery, 2),
                "phases_s": phases,
            }
            if recovery is None:
                out["faults"][fault]["log_tail"] = stack.log()[-2000:]
                break
            time.sleep(settle)
        load.stop()
        out["accounting"] = _settled_account(stack, load)
        out["ledger_entries"] = len(entries := stack.ledger())
        out["ledger_spent_twice"] = ledger_spent_twice(entries)
        out["producer_refused"] = load.refused
    finally:
        load.stop()
        stack.stop()
    return out


def _settled_account(stack: LocalStack, load: Load, timeout: float = 60) -> dict[str, Any]:
    """The accounting once the workers have caught up (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    result = account(stack.bootstrap, load.acked)
    while result["lost"] and time.monotonic() < deadline:
        time.sleep(3)
        result = account(stack.bootstrap, load.acked)
    return result


def hostile_run(root: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Send the hostile corpus (``bench.hostile``) to a running shop stack; how each ended.

    An ingest record ends published (its id in the product topic), dead-lettered (its
    offset in the DLQ's source header, with the reason) or lost; a consent or erasure
    record ends dead-lettered with a reason or applied (not dead-lettered). The workers
    must not restart, and the canary identifier must appear in no log line.
    """
    from bench.hostile import CANARY_EMAIL, corpus
    from domains.registry import get_contract
    from streams.topics import (
        REASON_HEADER,
        SOURCE_HEADER,
        ProductTopics,
        consent_dlq_topic,
        consent_topic,
        erasures_dlq_topic,
        erasures_topic,
    )

    env = stack_env(root, {"PRIVMESH_STACK_DOMAINS": json.dumps(["shop"])})
    stack = LocalStack(root, env)
    stack.start()
    product = get_contract("shop").products[0]
    topics = ProductTopics.of("shop", product)
    target = {"ingest": topics.ingest, "consent": consent_topic("shop"),
              "erasures": erasures_topic("shop")}  # fmt: skip
    dlqs = {"ingest": topics.dlq, "consent": consent_dlq_topic("shop"),
            "erasures": erasures_dlq_topic("shop")}  # fmt: skip
    records = corpus(product.purpose)
    try:
        if stack.wait_answers(CLASSES[:1], 180) is None:
            raise RuntimeError("no DP answer within 180 s:\n" + stack.log()[-3000:])
        restarts_before = {n: c["restarts"] for n, c in stack.state()["components"].items()}
        producer = KafkaProducer(
            **kafka_python_config(bootstrap=stack.bootstrap),
            acks=1,
            max_request_size=8 * 1024 * 1024,
        )
        where: dict[str, tuple[str, int, int]] = {}
        refused: dict[str, str] = {}
        for rec in records:
            try:
                meta = producer.send(
                    target[rec.kind], value=rec.value, key=rec.key, headers=list(rec.headers)
                ).get(30)
                where[f"{rec.kind}/{rec.name}"] = (target[rec.kind], meta.partition, meta.offset)
            except KafkaError as exc:  # the broker refused it (too large, ...): never accepted
                refused[f"{rec.kind}/{rec.name}"] = type(exc).__name__
        producer.close(10)
        time.sleep(15)  # a few batches and windows
        healthy = stack.whole({"shop": None}, CLASSES[:1])
        dead: dict[str, str] = {}
        for dlq in dlqs.values():
            for r in asyncio.run(_read(stack.bootstrap, dlq)):
                if r.header(SOURCE_HEADER):
                    dead[r.header(SOURCE_HEADER) or ""] = r.header(REASON_HEADER) or "none"
        published = {
            _id_of(r.value or b"", "order_id")
            for r in asyncio.run(_read(stack.bootstrap, topics.product))
        }
        restarts_after = {n: c["restarts"] for n, c in stack.state()["components"].items()}
        ends = {
            f"{rec.kind}/{rec.name}": _end_of(rec, where, refused, dead, published)
            for rec in records
        }
        logs = b"".join(p.read_bytes() for p in (stack.data_dir / "logs").glob("*.log"))
        leaked = logs.count(CANARY_EMAIL.encode()) + logs.count(b"Hostile Canary")
    finally:
        stack.stop()
    reasons = Counter(e.split(":", 1)[1] for e in ends.values() if e.startswith("dead_"))
    return {
        "sent": len(records),
        "by_kind": dict(Counter(r.kind for r in records)),
        "ends": ends,
        "dead_letter_reasons": dict(reasons),
        "outcomes": dict(Counter(e.split(":", 1)[0] for e in ends.values())),
        "lost": sum(1 for e in ends.values() if e == "lost"),
        "worker_restarts": {
            n: restarts_after.get(n, 0) - restarts_before.get(n, 0) for n in restarts_after
        },
        "mesh_whole_after": healthy,
        "canary_hits_in_logs": leaked,
    }


def _end_of(
    rec: Any,
    where: dict[str, tuple[str, int, int]],
    refused: dict[str, str],
    dead: dict[str, str],
    published: set[str | None],
) -> str:
    """How one hostile record ended."""
    name = f"{rec.kind}/{rec.name}"
    if name in refused:
        return f"refused_by_broker:{refused[name]}"
    topic, partition, offset = where[name]
    source = f"{topic}/{partition}/{offset}"
    ident = _id_of(rec.value or b"", "order_id")
    if source in dead:
        return f"dead_lettered:{dead[source]}"
    if rec.kind != "ingest":
        return "applied_or_ignored"
    if ident is not None and ident in published:
        return "published"
    return "tombstone_ignored" if rec.value is None else "lost"


async def _process_ingest(bootstrap: str, topics: list[str], done: threading.Event) -> None:
    """Read ``topics`` in one consumer group, committing every second, until ``done``: the
    processors' part in the memory run (without it the journal keeps every ingest record,
    as it does for a worker that is down)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics,
        **aiokafka_config(bootstrap=bootstrap),
        group_id="privmesh-bench-processors",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
    )
    await consumer.start()
    try:
        while not done.is_set():
            await consumer.getmany(timeout_ms=200, max_records=20_000)
    finally:
        await consumer.stop()


def broker_memory_run(
    root: Path,
    events: int = DEMO_HOUR_EVENTS,
    rate: float = MEMORY_RUN_RATE,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Resident memory of the embedded broker component (as ``privmesh up`` runs it,
    journal included) while ``events`` demo events go to the six domains' ingest topics
    and as many to their product topics (what the workers publish), at ``rate`` events/s:
    an hour of demo traffic compressed ``rate / DEMO_RATE`` times. The sending and the
    per-process samples are ``bench.broker_memory``'s; samples every ~5 s."""
    from bench.broker_memory import _produce, _sample
    from domains.registry import load_contracts
    from infra.broker import embedded_broker_command, ensure_topics
    from infra.ports import wait_for_port
    from streams.settings import KafkaSettings
    from streams.topics import domain_topics

    port = free_port()
    env = stack_env(root)
    env["PRIVMESH_KAFKA_EMBEDDED_PORT"] = str(port)
    # the product's retention, its time compressed as the traffic is (10 demo minutes of
    # records, not 10 wall minutes of the faster traffic)
    retention_ms = max(
        60_000, int(KafkaSettings.model_fields["retention_ms"].default * DEMO_RATE / rate)
    )
    env["PRIVMESH_KAFKA_RETENTION_MS"] = str(retention_ms)
    data_dir = Path(env["PRIVMESH_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    command = embedded_broker_command(port)
    log_path = root / "broker.log"
    log = log_path.open("ab")
    broker = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    samples: list[dict[str, Any]] = []
    done = threading.Event()
    try:
        if not wait_for_port(port, 60):
            raise RuntimeError("the broker did not start: " + log_path.read_text()[-1500:])
        bootstrap = f"127.0.0.1:{port}"
        topics = [t for c in load_contracts().values() for t in domain_topics(c)]
        ensure_topics(bootstrap, topics, 4, 1)
        proc = psutil.Process(broker.pid)
        began = time.monotonic()
        last = [0.0]

        def sample(sent: int) -> None:
            if broker.poll() is not None:
                raise RuntimeError(
                    f"the broker exited with code {broker.returncode} after {sent} events: "
                    + log_path.read_text(errors="replace")[-1500:]
                )
            samples.append(
                {**_sample(proc, began, sent, data_dir), **_rss_sample(broker.pid, sent, began)}
            )
            say(f"memory: {samples[-1]}")

        def progress(sent: int) -> None:
            if time.monotonic() - last[0] >= 5:
                last[0] = time.monotonic()
                sample(sent)

        sample(0)
        threading.Thread(
            target=asyncio.run,
            args=(_process_ingest(bootstrap, [t for t in topics if t.endswith(".ingest")], done),),
            daemon=True,
        ).start()
        sent, errors = asyncio.run(_produce(bootstrap, events, 3 * events / rate, rate, progress))
        took = time.monotonic() - began
        time.sleep(10)  # the journal catches up, a due rotation happens
        sample(sent)
    finally:
        from infra.stack import terminate_tree

        done.set()
        terminate_tree(broker.pid, 20)
        log.close()
    return {
        "command": " ".join([Path(command[0]).name, *command[1:3]]),
        "events": sent,
        "send_errors": errors,
        "demo_minutes": round(sent / DEMO_RATE / 60, 1),
        "compressed": round(sent / took / DEMO_RATE, 1),
        "retention_ms": retention_ms,
        "samples": samples,
        "final_rss_mb": samples[-1]["rss_mb"],
        "peak_rss_mb": max(s["rss_mb"] for s in samples),
        "how": (
            f"{sent} demo events (an hour at the demo rate, {DEMO_RATE:g} events/s over six "
            f"domains, is {DEMO_HOUR_EVENTS}) in {took:.0f} s: time compressed "
            f"{sent / took / DEMO_RATE:.1f}x by sending prebuilt record batches at {rate:g} "
            "events/s (bench.broker_memory's producer) to the six domains' ingest and product "
            "topics (2 records per event) through the broker component `privmesh up` runs, "
            "one consumer group reading the ingest topics and committing as the processors do "
            "(the journal keeps ingest records no group has processed), "
            "with the product's retention settings, retention.ms compressed as time is "
            f"({retention_ms} ms); rss_mb is the component's process tree (Tansu, journal "
            "mirror, proxy), sampled every ~5 s"
        ),
    }


def _rss_sample(pid: int, produced: int, began: float) -> dict[str, float]:
    """RSS (MB) of ``pid`` and its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"events": produced, "rss_mb": 0.0, "seconds": time.monotonic() - began}
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return {
        "events": produced,
        "rss_mb": round(total / 2**20, 1),
        "seconds": round(time.monotonic() - began, 1),
    }


def restarts_ab(root: Path) -> dict[str, Any]:
    """Recovery of a worker, the API and the broker after ``kill -9``, restarts forked from
    the pre-imported zygote (the default) against cold starts, in one run each."""
    out: dict[str, Any] = {}
    for mode, fast in (("zygote", "true"), ("cold", "false")):
        run = chaos_run(
            root / mode,
            faults=("worker-shop", "api", "broker"),
            env={"PRIVMESH_STACK_FAST_RESTARTS": fast},
        )
        out[mode] = {f: i["recovery_s"] for f, i in run["faults"].items()}
        out[mode]["records_lost"] = run["accounting"]["lost"]
    return out


PHASES = ("faults", "hostile", "memory")


def _recovery_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Faults injected and survived, records lost, recovery p50/p99 per component."""
    per: dict[str, list[float]] = {}
    for run in runs:
        for fault, info in run["faults"].items():
            if info["recovery_s"] is not None:
                per.setdefault(fault, []).append(info["recovery_s"])
    recovery = {
        f: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "n": len(v)}
        for f, v in per.items()
    }
    return {
        "faults_injected": sum(len(r["faults"]) for r in runs),
        "faults_survived": sum(
            1 for r in runs for i in r["faults"].values() if i["recovery_s"] is not None
        ),
        "records_lost": sum(r["accounting"]["lost"] for r in runs),
        "recovery_s": recovery,
        "recovery_target_s": RECOVERY_LIMIT_S,
        "recovery_target_met": {
            f: v["p99"] is not None and v["p99"] <= RECOVERY_LIMIT_S for f, v in recovery.items()
        },
    }


def main() -> None:
    """Run the faults (with the baseline), the hostile corpus and the memory run; write
    the results.

    ``CHAOS_ONLY`` names the phases to run, comma-separated (``faults``, ``hostile``,
    ``memory``; ``restarts``: the zygote-against-cold restart comparison, ``restarts_ab``),
    and keeps what the results file holds of the others; ``CHAOS_RUNS`` (2) the fault runs;
    ``CHAOS_MEMORY_RATE`` the memory run's events/s (``MEMORY_RUN_RATE``).
    """
    import tempfile

    only = os.environ.get("CHAOS_ONLY")
    phases = tuple(only.split(",")) if only else PHASES
    saved = json.loads(RESULTS.read_text(encoding="utf-8")) if only and RESULTS.exists() else {}
    result: dict[str, Any] = {**saved, "benchmark": "chaos", "cores": os.cpu_count()}

    def save() -> None:  # after each phase: a later failure keeps what was measured
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="privmesh-chaos-") as tmp:
        if "restarts" in phases:
            result["restarts_ab"] = restarts_ab(Path(tmp) / "restarts")
            save()
        if "faults" in phases:
            result["load_before"] = os.getloadavg()
            result["baseline_no_faults"] = chaos_run(Path(tmp) / "baseline", faults=())
            save()
            runs: list[dict[str, Any]] = []
            for i in range(int(os.environ.get("CHAOS_RUNS", "2"))):
                runs.append(chaos_run(Path(tmp) / f"run{i}"))
                result["runs"] = runs
                save()
            result.update(_recovery_summary(runs))
            save()
        if "hostile" in phases:
            result["hostile"] = hostile_run(Path(tmp) / "hostile")
            save()
        if "memory" in phases:
            result["load_before_memory"] = os.getloadavg()
            try:
                rate = float(os.environ.get("CHAOS_MEMORY_RATE", MEMORY_RUN_RATE))
                result["broker_memory"] = broker_memory_run(Path(tmp) / "memory", rate=rate)
            except RuntimeError as exc:
                result["broker_memory"] = {"error": str(exc), "final_rss_mb": None}
            save()
    summary = {
        k: result.get(k)
        for k in (
            "faults_injected",
            "faults_survived",
            "records_lost",
            "recovery_s",
            "recovery_target_met",
            "restarts_ab",
        )
    }
    summary["hostile_outcomes"] = result.get("hostile", {}).get("outcomes")
    summary["broker_rss_mb_after_hour"] = result.get("broker_memory", {}).get("final_rss_mb")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
