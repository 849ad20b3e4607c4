"""Micro-batches from the processor's windows to the domain's Feast store and topics.

Every ``feature_flush_seconds``: changed per-subject rows go to the online store and to
the compacted ``profiles`` topic, closed per-partition windows go to the online store
(where the DP API reads them); every ``offline_flush_seconds`` the buffered rows become
one offline parquet part file per view, and the product events the pipelines accepted
since the last one (the dicts published to the product topics) one part file per product
in ``<offline>/<product>_events/`` (the DP API's event-level aggregates read them), each
with its pre-aggregate part in ``<offline>/<product>_preaggregate/`` (``feature_repo.preaggregate``:
per subject id, minute and public key, the record count and clamped sums), written right
after it; a UTC day's pre-aggregate parts are merged into one day file once the day is
over (``PREAGGREGATE_SETTLE_SECONDS`` later). Store writes run in a thread, off the event
loop.

The pipelines buffer the event dicts (one list append per event on the hot path); once a
product has ``EVENT_CHUNK`` of them, the offline task turns them into an Arrow table in a
thread (about a tenth of the dicts' memory), so a long ``offline_flush_seconds`` at full
rate does not hold millions of dicts.

Each flush writes at most ``feature_flush_max_rows`` rows online (about 100 ms of sqlite
writes at the default, docs/streams-throughput.md), so a backlog (a restart, a burst, a
slow store) never makes one flush long. What a flush drains joins a queue per product:
closed windows (the DP API's rows) go first, then subject rows, oldest first, the budget
shared evenly between the products that have rows waiting; the rest waits for the next
flush. A subject's row for a window that is still waiting is replaced by its newer row in
place (it keeps its age, so it is not pushed back), so the queue never holds more rows than
there are subject-windows. A chunk the store refuses as a whole goes back to the queue's
front and is retried at the next flush. Rows join the offline buffer when they are drained,
so the offline history does not wait for the online store.

One lock orders flushes and erasures: a flush that drained a subject's row before an
erasure cannot write it after the erasure's delete, and an erasure removes the subject's
rows that are still queued, so no later chunk writes them again.

A bad record never costs the others: rows and events are converted to Arrow before a part
file is written, and when a batch does not convert, each record is tried alone; the ones
that fail go to the product's dead-letter topic (``offline_write_failed``, the
pseudonymised record and the error's type, never a value) and the rest are written. An
online write that fails for a batch is retried record by record the same way
(``online_write_failed``); when every record fails the store itself is away, and the
flush fails as a whole (counted, retried next interval). A part file whose write fails
(disk full, permissions) is kept in memory and written with the next one. Each product
is flushed under its own guard: one product's failure does not stop the others'.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView

from feature_repo import preaggregate
from feature_repo.events import event_schema, event_table
from feature_repo.names import EVENT_TIMESTAMP, SUBJECT_KEY
from feature_repo.store import DomainFeatureStore, ErasedRows
from streams.batch_send import BatchSender, Output, dead_letter
from streams.health import FLUSH_SECONDS_BUCKETS, FLUSH_SECONDS_LE
from streams.keyring import KeyRingWatcher
from streams.pipeline import PartitionStats, ProductPipeline
from streams.settings import StreamSettings
from streams.windows import SubjectRow

log = logging.getLogger("privmesh.streams")

Record = dict[str, object]
MAX_PAUSE_SECONDS = 1.0
EVENT_CHUNK = 10_000  # buffered event dicts of one product turned into an Arrow table
COMPACT_SECONDS = 1.0  # how often the offline task checks the event buffers
OFFLINE_WRITE_FAILED = "offline_write_failed"
ONLINE_WRITE_FAILED = "online_write_failed"
Failed = list[tuple[Record, str]]  # (record, the error's type name)
# A day's pre-aggregate parts are merged this long after the day ends: late events after
# it go to later parts, which the DP API reads next to the day file.
PREAGGREGATE_SETTLE_SECONDS = 120.0


class FeaturePusher:
    """Pushes the pipelines' drained rows; evicts erased subjects under the same lock."""

    def __init__(
        self,
        pipelines: list[ProductPipeline],
        store: DomainFeatureStore,
        settings: StreamSettings,
        sender: BatchSender,
        aligned: Callable[[ProductPipeline], bool],
        keyring: KeyRingWatcher | None = None,
    ) -> None:
        self.pipelines = pipelines
        self.store = store
        self.settings = settings
        self._sender = sender
        self._aligned = aligned
        self._keyring = keyring
        self._lock = asyncio.Lock()
        self._offline_lock = asyncio.Lock()
        self._offline: dict[str, list[Record]] = {}
        # per product: its accepted events already converted (EVENT_CHUNK at a time)
        self._events: dict[str, list[pa.Table]] = {}
        self._event_schemas = {p.product.name: event_schema(p.product) for p in pipelines}
        self._layouts = {p.product.name: preaggregate.Layout.of(p.product) for p in pipelines}
        # per product: UTC days (epoch s) with pre-aggregate parts not merged yet
        self._open_days: dict[str, set[int]] = {}
        # per product: rows drained and not written yet, with their records, oldest first;
        # subject rows keyed by (subject, window start), so a newer row of a waiting one
        # replaces it in place
        self._queued_rows: dict[str, dict[tuple[str, int], tuple[SubjectRow, Record]]] = {}
        self._queued_windows: dict[str, list[tuple[PartitionStats, Record]]] = {}
        self.counters: Counter[str] = Counter()
        self.counters["flush_max_rows"] = settings.feature_flush_max_rows

    def stash(self, pipeline: ProductPipeline, rows: list[SubjectRow]) -> None:
        """Rows of a revoked partition, pushed with the next flushes."""
        self._enqueue(pipeline, rows, [])

    def _enqueue(
        self, pipeline: ProductPipeline, rows: list[SubjectRow], closed: list[PartitionStats]
    ) -> None:
        """Queue drained rows for the online store; buffer their records for the offline one."""
        name = pipeline.product.name
        features = self.store.product_features(pipeline.product)
        if rows:
            records = pipeline.subject_records(rows)
            self._offline.setdefault(features.subject_view.name, []).extend(records)
            queued = self._queued_rows.setdefault(name, {})
            for row, record in zip(rows, records, strict=True):
                queued[(row.subject, row.window_start)] = (row, record)  # keeps its place
        if closed:
            records = pipeline.window_records(closed)
            self._offline.setdefault(features.window_view.name, []).extend(records)
            self._queued_windows.setdefault(name, []).extend(zip(closed, records, strict=True))

    @property
    def queued_rows(self) -> int:
        """Rows drained from the pipelines and not written online yet (every product)."""
        return sum(len(q) for q in self._queued_rows.values()) + sum(
            len(w) for w in self._queued_windows.values()
        )

    async def run(self) -> None:
        """Flush every ``feature_flush_seconds`` until cancelled; errors are logged, not fatal."""
        interval = self.settings.feature_flush_seconds
        await self._sender.start()
        while True:
            began = time.monotonic()
            try:
                await self.flush()
            except Exception:  # a store hiccup must not stop the processor (cancel still does)
                self.counters["flush_failures"] += 1
                log.exception("feature flush failed; retrying at the next interval")
            # A fixed cadence while flushes are cheap; when one grows (a backlog, many
            # subjects) the next pause grows with it, so flushing takes at most
            # ``feature_flush_duty`` of the time and each flush coalesces more updates per
            # subject; capped so features are never more than a second behind.
            took = time.monotonic() - began
            duty = self.settings.feature_flush_duty
            pause = max(interval - took, min(took * (1 - duty) / duty, MAX_PAUSE_SECONDS))
            await asyncio.sleep(pause)

    async def run_offline(self) -> None:
        """Write the buffered rows and events as offline part files every
        ``offline_flush_seconds``; convert full event buffers in between."""
        period = self.settings.offline_flush_seconds
        due = time.monotonic() + period
        while True:
            await asyncio.sleep(max(min(COMPACT_SECONDS, due - time.monotonic()), 0))
            try:
                if time.monotonic() >= due:
                    due = time.monotonic() + period
                    await self.write_offline()
                else:
                    await self.compact_events()
            except Exception:  # the online store has the rows; the history has a gap
                self.counters["offline_failures"] += 1
                log.exception("offline part file not written")

    async def flush(self) -> None:
        """Push what changed since the last flush to the online store and profiles topic:
        at most ``feature_flush_max_rows`` rows, closed windows first, then subject rows
        oldest first, shared between products; the rest waits for the next flush."""
        if self._keyring is not None:
            self._keyring.poll()
        began = time.perf_counter()
        async with self._lock:
            now = time.time()
            for pipeline in self.pipelines:
                self._enqueue(pipeline, *pipeline.drain(now))
            waiting = self.queued_rows
            self.counters["queued_rows_max"] = max(self.counters["queued_rows_max"], waiting)
            budget = self.settings.feature_flush_max_rows
            failed: set[str] = set()
            for pipeline in self.pipelines:  # the DP API's rows first
                try:
                    budget -= await self._push_windows(pipeline, budget)
                except Exception as exc:  # this product's rows wait; the others go on
                    failed.add(self._flush_failed(pipeline, exc))
            wanted = {
                p.product.name: len(self._queued_rows.get(p.product.name, {}))
                for p in self.pipelines
                if p.product.name not in failed
            }
            shares = fair_shares(wanted, budget)
            for pipeline in self.pipelines:
                if shares.get(pipeline.product.name, 0) <= 0:
                    continue
                try:
                    budget -= await self._push_subjects(pipeline, shares[pipeline.product.name])
                except Exception as exc:
                    failed.add(self._flush_failed(pipeline, exc))
            if failed:
                self.counters["flush_failures"] += len(failed)
            written = self.settings.feature_flush_max_rows - budget
        took = time.perf_counter() - began
        took_ms = round(took * 1000)
        self.counters["flushes"] += 1
        self.counters["flush_ms_max"] = max(self.counters["flush_ms_max"], took_ms)
        self.counters["flush_ms_total"] += took_ms
        for bound in FLUSH_SECONDS_BUCKETS:
            if took <= bound:
                self.counters[f"{FLUSH_SECONDS_LE}{bound}"] += 1
        self.counters["flush_rows_total"] += written
        self.counters["flush_rows_max"] = max(self.counters["flush_rows_max"], written)
        self.counters["queued_rows"] = self.queued_rows

    def _flush_failed(self, pipeline: ProductPipeline, exc: Exception) -> str:
        pipeline.counters["flush_failures"] += 1
        log.error("feature flush of %s failed (%s)", pipeline.product.name, type(exc).__name__)
        return pipeline.product.name

    async def _push_windows(self, pipeline: ProductPipeline, limit: int) -> int:
        """Write up to ``limit`` of the product's queued closed windows, oldest first;
        returns how many (a chunk the store refuses stays queued)."""
        queued = self._queued_windows.get(pipeline.product.name)
        if not queued or limit <= 0:
            return 0
        chunk = queued[:limit]
        closed = [stats for stats, _ in chunk]
        view = self.store.product_features(pipeline.product).window_view
        await self._to_store(pipeline, view, [record for _, record in chunk])
        del queued[: len(chunk)]  # only a flush (under the lock) takes from this queue
        pipeline.counters["windows_closed"] += len(closed)
        last = max(c.stats.window_start for c in closed)
        pipeline.counters["last_window_start"] = max(pipeline.counters["last_window_start"], last)
        return len(closed)

    async def _push_subjects(self, pipeline: ProductPipeline, limit: int) -> int:
        """Write up to ``limit`` of the product's queued subject rows, oldest first, and
        publish them to the profiles topic; returns how many (a chunk the store refuses
        stays queued)."""
        queued = self._queued_rows.get(pipeline.product.name)
        if not queued or limit <= 0:
            return 0
        chunk = [(key, queued[key]) for key in itertools.islice(queued, limit)]
        rows = [row for _, (row, _) in chunk]
        records = [record for _, (_, record) in chunk]
        view = self.store.product_features(pipeline.product).subject_view
        await self._to_store(pipeline, view, records)
        for key, entry in chunk:  # a row stashed meanwhile (newer) stays for the next flush
            if queued.get(key) is entry:
                del queued[key]
        await self._to_profiles(pipeline, rows, records)
        pipeline.counters["subject_rows_pushed"] += len(rows)
        return len(rows)

    async def evict(self, tokens: set[str], products: Collection[str] | None = None) -> ErasedRows:
        """Erasure: forget the subjects in memory, then delete their stored rows.

        ``products`` limits it to those products (a consent withdrawal for one purpose).
        """
        loop = asyncio.get_running_loop()
        chosen = [p for p in self.pipelines if products is None or p.product.name in products]
        views = {self.store.product_features(p.product).subject_view.name for p in chosen}
        async with self._lock, self._offline_lock:
            dropped = sum(p.forget(tokens) for p in chosen)  # their event dicts too
            for view, records in self._offline.items():
                if view in views:
                    self._offline[view] = [r for r in records if r.get(SUBJECT_KEY) not in tokens]
            erased = pa.array(sorted(tokens), pa.string())
            for pipeline in chosen:
                unit = pipeline.product.subject_field
                tables = self._events.get(pipeline.product.name, [])
                self._events[pipeline.product.name] = [
                    t.filter(pc.invert(pc.is_in(t[unit], value_set=erased))) for t in tables
                ]
                queued = self._queued_rows.get(pipeline.product.name)
                if queued:  # no later chunk writes an erased subject's row again
                    self._queued_rows[pipeline.product.name] = {
                        key: entry for key, entry in queued.items() if key[0] not in tokens
                    }
            names = None if products is None else {p.product.name for p in chosen}
            rows = await loop.run_in_executor(None, self.store.erase_subjects, tokens, names)
            for pipeline in chosen:  # the pre-aggregates hold the subjects' ids
                folder = self._preaggregate_folder(pipeline.product.name)
                await loop.run_in_executor(None, preaggregate.erase, folder, tokens)
        self.counters["erasures_applied"] += 1
        log.info("erasure: evicted %d window tallies", dropped)
        return rows

    async def _to_store(
        self, pipeline: ProductPipeline, view: FeatureView, records: list[Record]
    ) -> None:
        """Write ``records`` online; a batch that fails is retried record by record and
        the records that still fail are dead-lettered (all failing: the store is away)."""
        loop = asyncio.get_running_loop()
        try:
            took = await loop.run_in_executor(None, self._write_timed, view, records)
        except Exception:
            if len(records) == 1:
                raise
        else:
            took_ms = round(took * 1000)
            self.counters["online_writes"] += 1
            self.counters["online_write_ms_max"] = max(
                self.counters["online_write_ms_max"], took_ms
            )
            self.counters["online_write_ms_total"] += took_ms
            return
        failed: Failed = []
        for record in records:
            try:
                await loop.run_in_executor(None, self.store.write_online, view, [record])
            except Exception as exc:
                failed.append((record, type(exc).__name__))
        if len(failed) == len(records):
            raise RuntimeError(f"online store refused all {len(records)} rows of {view.name}")
        await self._dead_letter(pipeline, failed, ONLINE_WRITE_FAILED, view.name)

    def _write_timed(self, view: FeatureView, records: list[Record]) -> float:
        """One online write (in a worker thread); returns its own duration, which unlike
        the flush's does not include the event loop's other work between writes."""
        began = time.perf_counter()
        self.store.write_online(view, records)
        return time.perf_counter() - began

    async def _dead_letter(
        self, pipeline: ProductPipeline, failed: Failed, reason: str, target: str
    ) -> None:
        """Send records that could not be stored to the product's DLQ (pseudonymised data)."""
        if not failed:
            return
        outputs = []
        for record, error in failed:
            value = json.dumps(record, default=str, separators=(",", ":")).encode()
            subject = record.get(pipeline.product.subject_field) or record.get(SUBJECT_KEY)
            key = subject.encode() if isinstance(subject, str) and subject.isascii() else None
            detail = f"not written to {target}: {error}"
            source = f"feature-push/{target}"
            outputs.append(dead_letter(pipeline.topics.dlq, key, value, reason, detail, source))
        try:
            refused = await self._sender.deliver(outputs)
        except Exception as exc:  # the flush goes on; the records are counted as lost
            refused = outputs
            log.error("dead letters of %s not sent (%s)", target, type(exc).__name__)
        if refused:
            self.counters["dead_letter_failures"] += len(refused)
        self.counters[f"dead_lettered.{reason}"] += len(failed)
        pipeline.counters[f"rejected.{reason}"] += len(failed)
        log.error("%d record(s) of %s dead-lettered (%s)", len(failed), target, reason)

    async def _to_profiles(
        self, pipeline: ProductPipeline, rows: list[SubjectRow], records: list[Record]
    ) -> None:
        """Latest rows to the compacted profiles topic; acks are counted, not awaited.

        A subject's profile goes to its ingest partition's number, like its events.
        """
        aligned = self._aligned(pipeline)
        outputs = []
        for row, record in zip(rows, records, strict=True):
            body = {k: v for k, v in record.items() if k != SUBJECT_KEY}
            stamp = record[EVENT_TIMESTAMP]
            body[EVENT_TIMESTAMP] = stamp.isoformat() if isinstance(stamp, datetime) else stamp
            value = json.dumps(body, separators=(",", ":")).encode()
            partition = row.partition if aligned and row.partition >= 0 else None
            outputs.append(
                Output(pipeline.topics.profiles, row.subject.encode(), value, None, partition)
            )
        for _, ack in await self._sender.submit(outputs):
            asyncio.ensure_future(ack).add_done_callback(self._count_profile_ack)

    def _count_profile_ack(self, ack: asyncio.Future[object]) -> None:
        # The online store has the row; a lost profile record is re-published with the
        # subject's next change.
        if ack.cancelled() or ack.exception() is not None:
            self.counters["profile_send_failures"] += 1

    async def compact_events(self, minimum: int = EVENT_CHUNK) -> None:
        """Convert each product's buffered event dicts to an Arrow table once it has
        ``minimum`` of them (in a thread)."""
        loop = asyncio.get_running_loop()
        async with self._offline_lock:
            for pipeline in self.pipelines:
                if pipeline.buffered_events >= max(minimum, 1):
                    name = pipeline.product.name
                    events = pipeline.take_events()
                    table, failed = await loop.run_in_executor(
                        None, table_isolated, self._event_schemas[name], events
                    )
                    if table is not None:
                        self._events.setdefault(name, []).append(table)
                    await self._dead_letter(
                        pipeline, failed, OFFLINE_WRITE_FAILED, f"{name}_events"
                    )

    async def write_offline(self) -> None:
        """Write what is buffered as one part file per view and one per product's events
        (off the online flush's lock); records that cannot be converted are dead-lettered,
        a part whose write fails is kept for the next call."""
        loop = asyncio.get_running_loop()
        owner = {}
        for pipeline in self.pipelines:
            features = self.store.product_features(pipeline.product)
            owner[features.subject_view.name] = owner[features.window_view.name] = pipeline
        async with self._offline_lock:
            pending, self._offline = self._offline, {}
            for view, records in pending.items():
                if not records:
                    continue
                frame, failed = await loop.run_in_executor(None, frame_isolated, records)
                if view in owner:
                    await self._dead_letter(owner[view], failed, OFFLINE_WRITE_FAILED, view)
                if frame is None:
                    continue
                try:
                    await loop.run_in_executor(None, self.store.append_offline, view, frame)
                except Exception as exc:  # kept: written with the next part
                    self._offline.setdefault(view, [])[:0] = frame.to_dict("records")
                    self.counters["offline_failures"] += 1
                    log.error("offline part of %s not written (%s)", view, type(exc).__name__)
            for pipeline in self.pipelines:
                name = pipeline.product.name
                tables = self._events.pop(name, [])
                events = pipeline.take_events()
                if events:
                    table, failed = await loop.run_in_executor(
                        None, table_isolated, self._event_schemas[name], events
                    )
                    await self._dead_letter(
                        pipeline, failed, OFFLINE_WRITE_FAILED, f"{name}_events"
                    )
                    if table is not None:
                        tables.append(table)
                try:
                    written = await loop.run_in_executor(None, self._write_events, name, tables)
                except Exception as exc:  # kept: written with the next part
                    self._events.setdefault(name, [])[:0] = tables
                    self.counters["offline_failures"] += 1
                    log.error(
                        "offline events part of %s not written (%s)", name, type(exc).__name__
                    )
                    continue
                self.counters["offline_events"] += written
                try:
                    await loop.run_in_executor(None, self._merge_days, name, time.time())
                except Exception as exc:  # the parts answer the day, more slowly
                    self.counters["preaggregate_failures"] += 1
                    log.error("pre-aggregate day of %s not merged (%s)", name, type(exc).__name__)

    def _preaggregate_folder(self, product: str) -> Path:
        return preaggregate.preaggregate_folder(self.store.events_folder(product))

    def _write_events(self, product: str, tables: list[pa.Table]) -> int:
        """One part file of ``product``'s events (converted tables), then its
        pre-aggregate part; a pre-aggregate that fails is counted and logged: the DP API
        reads the events of that part instead."""
        if not tables:
            return 0
        table = pa.concat_tables(tables)
        part = self.store.append_events(product, table)
        if part is not None:
            try:
                layout = self._layouts[product]
                preaggregate.write_part(self._preaggregate_folder(product), part, table, layout)
                micros = pc.cast(pc.drop_null(table[layout.time]), pa.int64())
                day_us = preaggregate.DAY_SECONDS * 1_000_000
                self._note_days(product, pc.unique(pc.divide(micros, day_us)))
            except Exception as exc:
                self.counters["preaggregate_failures"] += 1
                log.error("pre-aggregate part of %s not written (%s)", product, type(exc).__name__)
        return table.num_rows

    def _note_days(self, product: str, days: pa.Array | pa.ChunkedArray) -> None:
        """Remember the UTC days (days since the epoch) of a written part's events."""
        starts = {int(d) * preaggregate.DAY_SECONDS for d in days.to_pylist()}
        self._open_days.setdefault(product, set()).update(starts)

    def _merge_days(self, product: str, now: float) -> None:
        """Merge the pre-aggregate parts of each noted day that is over and settled."""
        layout = self._layouts[product]
        folder = preaggregate.layout_folder(self._preaggregate_folder(product), layout)
        pending = self._open_days.get(product, set())
        for day in sorted(pending):
            if day + preaggregate.DAY_SECONDS + PREAGGREGATE_SETTLE_SECONDS <= now:
                preaggregate.merge_day(folder, layout, day)
                pending.discard(day)


