"""The journaled embedded broker: nothing accepted is lost across stops, kills and rotations."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, RecordMetadata

from infra.broker import ensure_topics, rotation_pays, status_path
from infra.journal import Journal, journal_path
from infra.ports import wait_for_port
from streams.keyring import KeyRing, keyring_path
from streams.topics import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER
from tests.conftest import free_port
from tests.infra.topic_snapshots import Snapshot, compacted, read_topics

pytestmark = pytest.mark.integration

INGEST = "shop.orders.ingest"
PRODUCT = "shop.orders.v1"
DLQ = "shop.orders.dlq"
CONSENT = "shop.consent"
ERASURES = "shop.erasures"
TOPICS = [INGEST, PRODUCT, DLQ, CONSENT, ERASURES]
GROUP = "privmesh-shop-processor"
PARTITIONS = 2


class Broker:
    """A journaled broker process (``python -m infra.broker``) of one test."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {**os.environ, "PRIVMESH_DATA_DIR": str(data_dir), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "broker.log"

    @property
    def bootstrap(self) -> str:
        """Its public address."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait for the public port (open once the replay is done)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infra.broker", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group, as `privmesh up` runs it
            )
        if not wait_for_port(self.port, 30):
            raise RuntimeError(f"journaled broker not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop it as ``privmesh down`` does (SIGTERM to the broker component)."""
        assert self.proc is not None
        self.proc.terminate()
        assert self.proc.wait(20) == 0

    def kill(self) -> None:
        """``kill -9`` of the broker component's process group (Tansu dies with it)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while not _port_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def tansu(self) -> psutil.Process:
        """The Tansu broker process under it."""
        assert self.proc is not None
        for child in psutil.Process(self.proc.pid).children():
            if child.cmdline()[1:2] == ["broker"]:
                return child
        raise AssertionError("no Tansu broker child")

    def status(self) -> dict[str, float]:
        """Its counters."""
        return json.loads(status_path(self.data_dir).read_text(encoding="utf-8"))

    def close(self) -> None:
        """Leave nothing running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _port_free(port: int) -> bool:
    return not wait_for_port(port, 0.05)


@pytest.fixture
def journaled(tmp_path: Path) -> Iterator[Broker]:
    """A journaled broker on free ports with its own data directory."""
    broker = Broker(tmp_path / "data")
    try:
        broker.start()
    except Exception as exc:  # the binary missing, or no port
        pytest.skip(f"journaled broker unavailable: {exc}")
    try:
        yield broker
    finally:
        broker.close()


