"""A durable journal of the embedded broker: every record and committed group offset on disk.

Tansu in this build keeps topics in memory only, so privmesh keeps its own copy:

* the **mirror** reads every partition of every topic as the broker appends to it and
  writes the records (offset, timestamp, key, value, headers) to a SQLite journal
  (WAL, ``synchronous=FULL``); it snapshots the consumer groups' committed offsets too,
  but saves a snapshot only once the journal holds every record that was in the broker
  when the snapshot was taken, so a restored offset never points past a record that the
  journal lacks (a processor delivers its outputs before it commits its inputs);
* the **replay** gives a fresh broker its topics back before any client can reach it:
  each partition's records in order, as record batches whose offset deltas keep the
  original offsets (gaps left by retention included), then the groups' offsets;
* **retention** trims the journal as Kafka would trim a log (``retention.ms`` and
  ``retention.bytes`` per partition, compaction for compacted topics), always keeping a
  partition's last record so its next offset survives a restart.

The journal lives inside the ingestion boundary (raw events, consent records): the file
is created readable by its owner only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import OffsetAndMetadata
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from infra.errors import JournalError
from streams.reading import Record

log = logging.getLogger("privmesh.journal")

TP = tuple[str, int]
# How far past the last high watermark seen a partition resumes after records were lost.
LOST_OFFSETS_MARGIN = 100_000
# Kafka record batch v2 header: baseOffset int64, batchLength int32, leaderEpoch int32,
# magic int8, crc uint32 (over attributes onwards), attributes int16, lastOffsetDelta int32.
_CRC_AT, _ATTRIBUTES_AT, _LAST_OFFSET_DELTA_AT = 17, 21, 23
# Largest record batch the replay sends (bytes); a bigger record goes alone.
REPLAY_BATCH_BYTES = 1024 * 1024
REPLAY_PARTITIONS_AT_ONCE = 8
# The mirror's consumer fetches with its short wait for this long after the last barrier
# over every partition (see Mirror._pace).
BUSY_SECONDS = 2.0


def _is_ingest(topic: str) -> bool:
    """Ingest topics hold accepted raw events until a processor routes them."""
    return topic.endswith(".ingest")


def journal_path(data_dir: Path) -> Path:
    """Where the embedded broker's journal lives under the data directory."""
    return data_dir / "broker" / "journal.sqlite3"


# One record of one partition, as the broker held it: the stream layer's record as read.
JournalRecord = Record


@dataclass(frozen=True, slots=True)
class Retention:
    """What a topic keeps: Kafka's ``cleanup.policy``, ``retention.ms``, ``retention.bytes``."""

    compact: bool
    ms: int  # -1: for ever
    bytes: int  # -1: unbounded, per partition

    @classmethod
    def of(cls, configs: dict[str, str]) -> Retention:
        """The retention of a topic with Kafka ``configs``."""
        return cls(
            compact="compact" in configs.get("cleanup.policy", "delete"),
            ms=int(configs.get("retention.ms", "-1")),
            bytes=int(configs.get("retention.bytes", "-1")),
        )


def _encode_headers(headers: Iterable[tuple[str, bytes]]) -> str:
    return json.dumps([[k, v.hex()] for k, v in headers])