def fair_shares(wanted: dict[str, int], budget: int) -> dict[str, int]:
    """``budget`` rows shared between products wanting ``wanted`` rows: each gets an even
    share, a product needing less than its share leaves the rest to the others (none gets
    more than it wants, and the shares add up to at most ``budget``)."""
    shares = dict.fromkeys(wanted, 0)
    open_ = [name for name, count in wanted.items() if count > 0]
    left = max(budget, 0)
    while left > 0 and open_:
        each = max(left // len(open_), 1)
        for name in list(open_):
            take = min(each, wanted[name] - shares[name], left)
            shares[name] += take
            left -= take
            if shares[name] >= wanted[name]:
                open_.remove(name)
            if left == 0:
                break
    return shares


def events_target(product: str) -> str:
    """Where a product's events are written offline (for dead-letter details)."""
    return f"{product}_events"


def table_isolated(schema: pa.Schema, events: list[Record]) -> tuple[pa.Table | None, Failed]:
    """``events`` as one table of ``schema``; events that do not convert are left out and
    returned with their error's type (tried one by one only when the batch fails)."""
    try:
        return event_table(schema, events), []
    except Exception:
        good: list[Record] = []
        failed: Failed = []
        for event in events:
            try:
                event_table(schema, [event])
                good.append(event)
            except Exception as exc:
                failed.append((event, type(exc).__name__))
        return (event_table(schema, good) if good else None), failed


def frame_isolated(records: list[Record]) -> tuple[pd.DataFrame | None, Failed]:
    """``records`` as a frame that converts to Arrow; rows that do not are left out."""
    try:
        frame = pd.DataFrame(records)
        pa.Table.from_pandas(frame, preserve_index=False)
        return frame, []
    except Exception:
        good: list[Record] = []
        failed: Failed = []
        for record in records:
            try:
                pa.Table.from_pandas(pd.DataFrame([record]), preserve_index=False)
                good.append(record)
            except Exception as exc:
                failed.append((record, type(exc).__name__))
        return (pd.DataFrame(good) if good else None), failed