async def _produce(bootstrap: str, count: int, tag: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for i in range(count):
            p = i % PARTITIONS
            key = f"k{tag}{i % 7}".encode()
            futures.append(await producer.send(INGEST, f"e{tag}{i}".encode(), key, partition=p))
            futures.append(await producer.send(PRODUCT, f"p{tag}{i}".encode(), key, partition=p))
            if i % 10 == 0:
                headers = [
                    (REASON_HEADER, b"schema"),
                    (DETAIL_HEADER, b"field order_id"),
                    (SOURCE_HEADER, f"{INGEST}/{p}/{i}".encode()),
                ]
                futures.append(
                    await producer.send(DLQ, b"\x00bad", key, partition=p, headers=headers)
                )
            if i % 5 == 0:
                decision = json.dumps({"purpose": "analytics", "granted": i % 2 == 0})
                futures.append(
                    await producer.send(
                        CONSENT, decision.encode(), f"s{i % 13}|analytics".encode(), partition=p
                    )
                )
            if i % 25 == 0:
                futures.append(await producer.send(ERASURES, f"x{tag}{i}".encode(), partition=p))
        for future in futures:
            await future
    finally:
        await producer.stop()


async def _commit(bootstrap: str, offsets: dict[int, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP)
    await consumer.start()
    try:
        tps = {TopicPartition(INGEST, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


async def _committed(bootstrap: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(INGEST, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def _end_offsets(bootstrap: str) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in TOPICS for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}
    finally:
        await consumer.stop()


def _wait_journaled(broker: Broker, expected: int, snapshots: bool = True) -> None:
    """Wait until the journal holds ``expected`` records (and a group snapshot)."""
    journal = Journal(journal_path(broker.data_dir))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            groups = journal.group_offsets()
            if journal.count() >= expected and (not snapshots or groups.get(GROUP)):
                return
            time.sleep(0.1)
        raise AssertionError(f"journal has {journal.count()} of {expected} records")
    finally:
        journal.close()


def _seed(broker: Broker, count: int = 400) -> tuple[Snapshot, dict[int, int]]:
    ensure_topics(broker.bootstrap, TOPICS, PARTITIONS, 1)
    asyncio.run(_produce(broker.bootstrap, count, "a"))
    committed = {0: 57, 1: 91}
    asyncio.run(_commit(broker.bootstrap, committed))
    before = asyncio.run(read_topics(broker.bootstrap, TOPICS))
    total = sum(len(v) for v in before.values())
    assert total > 2 * count
    return before, committed


def _total(snapshot: Snapshot) -> int:
    return sum(len(v) for v in snapshot.values())


def test_down_then_up_keeps_every_record_offset_and_group_offset(journaled: Broker) -> None:
    """After a graceful stop and a start, every partition holds the same records at the
    same offsets (headers included) and the group's committed offsets are back."""
    before, committed = _seed(journaled)
    journaled.stop()
    journaled.start()
    assert asyncio.run(read_topics(journaled.bootstrap, TOPICS)) == compacted(before)
    assert asyncio.run(_committed(journaled.bootstrap)) == committed
    ends = asyncio.run(_end_offsets(journaled.bootstrap))
    assert ends == {tp: before[tp][-1][0] + 1 if tp in before else 0 for tp in ends}
    # the next record goes after the old ones, not over them
    asyncio.run(_produce(journaled.bootstrap, 4, "b"))
    after = asyncio.run(read_topics(journaled.bootstrap, TOPICS))
    for tp, records in compacted(before).items():
        assert after[tp][: len(records)] == records
        assert all(r[0] > records[-1][0] for r in after[tp][len(records) :])


def test_kill_9_of_tansu_is_repaired_from_the_journal(journaled: Broker) -> None:
    """A ``kill -9`` of Tansu itself: the broker component starts a new one and replays
    the journal; accepted records, dead letters, consent, erasures and offsets are back."""
    before, committed = _seed(journaled)
    _wait_journaled(journaled, _total(before))
    old = journaled.tansu()
    old.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if journaled.tansu().pid != old.pid and wait_for_port(journaled.port, 0.2):
                break
        except (AssertionError, psutil.Error):
            pass
        time.sleep(0.2)
    time.sleep(1.0)
    assert asyncio.run(read_topics(journaled.bootstrap, TOPICS)) == compacted(before)
    assert asyncio.run(_committed(journaled.bootstrap)) == committed
    assert journaled.status()["broker_restarts"] >= 1


def test_kill_9_of_the_broker_component_then_up(journaled: Broker) -> None:
    """A ``kill -9`` of the broker component (Tansu dies with it), then a new start: what
    the journal had acknowledged is all there."""
    before, committed = _seed(journaled)
    _wait_journaled(journaled, _total(before))
    journaled.kill()
    journaled.start()
    assert asyncio.run(read_topics(journaled.bootstrap, TOPICS)) == compacted(before)
    assert asyncio.run(_committed(journaled.bootstrap)) == committed


def test_key_versions_survive_a_restart(journaled: Broker) -> None:
    """Key versions live in the key ring file under the data directory, not in the
    broker: a rotation written before a kill -9 and a restart is read back unchanged."""
    path = keyring_path(journaled.data_dir)
    ring = KeyRing.load(path, 1)
    epoch = ring.rotate("shop", now=1_000_000.0, window_seconds=10)
    ring.save(path)
    journaled.kill()
    journaled.start()
    again = KeyRing.load(path, 1)
    assert again.epochs("shop") == ring.epochs("shop")
    assert epoch in again.epochs("shop")


def test_a_stop_does_not_hang_on_signals(journaled: Broker) -> None:
    """SIGINT stops the broker component as cleanly as SIGTERM."""
    assert journaled.proc is not None
    journaled.proc.send_signal(signal.SIGINT)
    assert journaled.proc.wait(20) == 0


async def _produce_bulk(bootstrap: str, count: int, size: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        futures = [
            await producer.send(PRODUCT, i.to_bytes(4, "big") * (size // 4), partition=i % 2)
            for i in range(count)
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


def test_memory_is_bounded_by_rotation_with_offsets_kept(tmp_path: Path) -> None:
    """Past the memory limit the broker is rotated: its resident size drops back, it keeps
    what retention.bytes keeps at the same offsets, and producing goes on after them."""
    broker = Broker(
        tmp_path / "data",
        env={
            "PRIVMESH_KAFKA_EMBEDDED_MEMORY_LIMIT_MB": "64",
            "PRIVMESH_KAFKA_RETENTION_BYTES": "65536",
            # the bulk send ends before a rotation may start (it takes 7-13 s on 2 loaded
            # cores, and the journal keeps up with it, so nothing else delays a rotation)
            "PRIVMESH_KAFKA_EMBEDDED_ROTATE_AFTER_SECONDS": "40",
        },
    )
    try:
        broker.start()
    except Exception as exc:
        pytest.skip(f"journaled broker unavailable: {exc}")
    try:
        ensure_topics(broker.bootstrap, TOPICS, PARTITIONS, 1)
        count, size = 60_000, 1024  # ~60 MiB of values
        asyncio.run(_produce_bulk(broker.bootstrap, count, size))
        grown = broker.tansu().memory_info().rss
        assert grown > 64 * 1024 * 1024
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if status_path(broker.data_dir).exists() and broker.status()["rotations"] >= 1:
                break
            time.sleep(0.5)
        assert broker.status()["rotations"] >= 1
        assert wait_for_port(broker.port, 30)
        assert broker.tansu().memory_info().rss < grown / 2
        after = asyncio.run(read_topics(broker.bootstrap, TOPICS))
        for partition in range(PARTITIONS):
            records = after[(PRODUCT, partition)]
            offsets = [r[0] for r in records]
            last = count - PARTITIONS + partition  # the last i of this partition
            assert offsets[-1] == last // PARTITIONS  # per-partition offsets are i // 2
            assert offsets == list(range(offsets[0], offsets[-1] + 1))
            assert offsets[0] > 0
            assert sum(len(r[2] or b"") for r in records) <= 65536 + size
            for offset, _key, value, _headers in records:
                assert value == (offset * PARTITIONS + partition).to_bytes(4, "big") * (size // 4)
    finally:
        broker.close()


def test_offsets_lost_in_a_crash_are_skipped_not_reused(tmp_path: Path) -> None:
    """When the broker died holding records the journal never got, the replay moves the
    partition's next offset past them: a reader still positioned in the lost range waits
    for new records instead of being reset to the start and reading everything again."""
    from infra.journal import LOST_OFFSETS_MARGIN, JournalRecord

    data_dir = tmp_path / "data"
    journal = Journal(journal_path(data_dir))
    journal.record_topic(PRODUCT, 1, {"cleanup.policy": "delete"})
    rows = [JournalRecord(PRODUCT, 0, i, 1_000 + i, b"k", b"v%d" % i) for i in range(10)]
    journal.append(rows, {(PRODUCT, 0): 15})  # the broker had 15, the journal got 10
    journal.close()
    broker = Broker(data_dir)
    try:
        broker.start()
    except Exception as exc:
        pytest.skip(f"journaled broker unavailable: {exc}")
    try:
        resume = 15 + LOST_OFFSETS_MARGIN

        async def check() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            await producer.start()
            try:
                meta = await (await producer.send(PRODUCT, b"new", partition=0))
            finally:
                await producer.stop()
            assert meta.offset == resume
            consumer = AIOKafkaConsumer(
                bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
            )
            await consumer.start()
            try:
                tp = TopicPartition(PRODUCT, 0)
                consumer.assign([tp])
                consumer.seek(tp, 12)  # a position in the lost range
                batches = await consumer.getmany(timeout_ms=3000)
                assert [r.offset for r in batches.get(tp, [])] == [resume]
                consumer.seek(tp, 0)
                batches = await consumer.getmany(timeout_ms=3000)
                assert [r.value for r in batches[tp]] == [r.value for r in rows] + [b"new"]
            finally:
                await consumer.stop()

        asyncio.run(check())
        assert broker.status()["skipped_offsets"] == resume - 10
    finally:
        broker.close()


class AckedLoad:
    """A producer (acks=all) sending to the ingest topic without pause, from its own thread
    and event loop, across whatever happens to the broker; it notes every record whose
    Produce was answered: (partition, offset, value)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.acked: list[tuple[int, int, bytes]] = []
        self.failed = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sending and wait for the answers still due."""
        self._stopping.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the producer did not stop"

    def _done(self, value: bytes, future: asyncio.Future[RecordMetadata]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failed += 1
            return
        meta = future.result()
        self.acked.append((meta.partition, meta.offset, value))

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=2,
            request_timeout_ms=5000,
            retry_backoff_ms=100,
        )
        await producer.start()
        try:
            i = 0
            while not self._stopping.is_set():
                value = b"load-%d" % i
                try:
                    sent = await asyncio.wait_for(
                        producer.send(INGEST, value, partition=i % PARTITIONS), 1.0
                    )
                except (TimeoutError, KafkaError):
                    self.failed += 1
                    continue
                sent.add_done_callback(functools.partial(self._done, value))
                i += 1
                if i % 50 == 0:
                    await asyncio.sleep(0.01)  # ~5,000 records/s: load, not a flood
        finally:
            await producer.stop()


def test_kill_9_under_load_loses_no_acknowledged_record(journaled: Broker) -> None:
    """Under continuous produce load (acks=all, starting as the topic is created), three
    kill -9s of the broker component's process group, each followed by a start on the
    same data directory: every record a producer was told was accepted, before or after
    a kill, is at its offset afterwards. (Without the ack gate, tens to hundreds of
    acknowledged records are lost here.)"""
    ensure_topics(journaled.bootstrap, TOPICS, PARTITIONS, 1)
    load = AckedLoad(journaled.bootstrap)
    load.start()
    try:
        for _kill in range(3):
            target = len(load.acked) + 2000
            deadline = time.monotonic() + 30
            while len(load.acked) < target and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(load.acked) >= target, "the load did not get going"
            journaled.kill()
            journaled.start()
        target = len(load.acked) + 1000  # and it goes on after the last start
        deadline = time.monotonic() + 30
        while len(load.acked) < target and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        load.stop()
    assert len(load.acked) >= target
    held = asyncio.run(read_topics(journaled.bootstrap, [INGEST]))
    present = {
        (p, offset, value) for (_t, p), rows in held.items() for offset, _k, value, _h in rows
    }
    lost = [r for r in load.acked if r not in present]
    assert lost == [], f"{len(lost)} of {len(load.acked)} acknowledged records lost"


MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("rss_mb", "retained_mb", "limit_mb", "pays"),
    [
        (600, 100, 512, True),  # retention fits the limit: rotate
        (600, 349, 512, False),  # too much retained: it would come back at ~590 MiB
        (1300, 349, 512, True),  # but past twice that, rotating frees half the memory
        (2400, 349, 512, True),
        (1100, 349, 512, False),
        (520, 0, 512, True),
    ],
)
def test_rotation_pays_off_within_about_twice_the_retained_set(
    rss_mb: int, retained_mb: int, limit_mb: int, pays: bool
) -> None:
    """A rotation is due when retention fits the limit, or, when it does not, once the
    broker holds twice what a rotation brings back (1.5 bytes per retained byte + base):
    memory stays within ~2x the retained set instead of growing without bound."""
    assert rotation_pays(rss_mb * MIB, retained_mb * MIB, limit_mb * MIB) is pays