def _decode_headers(text: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((k, bytes.fromhex(v)) for k, v in json.loads(text))


class Journal:
    """The SQLite file that holds the broker's records, topics and group offsets.

    One connection, shared by the mirror's event loop and the threads it writes from: every
    method holds the journal's lock, so transactions never interleave.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=0o600)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # before any table exists: freed pages can then be given back (after each trim)
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA journal_size_limit=67108864")  # WAL cut back to 64 MiB
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS topics (
                topic TEXT PRIMARY KEY, partitions INTEGER NOT NULL, configs TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS records (
                topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
                ts INTEGER NOT NULL, key BLOB, value BLOB, headers TEXT NOT NULL,
                size INTEGER NOT NULL,
                PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
            DROP INDEX IF EXISTS records_by_key;
            CREATE TABLE IF NOT EXISTS positions (
                topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                PRIMARY KEY (topic, partition));
            CREATE TABLE IF NOT EXISTS highwaters (
                topic TEXT NOT NULL, partition INTEGER NOT NULL, highwater INTEGER NOT NULL,
                PRIMARY KEY (topic, partition));
            CREATE TABLE IF NOT EXISTS group_offsets (
                group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
                offset INTEGER NOT NULL, PRIMARY KEY (group_id, topic, partition));
            """
        )

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    # -- topics -------------------------------------------------------------------------

    def record_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        """Remember ``topic``'s partition count and configs (replay creates it alike)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO topics VALUES (?, ?, ?) ON CONFLICT(topic) DO UPDATE SET "
                "partitions = excluded.partitions, configs = excluded.configs",
                (topic, partitions, json.dumps(configs, sort_keys=True)),
            )

    def topics(self) -> dict[str, tuple[int, dict[str, str]]]:
        """Every journaled topic: its partition count and configs."""
        rows = self._read("SELECT topic, partitions, configs FROM topics")
        return {t: (int(n), json.loads(c)) for t, n, c in rows}

    # -- records ------------------------------------------------------------------------

    def positions(self) -> dict[TP, int]:
        """The next offset the journal expects of each partition."""
        rows = self._read("SELECT topic, partition, next_offset FROM positions")
        return {(t, int(p)): int(n) for t, p, n in rows}

    def highwaters(self) -> dict[TP, int]:
        """The highest high watermark the mirror saw of each partition: past the position
        when the broker died holding records the journal never got."""
        rows = self._read("SELECT topic, partition, highwater FROM highwaters")
        return {(t, int(p)): int(n) for t, p, n in rows}

    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        """Set a partition's position forward (a replay that skipped lost offsets)."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT(topic, partition) DO UPDATE "
                "SET next_offset = max(next_offset, excluded.next_offset)",
                (topic, partition, next_offset),
            )

    def append(self, records: list[JournalRecord], highwaters: dict[TP, int] | None = None) -> None:
        """Write ``records`` and advance their partitions' positions (and the high
        watermarks the broker reported), in one transaction."""
        if not records:
            return
        nexts: dict[TP, int] = {}
        for r in records:
            tp = (r.topic, r.partition)
            nexts[tp] = max(nexts.get(tp, 0), r.offset + 1)
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.topic,
                        r.partition,
                        r.offset,
                        r.timestamp_ms,
                        r.key,
                        r.value,
                        _encode_headers(r.headers) if r.headers else "[]",
                        len(r.key or b"") + len(r.value or b""),
                    )
                    for r in records
                ],
            )
            self._db.executemany(
                "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT(topic, partition) DO UPDATE "
                "SET next_offset = max(next_offset, excluded.next_offset)",
                [(t, p, n) for (t, p), n in nexts.items()],
            )
            self._db.executemany(
                "INSERT INTO highwaters VALUES (?, ?, ?) ON CONFLICT(topic, partition) DO "
                "UPDATE SET highwater = max(highwater, excluded.highwater)",
                [(t, p, n) for (t, p), n in (highwaters or {}).items()],
            )

    def records(self, topic: str, partition: int) -> Iterator[JournalRecord]:
        """The journaled records of one partition, in offset order (read in chunks)."""
        after = -1
        while True:
            rows = self._read(
                "SELECT offset, ts, key, value, headers FROM records WHERE topic = ? AND "
                "partition = ? AND offset > ? ORDER BY offset LIMIT 2000",
                (topic, partition, after),
            )
            for offset, ts, key, value, headers in rows:
                yield JournalRecord(
                    topic, partition, int(offset), int(ts), key, value, _decode_headers(headers)
                )
            if len(rows) < 2000:
                return
            after = int(rows[-1][0])

    def count(self) -> int:
        """How many records the journal holds."""
        return int(self._read("SELECT count(*) FROM records")[0][0])

    def retained_bytes(self) -> int:
        """Keys and values held, in bytes (what a replay puts back into the broker)."""
        return int(self._read("SELECT coalesce(sum(size), 0) FROM records")[0][0])

    # -- consumer groups ----------------------------------------------------------------

    def save_group_offsets(self, groups: dict[str, dict[TP, int]]) -> None:
        """Remember the groups' committed offsets (a consistent snapshot, see the mirror)."""
        with self._transaction():
            for group, offsets in groups.items():
                self._db.executemany(
                    "INSERT INTO group_offsets VALUES (?, ?, ?, ?) ON CONFLICT "
                    "(group_id, topic, partition) DO UPDATE SET offset = excluded.offset",
                    [(group, t, p, o) for (t, p), o in offsets.items()],
                )

    def group_offsets(self) -> dict[str, dict[TP, int]]:
        """The last saved committed offsets of every group."""
        groups: dict[str, dict[TP, int]] = {}
        for g, t, p, o in self._read("SELECT group_id, topic, partition, offset FROM "
                                     "group_offsets"):  # fmt: skip
            groups.setdefault(g, {})[(t, int(p))] = int(o)
        return groups

    # -- retention ----------------------------------------------------------------------

    def trim(self, now_ms: int | None = None) -> int:
        """Apply each topic's retention to the journal; returns the records dropped.

        A partition's last record is always kept: after a replay the broker then gives
        out the same next offset as before.
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        floors = self.unconsumed_floors()
        dropped = 0
        with self._transaction():
            for topic, (partitions, configs) in self.topics().items():
                keep = Retention.of(configs)
                for partition in range(partitions):
                    floor = floors.get((topic, partition), 0) if _is_ingest(topic) else None
                    dropped += self._trim_partition(topic, partition, keep, now_ms, floor)
        if dropped:
            with self._lock:  # the file shrinks with what retention dropped
                self._db.execute("PRAGMA incremental_vacuum")
        return dropped

    def unconsumed_floors(self) -> dict[TP, int]:
        """Per partition, the lowest offset a consumer group has committed (the oldest
        record some group has not processed yet)."""
        floors: dict[TP, int] = {}
        for offsets in self.group_offsets().values():
            for tp, offset in offsets.items():
                floors[tp] = min(offset, floors.get(tp, offset))
        return floors

    def _trim_partition(
        self, topic: str, partition: int, keep: Retention, now_ms: int, floor: int | None = None
    ) -> int:
        """Trim one partition; with a ``floor``, no record at or past it is dropped."""
        last = self._db.execute(
            "SELECT max(offset) FROM records WHERE topic = ? AND partition = ?",
            (topic, partition),
        ).fetchone()[0]
        if last is None:
            return 0
        if floor is not None:
            # An ingest record no processor has committed yet is an accepted event that
            # has not been routed: retention must not drop it, whatever its age (a
            # domain whose worker is down keeps its backlog; the others are unaffected).
            last = min(last, floor)
        before = self._db.total_changes
        if keep.compact:  # latest record per key (tombstones included) and keyless ones stay
            self._db.execute(
                "DELETE FROM records WHERE topic = ? AND partition = ? AND offset < ? "
                "AND key IS NOT NULL AND offset NOT IN (SELECT max(offset) FROM records "
                "WHERE topic = ? AND partition = ? AND key IS NOT NULL GROUP BY key)",
                (topic, partition, last, topic, partition),
            )
            return self._db.total_changes - before
        if keep.ms >= 0:
            self._db.execute(
                "DELETE FROM records WHERE topic = ? AND partition = ? AND offset < ? AND ts < ?",
                (topic, partition, last, now_ms - keep.ms),
            )
        if keep.bytes >= 0:
            # the oldest records go until the partition fits (the newest are kept)
            cut = self._db.execute(
                "SELECT offset FROM (SELECT offset, sum(size) OVER (ORDER BY offset DESC) "
                "AS kept FROM records WHERE topic = ? AND partition = ?) WHERE kept > ? "
                "ORDER BY offset DESC LIMIT 1",
                (topic, partition, keep.bytes),
            ).fetchone()
            if cut is not None:
                self._db.execute(
                    "DELETE FROM records WHERE topic = ? AND partition = ? AND offset < ? "
                    "AND offset <= ?",
                    (topic, partition, last, int(cut[0])),
                )
        return self._db.total_changes - before

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


# -- replay -------------------------------------------------------------------------------


def create_journaled_topics(journal: Journal, bootstrap: str, timeout: float = 20.0) -> None:
    """Create every journaled topic on a fresh broker, with its partitions and configs."""
    topics = journal.topics()
    if not topics:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap.split(","),
                client_id="privmesh-journal",
                request_timeout_ms=5000,
            )
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise JournalError(
                    f"broker {bootstrap} not reachable for the replay: {exc}"
                ) from exc
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        for name, (partitions, configs) in topics.items():
            if name in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, partitions, 1, topic_configs=dict(configs))])
    finally:
        admin.close()


async def replay(journal: Journal, bootstrap: str) -> dict[str, int]:
    """Give a fresh broker the journal's records (same partitions, same offsets) and the
    groups' committed offsets; returns counts (``records``, ``batches``, ``groups``).

    Each partition's records go as record batches whose offset deltas are the offsets'
    distances from the partition's next offset, so a record lands on the very offset it
    had; JournalError if the broker's partition was not where the journal expects it.
    Where the broker had died holding records the journal never got (its last reported
    high watermark is past the journal's position), the partition's next offset is moved
    ``LOST_OFFSETS_MARGIN`` past that watermark: a client still holding a position in the
    lost range then waits in a gap instead of being reset to the earliest offset and
    reading the whole partition again.
    """
    await asyncio.to_thread(create_journaled_topics, journal, bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="privmesh-journal-replay",
        max_batch_size=REPLAY_BATCH_BYTES,
        max_request_size=64 * 1024 * 1024,
        acks=1,
    )
    await producer.start()
    counts = {"records": 0, "batches": 0, "groups": 0, "skipped_offsets": 0}
    positions, highwaters = journal.positions(), journal.highwaters()
    ends: dict[TP, int] = {}
    for topic, (partitions, _configs) in journal.topics().items():
        for partition in range(partitions):
            position = positions.get((topic, partition), 0)
            lost = highwaters.get((topic, partition), 0) > position
            ends[(topic, partition)] = (
                highwaters[(topic, partition)] + LOST_OFFSETS_MARGIN if lost else position
            )
    room = asyncio.Semaphore(REPLAY_PARTITIONS_AT_ONCE)

    async def one(tp: TP) -> int:
        async with room:
            return await _replay_partition(journal, producer, tp, ends[tp], counts)

    try:  # partitions side by side (each in order): the acks' round trips overlap
        reached = dict(zip(ends, await asyncio.gather(*(one(tp) for tp in ends)), strict=True))
    finally:
        await producer.stop()
    for (topic, partition), offset in reached.items():
        position = positions.get((topic, partition), 0)
        if offset > position:
            journal.advance(topic, partition, offset)
            counts["skipped_offsets"] += offset - position
    groups = journal.group_offsets()
    for group, offsets in groups.items():
        await commit_group_offsets(bootstrap, group, offsets)
    counts["groups"] = len(groups)
    return counts


async def _replay_partition(
    journal: Journal,
    producer: AIOKafkaProducer,
    tp: TP,
    end: int,
    counts: dict[str, int],
) -> int:
    """Replay one partition; its last batch claims the offsets up to ``end`` (exclusive).
    Returns the partition's next offset."""
    topic, partition = tp
    next_offset = 0  # a fresh partition's first batch starts at offset 0
    batch = producer.create_batch()
    base = next_offset
    pending = 0

    async def send(claim_to: int | None = None) -> None:
        nonlocal next_offset, batch, base, pending
        batch.close()
        if claim_to is not None and claim_to > next_offset:
            _claim_offsets(batch, claim_to - 1 - base)
            next_offset = claim_to
        meta = await (await producer.send_batch(batch, topic, partition=partition))
        if meta.offset != base:
            raise JournalError(
                f"replay of {topic}/{partition}: the broker put a batch at offset "
                f"{meta.offset}, the journal expected {base} (the partition was not fresh)"
            )
        counts["batches"] += 1
        counts["records"] += pending
        batch, base, pending = producer.create_batch(), next_offset, 0

    records = journal.records(topic, partition)
    record = next(records, None)
    while record is not None:
        following = next(records, None)
        if following is None and pending:
            # the last record goes in a batch of its own: Tansu answers ListOffsets(latest)
            # with one past the *first* offset of a partition's last batch
            await send()
        for _attempt in range(2):
            batch._relative_offset = record.offset - base  # keeps the offset
            added = batch.append(
                timestamp=record.timestamp_ms / 1000,
                key=record.key,
                value=record.value,
                headers=list(record.headers),
            )
            if added is not None:
                pending += 1
                next_offset = record.offset + 1
                break
            if pending == 0:
                raise JournalError(f"replay of {topic}/{partition}: a record does not fit")
            await send()
        record = following
    if pending:
        await send(claim_to=end)
    return next_offset


def _claim_offsets(batch: BatchBuilder, last_offset_delta: int) -> None:
    """Set a built batch's ``lastOffsetDelta`` past its last record (the broker then gives
    out the next offset after it, as a compacted Kafka batch does) and its CRC again."""
    buffer = batch._build()  # cached: send_batch sends this very buffer
    struct.pack_into(">i", buffer, _LAST_OFFSET_DELTA_AT, last_offset_delta)
    struct.pack_into(">I", buffer, _CRC_AT, calc_crc32c(bytes(buffer[_ATTRIBUTES_AT:])))


async def commit_group_offsets(bootstrap: str, group: str, offsets: dict[TP, int]) -> None:
    """Commit ``offsets`` for consumer group ``group`` (no member: a restore)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


# -- mirror -------------------------------------------------------------------------------


def list_group_offsets(bootstrap: str) -> dict[str, dict[TP, int]]:
    """Every consumer group's committed offsets on the broker."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="privmesh-journal",
        request_timeout_ms=5000,
    )
    try:
        groups: dict[str, dict[TP, int]] = {}
        for info in admin.list_groups():
            group = str(info["group_id"])
            offsets = admin.list_group_offsets(group).get(group, {})
            committed = {(tp.topic, tp.partition): int(om.offset) for tp, om in offsets.items()}
            committed = {tp: o for tp, o in committed.items() if o >= 0}
            if committed:
                groups[group] = committed
        return groups
    finally:
        admin.close()


# The consumer's fetch wait while no barrier over every partition is recent: it polls every
# partition for records written without a barrier (the gate without acknowledgement hold)
# and for the group snapshots. Tansu answers a fetch that found no records after half its
# wait or the whole of it (measured on Tansu 0.6.0: records arriving 50 ms into a 1,000 ms
# wait are answered at 500 ms), so this bounds how late such a record is journaled.
IDLE_FETCH_WAIT_MS = 500
# Bytes a targeted fetch (see Mirror.barrier) asks of each partition, and in all.
TARGETED_PARTITION_BYTES = 4 * 1024 * 1024
TARGETED_FETCH_BYTES = 64 * 1024 * 1024
# Rounds a targeted fetch goes on for partitions whose answer stopped short of their high
# watermark (a size limit); what is left then comes with the consumer's next fetch.
TARGETED_ROUNDS = 8
# How long a stopping mirror waits for the group offsets being read.
SNAPSHOT_STOP_SECONDS = 10.0
# Records queued for the journal past which the consumer's step waits for the writer.
QUEUE_LIMIT = 20_000


def _header_bytes(value: bytes | None) -> bytes:
    return b"" if value is None else bytes(value)


def _unpack(topic: str, partition: int, data: bytes, start: int, out: list[JournalRecord]) -> int:
    """Append to ``out`` the records of a fetch answer's record ``data`` at or past offset
    ``start`` (control batches skipped, as a consumer does); returns the offset after the
    last whole batch (``start`` when none). A batch whose CRC fails raises JournalError."""
    records = MemoryRecords(data)
    end = start
    while records.has_next():
        batch = records.next_batch()
        if batch is None:  # a batch cut short by the size limit: fetched again
            break
        if not batch.validate_crc():
            raise JournalError(f"a record batch of {topic}/{partition} failed its CRC check")
        if not batch.is_control_batch:
            for r in batch:
                if r.offset >= start:
                    out.append(
                        JournalRecord(
                            topic,
                            partition,
                            r.offset,
                            int(r.timestamp or 0),
                            r.key,
                            r.value,
                            tuple((k, _header_bytes(v)) for k, v in r.headers),
                        )
                    )
        end = max(end, batch.next_offset)
    return end


class Mirror:
    """Copies every record the broker appends into the journal, and consistent snapshots
    of the consumer groups' offsets.

    A snapshot taken at time t is saved once, for every partition, the journal reaches
    the high watermark that a fetch answered after t reported: every record appended
    before t (the outputs a processor delivered before committing) is then journaled.

    ``barrier(partitions)`` is the same promise made strict, for producers'
    acknowledgements: it returns once the journal holds, for every partition of
    ``partitions`` (every partition when None), the high watermark reported by a fetch
    *sent* after the call, so every record the broker acknowledged before the call in
    those partitions is on disk.

    Two paths bring records. The ack gate names the partitions each Produce wrote: a
    *targeted fetch* of just those partitions, from where the journal is, sent after the
    barrier call (one serves every barrier waiting for the next), both reports the high
    watermarks the barrier waits for and brings the records, which are queued for the
    journal at once. Meanwhile the consumer polls every partition with the long idle wait
    (records written without a barrier, and the snapshots' fetch answers). A barrier over
    every partition (a Produce response the gate could not read) probes every partition's
    high watermark instead, and the consumer then fetches with the short wait for
    BUSY_SECONDS. Journal writes go one transaction at a time, in the order the records
    were fetched (what is queued during a write goes in the next one), so a partition's
    journaled position only ever covers records that are on disk.
    """

    def __init__(
        self,
        journal: Journal,
        bootstrap: str,
        topic_configs: Callable[[str], dict[str, str]],
        snapshot_every: float = 0.5,
        fetch_wait_ms: int = IDLE_FETCH_WAIT_MS,
        busy_fetch_wait_ms: int = 10,
    ) -> None:
        self.journal = journal
        self.fetch_wait_ms = fetch_wait_ms
        self.busy_fetch_wait_ms = busy_fetch_wait_ms
        self._last_barrier = -BUSY_SECONDS  # the last barrier over every partition
        self.bootstrap = bootstrap
        self.topic_configs = topic_configs
        self.snapshot_every = snapshot_every
        self.consumer: AIOKafkaConsumer | None = None
        self.client: AIOKafkaClient | None = None
        self._assigned: set[TopicPartition] = set()
        self._pending: tuple[int, dict[str, dict[TP, int]]] | None = None
        self._last_snapshot = 0.0
        self._snapshot_task: asyncio.Task[dict[str, dict[TP, int]]] | None = None
        self.journaled = 0
        self.targeted_fetches = 0
        self.snapshots = 0
        self._refreshing = asyncio.Lock()
        self._cluster: ClusterMetadata | None = None  # as the last refresh read it
        self._journaled_to: dict[TP, int] = {}  # next offset on disk, per partition
        self._fetched_to: dict[TP, int] = {}  # next offset handed to the writer
        self._answered: dict[TP, tuple[int, int]] = {}  # targeted: (epoch ms, high watermark)
        self._waiters: list[tuple[dict[TP, int], asyncio.Future[None]]] = []
        self._next_probe: asyncio.Future[dict[TP, int]] | None = None
        self._probing: asyncio.Task[None] | None = None
        self._outstanding: set[TP] = set()  # partitions the next targeted fetch asks
        self._next_fetch: asyncio.Future[dict[TP, int]] | None = None
        self._fetching: asyncio.Task[None] | None = None
        # the writer: what is queued for the next transaction, and the partitions'
        # positions once it is on disk
        self._writing: asyncio.Task[None] | None = None
        self._queued: list[JournalRecord] = []
        self._queued_hws: dict[TP, int] = {}
        self._queued_to: dict[TP, int] = {}
        self._write_error: BaseException | None = None
        self._epoch = 0  # bumped when a write fails: fetches sent before it are dropped
        self._draining = False
        self._stopped = False

    async def start(self) -> None:
        """Connect and read from the journal's positions."""
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            client_id="privmesh-journal-mirror",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Tansu holds a fetch that finds no records for half this wait or all of it
            # (shortened while barriers over every partition wait, see _pace)
            fetch_max_wait_ms=self.fetch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            retry_backoff_ms=100,
        )
        await self.consumer.start()
        # its own connection: targeted fetches and probes never queue behind the
        # consumer's held fetch (Tansu answers a connection's requests in order)
        self.client = AIOKafkaClient(
            bootstrap_servers=self.bootstrap, client_id="privmesh-journal-metadata"
        )
        await self.client.bootstrap()
        self._journaled_to = self.journal.positions()
        self._fetched_to = dict(self._journaled_to)
        await self.refresh()

    async def stop(self) -> None:
        """Finish the writes queued, fail the barriers still waiting, and disconnect."""
        self._stopped = True
        with contextlib.suppress(Exception):
            await self.flush()
        for _targets, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(JournalError("the mirror stopped"))
                waiter.exception()  # retrieved: a caller may be gone
        self._waiters.clear()
        for task in (self._probing, self._fetching):
            if task is not None:
                task.cancel()
        if self._next_fetch is not None and not self._next_fetch.done():
            self._next_fetch.set_exception(JournalError("the mirror stopped"))
        if self._snapshot_task is not None:
            # its thread cannot be cancelled: let it end while the broker is still up (a
            # thread left retrying a broker stopped next would hold up the process's exit)
            await asyncio.wait({self._snapshot_task}, timeout=SNAPSHOT_STOP_SECONDS)
            self._snapshot_task.cancel()
            with contextlib.suppress(BaseException):
                await self._snapshot_task
        # a fetch in flight to a dead broker ends in CancelledError inside aiokafka's close
        if self.consumer is not None:
            with contextlib.suppress(asyncio.CancelledError, KafkaError, OSError):
                await self.consumer.stop()
        if self.client is not None:
            with contextlib.suppress(asyncio.CancelledError, KafkaError, OSError):
                await self.client.close()

    async def refresh(self) -> None:
        """Follow topics created since the last call (from the journal's positions)."""
        async with self._refreshing:  # the loop and barrier probes both call it
            await self._refresh()

    async def _refresh(self) -> None:
        assert self.consumer is not None and self.client is not None
        # fresh metadata (the consumer's own is only of the topics it already knew)
        cluster = self._cluster = await self.client.fetch_all_metadata()
        names = {t for t in cluster.topics() if not t.startswith("__")}
        known = self.journal.topics()
        wanted: set[TopicPartition] = set()
        for name in sorted(names):
            parts = cluster.partitions_for_topic(name) or set()
            if not parts:
                continue
            if known.get(name, (0, {}))[0] != len(parts):
                self.journal.record_topic(name, len(parts), self.topic_configs(name))
            wanted |= {TopicPartition(name, p) for p in parts}
        if wanted == self._assigned:
            return
        self.consumer.assign(sorted(wanted))
        positions = self.journal.positions()
        # assign() forgets positions: ours, or 0 for a partition the journal never had (a
        # partition starts there, and one that starts later is reset to its earliest).
        # Not seek_to_beginning(): it waits for the consumer's fetch in flight, which holds
        # the long idle wait, once per partition.
        for tp in wanted:
            self.consumer.seek(tp, self._position(tp, positions) or 0)
        self._assigned = wanted

    def _position(self, tp: TopicPartition, positions: dict[TP, int]) -> int | None:
        """Where the consumer reads ``tp`` from: past what the journal holds or the writer
        has queued; None when neither knows the partition."""
        key = (tp.topic, tp.partition)
        known = [o for o in (positions.get(key), self._fetched_to.get(key)) if o is not None]
        return max(known) if known else None

    async def step(self, timeout_ms: int = 100) -> int:
        """Journal what the consumer fetched since the last step (queued for the writer);
        returns how many records. A write that failed since the last step raises here."""
        assert self.consumer is not None
        self._raise_write_error()
        self._pace()
        if not self._assigned:  # getmany would wait for an assignment
            await asyncio.sleep(timeout_ms / 1000)
            await self._snapshot_step()
            return 0
        batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=20_000)
        rows: list[JournalRecord] = []
        hws: dict[TP, int] = {}
        reached: dict[TP, int] = {}
        for tp, records in batches.items():
            key = (tp.topic, tp.partition)
            start = self._fetched_to.get(key, 0)
            fresh = [r for r in records if r.offset >= start]  # not queued by a targeted fetch
            if not fresh:
                continue
            rows.extend(
                JournalRecord(
                    r.topic,
                    r.partition,
                    r.offset,
                    int(r.timestamp),
                    r.key,
                    r.value,
                    tuple((k, _header_bytes(v)) for k, v in r.headers),
                )
                for r in fresh
            )
            reached[key] = self._fetched_to[key] = fresh[-1].offset + 1
            if (hw := self.consumer.highwater(tp)) is not None:
                hws[key] = hw
        if rows or reached:
            self._enqueue(rows, hws, reached)
            if len(self._queued) > QUEUE_LIMIT:  # the writer falls behind: wait for it
                await self.flush()
        await self._snapshot_step()
        return len(rows)

    def _enqueue(
        self, rows: list[JournalRecord], hws: dict[TP, int], reached: dict[TP, int]
    ) -> None:
        """Queue ``rows`` for the journal; once written, each partition of ``reached`` is
        journaled up to its offset (the high watermarks ``hws`` are saved with them)."""
        self._queued.extend(rows)
        for tp, hw in hws.items():
            self._queued_hws[tp] = max(hw, self._queued_hws.get(tp, 0))
        for tp, offset in reached.items():
            self._queued_to[tp] = max(offset, self._queued_to.get(tp, 0))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_queued())

    async def _write_queued(self) -> None:
        """Write what is queued, one transaction at a time in order (what queues up during
        a write goes in the next), releasing the barriers each write satisfies."""
        while self._queued or self._queued_to:
            rows, hws, reached = self._queued, self._queued_hws, self._queued_to
            self._queued, self._queued_hws, self._queued_to = [], {}, {}
            try:
                await asyncio.to_thread(self.journal.append, rows, hws)
            except Exception as exc:  # raised to the mirror's loop by step() or flush()
                self._write_failed(exc)
                return
            self.journaled += len(rows)
            for tp, offset in reached.items():
                self._journaled_to[tp] = max(offset, self._journaled_to.get(tp, 0))
            self._release()

    def _write_failed(self, exc: Exception) -> None:
        """Drop what was queued and read it again from what is on disk: no later write
        may move a partition's journaled position past records that never got there."""
        self._write_error = exc
        self._queued, self._queued_hws, self._queued_to = [], {}, {}
        self._epoch += 1
        self._fetched_to = dict(self._journaled_to)
        if self.consumer is not None:
            for tp in self._assigned:
                self.consumer.seek(tp, self._journaled_to.get((tp.topic, tp.partition), 0))

    def _raise_write_error(self) -> None:
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            raise error

    async def flush(self) -> None:
        """Wait until everything queued is written (positions then include it); a write
        that failed raises."""
        while self._writing is not None and not self._writing.done():
            await asyncio.shield(self._writing)
        self._raise_write_error()

    def _release(self) -> None:
        waiting = []
        for targets, waiter in self._waiters:
            if waiter.done():
                continue
            if all(self._journaled_to.get(tp, 0) >= hw for tp, hw in targets.items()):
                waiter.set_result(None)
            else:
                waiting.append((targets, waiter))
        self._waiters = waiting

    def _pace(self) -> None:
        """Let the consumer fetch with the short wait while producers wait on barriers
        over every partition (within the last BUSY_SECONDS) or the mirror drains, with the
        long one otherwise: acknowledgements named by partition are served by targeted
        fetches, and an idle mirror costs less CPU, its own and Tansu's (at 48 partitions
        ~10% of a core at 50 ms, ~30% at 10 ms). aiokafka has no public setter: without
        its fetcher's attribute the wait stays the long one (slower acks, still correct)."""
        busy = self._draining or time.monotonic() - self._last_barrier < BUSY_SECONDS
        fetcher = getattr(self.consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = self.busy_fetch_wait_ms if busy else self.fetch_wait_ms

    async def barrier(self, partitions: Iterable[TP] | None = None) -> None:
        """Return once the journal holds every record the broker acknowledged before this
        call in ``partitions`` (every partition when None; see the class docstring); a
        fetch or probe that fails raises (KafkaError, OSError, JournalError). Callers bound
        it with a timeout."""
        if self._stopped:
            raise JournalError("the mirror stopped")
        if partitions is None:
            self._last_barrier = time.monotonic()
            targets = await self._probe_after_now()
        else:
            targets = await self._fetch_after_now(frozenset(partitions))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((targets, waiter))
        self._release()
        await waiter

    async def _fetch_after_now(self, partitions: frozenset[TP]) -> dict[TP, int]:
        """The high watermarks of ``partitions`` reported to a targeted fetch sent after
        this call (shared with every caller until it is sent), whose records are queued."""
        if not partitions:
            return {}
        self._outstanding |= partitions
        if self._next_fetch is None:
            self._next_fetch = asyncio.get_running_loop().create_future()
            self._next_fetch.add_done_callback(
                lambda f: f.cancelled() or f.exception()  # retrieved: callers may be gone
            )
        fetch = self._next_fetch
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch_loop())
        highwaters = await asyncio.shield(fetch)
        return {tp: highwaters[tp] for tp in partitions}

    async def _fetch_loop(self) -> None:
        while self._next_fetch is not None:
            fetch, self._next_fetch = self._next_fetch, None
            partitions, self._outstanding = self._outstanding, set()
            try:
                fetch.set_result(await self._targeted(partitions))
            except asyncio.CancelledError:  # the mirror stops
                fetch.set_exception(JournalError("the mirror stopped"))
                raise
            except Exception as exc:  # every waiter gets the failure
                fetch.set_exception(exc)

    async def _targeted(self, partitions: set[TP]) -> dict[TP, int]:
        """Fetch ``partitions`` from where the writer is and queue their records; returns
        the high watermarks the first answer reported (JournalError for a partition it
        did not answer). Partitions whose answer stopped short of it are fetched again."""
        assert self.client is not None
        if any(TopicPartition(*tp) not in self._assigned for tp in partitions):
            await self.refresh()  # a topic created since the last refresh
        targets: dict[TP, int] = {}
        todo = set(partitions)
        for _round in range(TARGETED_ROUNDS):
            answered = await self._fetch_records(todo)
            for tp in todo:
                if tp not in answered:
                    raise JournalError(f"no fetch answer for {tp[0]}/{tp[1]}")
                targets.setdefault(tp, answered[tp])
            todo = {tp for tp in todo if self._fetched_to.get(tp, 0) < targets[tp]}
            if not todo:
                break
        return targets

    async def _fetch_records(self, partitions: set[TP]) -> dict[TP, int]:
        """One fetch of ``partitions`` (per leader), waiting 1 ms (Tansu answers a 0 ms
        fetch with no partitions); their new records are queued for the writer and the
        consumer moved past them. Returns each partition's reported high watermark."""
        assert self.client is not None and self.consumer is not None
        by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = {}
        for tp in partitions:
            node = (
                self._cluster.leader_for_partition(TopicPartition(*tp)) if self._cluster else None
            )
            if node is None or node < 0:
                raise JournalError(f"no leader known for {tp[0]}/{tp[1]}")
            start = self._fetched_to.get(tp, 0)
            by_node.setdefault(node, {}).setdefault(tp[0], []).append(
                (tp[1], start, TARGETED_PARTITION_BYTES)
            )
        epoch = self._epoch
        requests = [
            self.client.send(node, FetchRequest(1, 1, TARGETED_FETCH_BYTES, 0, list(t.items())))
            for node, t in by_node.items()
        ]
        responses = await asyncio.gather(*requests)
        self.targeted_fetches += 1
        now_ms = int(time.time() * 1000)
        answered: dict[TP, int] = {}
        rows: list[JournalRecord] = []
        hws: dict[TP, int] = {}
        reached: dict[TP, int] = {}
        for response in responses:
            for topic, answers in response.topics:
                for partition, error_code, highwater, *rest in answers:
                    tp = (topic, partition)
                    if tp not in partitions:
                        continue
                    if error_code != 0:
                        raise JournalError(f"fetch of {topic}/{partition}: error {error_code}")
                    answered[tp] = hws[tp] = int(highwater)
                    self._answered[tp] = (now_ms, int(highwater))
                    if epoch != self._epoch:  # a write failed meanwhile: read again
                        continue
                    start = self._fetched_to.get(tp, 0)  # past what the consumer queued
                    end = _unpack(topic, partition, rest[-1] or b"", start, rows)
                    if end > start:
                        reached[tp] = self._fetched_to[tp] = end
        if rows or reached:
            self._enqueue(rows, hws, reached)
        for topic_partition, offset in reached.items():
            tp_ = TopicPartition(*topic_partition)
            if tp_ in self._assigned:  # the consumer need not fetch these again
                self.consumer.seek(tp_, offset)
        return answered

    async def _probe_after_now(self) -> dict[TP, int]:
        """The high watermarks reported to a probe sent after this call (shared)."""
        if self._next_probe is None:
            self._next_probe = asyncio.get_running_loop().create_future()
            self._next_probe.add_done_callback(
                lambda f: f.cancelled() or f.exception()  # retrieved: callers may be gone
            )
        probe = self._next_probe
        if self._probing is None or self._probing.done():
            self._probing = asyncio.create_task(self._probe_loop())
        return await asyncio.shield(probe)

    async def _probe_loop(self) -> None:
        while self._next_probe is not None:
            probe, self._next_probe = self._next_probe, None
            try:
                probe.set_result(await self._probe())
            except asyncio.CancelledError:  # the mirror stops
                probe.set_exception(JournalError("the mirror stopped"))
                raise
            except Exception as exc:  # every waiter gets the failure
                probe.set_exception(exc)

    async def _probe(self) -> dict[TP, int]:
        """Ask the broker each partition's high watermark (a fetch from where the mirror
        is, for 1 byte, waiting 1 ms: Tansu answers a 0 ms fetch with no partitions);
        topics created since the last refresh are followed first."""
        assert self.consumer is not None and self.client is not None
        await self.refresh()
        by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = {}
        for tp in self._assigned:
            node = self._cluster.leader_for_partition(tp) if self._cluster else None
            if node is None or node < 0:
                raise JournalError(f"no leader known for {tp.topic}/{tp.partition}")
            at = max(self.consumer.highwater(tp) or 0, self._journaled_to.get(tuple(tp), 0))
            by_node.setdefault(node, {}).setdefault(tp.topic, []).append((tp.partition, at, 1))
        targets: dict[TP, int] = {}
        for node, topics in by_node.items():
            response = await self.client.send(node, FetchRequest(1, 0, 1, 0, list(topics.items())))
            for topic, partitions in response.topics:
                for partition, _error, highwater, *_rest in partitions:
                    if highwater < 0:
                        raise JournalError(f"no high watermark for {topic}/{partition}")
                    targets[(topic, partition)] = int(highwater)
        return targets

    def _answers(self, tp: TopicPartition) -> list[tuple[int, int]]:
        """The latest fetch answers of ``tp``: (epoch ms, high watermark), the consumer's
        and the targeted fetches'."""
        assert self.consumer is not None
        answers = []
        polled, hw = self.consumer.last_poll_timestamp(tp), self.consumer.highwater(tp)
        if polled is not None and hw is not None:
            answers.append((int(polled), int(hw)))
        if (targeted := self._answered.get((tp.topic, tp.partition))) is not None:
            answers.append(targeted)
        return answers

    def caught_up(self, since_ms: int) -> bool:
        """True when, for every partition, a fetch answered at or after ``since_ms`` (epoch
        ms) and the journal holds every record below the high watermark it reported."""
        positions = self.journal.positions()
        for tp in self._assigned:
            at = positions.get((tp.topic, tp.partition), 0)
            if not any(polled >= since_ms and at >= hw for polled, hw in self._answers(tp)):
                return False
        return True

    async def _snapshot_step(self) -> None:
        if self._pending is None:
            if self._snapshot_task is None:
                if time.monotonic() - self._last_snapshot >= self.snapshot_every:
                    self._snapshot_task = asyncio.create_task(
                        asyncio.to_thread(list_group_offsets, self.bootstrap)
                    )
            elif self._snapshot_task.done():
                task, self._snapshot_task = self._snapshot_task, None
                try:
                    # read by now: every output of a commit it holds is in the broker
                    self._pending = (int(time.time() * 1000), task.result())
                except (KafkaError, OSError) as exc:
                    log.debug("group offsets not read: %s", type(exc).__name__)
                    self._last_snapshot = time.monotonic()
            return
        read_ms, groups = self._pending
        if self.caught_up(read_ms):
            if groups:
                await asyncio.to_thread(self.journal.save_group_offsets, groups)
                self.snapshots += 1
            self._pending = None
            self._last_snapshot = time.monotonic()

    def highwaters(self) -> dict[TopicPartition, int]:
        """The high watermarks the latest fetch answers reported."""
        out: dict[TopicPartition, int] = {}
        for tp in self._assigned:
            answers = self._answers(tp)
            if answers:
                out[tp] = max(hw for _polled, hw in answers)
        return out

    def lag(self) -> int:
        """Records the broker reported that the journal does not hold yet."""
        positions = self.journal.positions()
        return sum(
            max(0, hw - positions.get((tp.topic, tp.partition), 0))
            for tp, hw in self.highwaters().items()
        )

    async def drain(self, within: float = 10.0) -> bool:
        """Journal everything the broker holds and a final snapshot of the groups' offsets
        (call it once no client can write); False if it did not finish in time. The
        consumer fetches with the short wait from here on."""
        self._draining = True
        try:
            return await self._drain(within)
        finally:
            self._draining = False

    async def _drain(self, within: float) -> bool:
        deadline = time.monotonic() + within
        try:
            await self.refresh()
            groups = await asyncio.to_thread(list_group_offsets, self.bootstrap)
        except (KafkaError, OSError):
            return False
        since = int(time.time() * 1000)
        while time.monotonic() < deadline:
            await self.step(timeout_ms=100)
            await self.flush()
            if self.caught_up(since):
                if groups:
                    await asyncio.to_thread(self.journal.save_group_offsets, groups)
                return True
        return False


def journal_records(journal: Journal) -> dict[TP, list[JournalRecord]]:
    """Every journaled record by partition (for tests and inspection)."""
    out: dict[TP, list[JournalRecord]] = {}
    for topic, (partitions, _configs) in journal.topics().items():
        for partition in range(partitions):
            out[(topic, partition)] = list(journal.records(topic, partition))
    return out


def journal_size(path: Path) -> int:
    """Bytes the journal takes on disk (its WAL included)."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
