"""The ack gate: hostile bytes close one connection only, and a Produce is answered only
once the journal holds its records (real Tansu, real journal, real mirror)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.protocol import produce as produce_protocol
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.ack_gate import (
    MAX_FRAME_BYTES,
    PRODUCE,
    AckGate,
    PendingRequests,
    RequestHeader,
    frame_size,
    parse_request_header,
    produced_partitions,
    read_frame,
    response_correlation_id,
)
from infra.broker import ensure_topics, proxy_command, tansu_command
from infra.errors import BrokerBinaryMissing, GateProtocolError, JournalError
from infra.journal import Journal, Mirror
from infra.ports import wait_for_port
from tests.conftest import free_port

TOPIC = "gate.orders.ingest"
METADATA = 3


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def test_frame_size_refuses_sizes_out_of_bounds() -> None:
    """A size prefix below a header or above 100 MiB is refused, one in bounds is read."""
    for size in (-1, 0, 3, MAX_FRAME_BYTES + 1, 2**31 - 1):
        with pytest.raises(GateProtocolError):
            frame_size(struct.pack(">i", size))
    assert frame_size(struct.pack(">i", 12)) == 12


def test_request_header_and_response_correlation_id() -> None:
    """The fixed request header and a response's correlation id are read; a frame too
    short for them, or with a negative api key, is refused."""
    assert parse_request_header(struct.pack(">hhi", 0, 7, 42) + b"rest") == RequestHeader(0, 7, 42)
    assert response_correlation_id(struct.pack(">i", 42) + b"body") == 42
    for bad in (b"", b"\x00\x00\x00", struct.pack(">hhi", -1, 0, 1)):
        with pytest.raises(GateProtocolError):
            parse_request_header(bad)
    with pytest.raises(GateProtocolError):
        response_correlation_id(b"\x00\x01")


def test_pending_requests_skip_only_acks_0_produce() -> None:
    """A response answers the oldest pending request with its correlation id; Produce
    requests skipped before it (acks=0) are forgotten, any other skipped request, or an
    unknown id, is a protocol error."""
    pending = PendingRequests()
    for cid, key in ((1, PRODUCE), (2, PRODUCE), (3, METADATA), (4, PRODUCE)):
        pending.sent(RequestHeader(key, 1, cid))
    assert pending.answered(3).api_key == METADATA
    assert len(pending) == 1
    with pytest.raises(GateProtocolError):
        pending.answered(99)
    pending = PendingRequests()
    pending.sent(RequestHeader(METADATA, 1, 1))
    pending.sent(RequestHeader(PRODUCE, 1, 2))
    with pytest.raises(GateProtocolError):
        pending.answered(2)  # the Metadata request needs its answer first


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_read_frame_on_any_bytes_returns_or_refuses(data: bytes) -> None:
    """Whatever bytes a client sends, reading frames ends in frames, a clean end, or a
    GateProtocolError: nothing else escapes."""

    async def read_all() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        with contextlib.suppress(GateProtocolError):
            while (frame := await read_frame(reader)) is not None:
                with contextlib.suppress(GateProtocolError):
                    parse_request_header(frame)

    asyncio.run(read_all())


def _classic_response(version: int, topics: list[tuple[str, list[tuple[int, int]]]]) -> bytes:
    """A Produce response of ``version`` (0 to 8) encoded by aiokafka, correlation id 7 in
    front: ``topics`` as (name, [(partition, error code)])."""
    cls = getattr(produce_protocol, f"ProduceResponse_v{version}")
    rows = []
    for name, partitions in topics:
        entries = []
        for partition, error in partitions:
            entry: tuple[object, ...] = (partition, error, 40 + partition)
            if version >= 2:
                entry += (-1,)
            if version >= 5:
                entry += (0,)
            if version >= 8:
                entry += ([(0, "bad record")] if error else [], "why" if error else None)
            entries.append(entry)
        rows.append((name, entries))
    body = cls(rows) if version == 0 else cls(rows, 0)
    return struct.pack(">i", 7) + body.encode()


def _uvarint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def _compact(text: str | None) -> bytes:
    if text is None:
        return _uvarint(0)
    data = text.encode()
    return _uvarint(len(data) + 1) + data


def _flexible_response(topics: list[tuple[str, list[tuple[int, int]]]]) -> bytes:
    """A Produce response v9+ (compact strings and arrays, tagged fields, one of them set
    on each partition as v10's current leader is), correlation id 7 in front."""
    out = struct.pack(">i", 7) + _uvarint(0)  # header tagged fields
    out += _uvarint(len(topics) + 1)
    for name, partitions in topics:
        out += _compact(name) + _uvarint(len(partitions) + 1)
        for partition, error in partitions:
            out += struct.pack(">ihqqq", partition, error, 40 + partition, -1, 0)
            errors = [(0, "bad record")] if error else []
            out += _uvarint(len(errors) + 1)
            for index, message in errors:
                out += struct.pack(">i", index) + _compact(message) + _uvarint(0)
            out += _compact("why" if error else None)
            leader = struct.pack(">ii", 1, 0) + _uvarint(0)
            out += _uvarint(1) + _uvarint(0) + _uvarint(len(leader)) + leader  # tagged
        out += _uvarint(0)
    return out + struct.pack(">i", 0) + _uvarint(0)


TOPICS_WRITTEN = [("a.ingest", [(0, 0), (3, 0), (1, 6)]), ("b.v1", [(2, 0)]), ("c.dlq", [(0, 3)])]
WRITTEN = frozenset({("a.ingest", 0), ("a.ingest", 3), ("b.v1", 2)})


@pytest.mark.parametrize("version", range(9))
def test_produced_partitions_of_classic_responses(version: int) -> None:
    """Every Produce response version up to 8 gives the partitions it wrote: those with
    error code 0, not the failed ones."""
    assert produced_partitions(_classic_response(version, TOPICS_WRITTEN), version) == WRITTEN


@pytest.mark.parametrize("version", [9, 10, 11, 12])
def test_produced_partitions_of_flexible_responses(version: int) -> None:
    """Flexible versions (compact encodings, tagged fields) are read alike; a version
    past the last one known gives None (the gate then waits on every partition)."""
    assert produced_partitions(_flexible_response(TOPICS_WRITTEN), version) == WRITTEN
    assert produced_partitions(_flexible_response(TOPICS_WRITTEN), 13) is None


def test_produced_partitions_refuses_a_cut_response() -> None:
    """A response cut anywhere short, or with bytes past its fields, raises
    GateProtocolError: never a partial set."""
    for frame, version in (
        (_classic_response(8, TOPICS_WRITTEN), 8),
        (_flexible_response(TOPICS_WRITTEN), 9),
    ):
        for cut in range(len(frame)):
            with pytest.raises(GateProtocolError):
                produced_partitions(frame[:cut], version)
        with pytest.raises(GateProtocolError):
            produced_partitions(frame + b"\x00", version)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=96), st.integers(min_value=0, max_value=20))
def test_produced_partitions_on_any_bytes_returns_or_refuses(data: bytes, version: int) -> None:
    """Whatever bytes come back, reading them gives a set of partitions, None, or a
    GateProtocolError (the gate then waits on every partition): nothing else escapes."""
    with contextlib.suppress(GateProtocolError):
        result = produced_partitions(data, version)
        assert result is None or all(isinstance(t, str) for t, _p in result)


# -- against a real Tansu ----------------------------------------------------------------


@pytest.fixture
def tansu() -> Iterator[tuple[int, int, int]]:
    """A Tansu broker and, in front of it, a proxy that advertises the gate's port:
    (the broker's port, the proxy's port, the gate's port)."""
    try:
        broker_port, proxy_port, gate_port = free_port(), free_port(), free_port()
        broker = subprocess.Popen(tansu_command(broker_port), stderr=subprocess.DEVNULL)
    except BrokerBinaryMissing as exc:
        pytest.skip(f"Tansu unavailable: {exc}")
    proxy = subprocess.Popen(
        proxy_command(proxy_port, broker_port, gate_port), stderr=subprocess.DEVNULL
    )
    try:
        if not (wait_for_port(broker_port, 10) and wait_for_port(proxy_port, 10)):
            pytest.skip("Tansu did not listen")
        ensure_topics(f"127.0.0.1:{broker_port}", [TOPIC], 2, 1)
        yield broker_port, proxy_port, gate_port
    finally:
        for proc in (proxy, broker):
            proc.kill()
            proc.wait(10)


@contextlib.asynccontextmanager
async def gated(
    tmp_path: Path, ports: tuple[int, int, int]
) -> AsyncIterator[tuple[AckGate, Mirror, Journal]]:
    """The gate on its port, the mirror journaling (stepped as the broker component does)."""
    broker_port, proxy_port, gate_port = ports
    journal = Journal(tmp_path / "journal.sqlite3")
    mirror = Mirror(journal, f"127.0.0.1:{broker_port}", lambda _t: {})
    await mirror.start()
    gate = AckGate(gate_port, proxy_port, mirror.barrier, barrier_timeout=5.0)
    await gate.start()
    stepping = True

    async def step() -> None:
        while stepping:
            try:
                await mirror.step(timeout_ms=50)
            except Exception:  # a test stopped the mirror
                await asyncio.sleep(0.05)

    loop = asyncio.create_task(step())
    try:
        yield gate, mirror, journal
    finally:
        stepping = False
        await loop
        await gate.close()
        await mirror.stop()
        journal.close()


async def _hostile(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; what comes back before the gate closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    writer.write_eof()  # the client is done sending: a truncated frame stays truncated
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.integration
def test_hostile_connections_are_closed_and_others_acked_after_the_journal(
    tmp_path: Path, tansu: tuple[int, int, int]
) -> None:
    """Garbage, a huge size prefix and an unanswerable frame each get their connection
    closed with nothing sent back, while a producer beside them is served; and every
    record whose Produce was answered is in the journal at that moment."""

    async def run() -> None:
        async with gated(tmp_path, tansu) as (gate, mirror, journal):
            bootstrap = f"127.0.0.1:{gate.port}"
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
            await producer.start()
            try:
                hostile = [
                    b"\xff" * 4,  # size -1
                    struct.pack(">i", 2**30) + b"x" * 10,  # 1 GiB announced
                    _frame(b"\x00"),  # too short for a header
                    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                    struct.pack(">i", 64) + b"trunc",  # truncated, then EOF
                ]
                closed = asyncio.gather(*(_hostile(gate.port, d) for d in hostile))
                for i in range(60):
                    meta = await (await producer.send(TOPIC, b"v%d" % i, partition=i % 2))
                    held = {r.value for r in journal.records(TOPIC, meta.partition)}
                    assert b"v%d" % i in held, "acknowledged before it was journaled"
                assert await closed == [b""] * len(hostile)
            finally:
                await producer.stop()
            assert gate.counters["protocol_errors"] >= 4
            assert gate.counters["held"] >= 60
            assert gate.counters["withheld"] == 0
            # the gate read every Produce response: the mirror fetched only their partitions
            assert gate.counters["unread_produce_responses"] == 0
            assert mirror.targeted_fetches >= 1

    asyncio.run(run())


@pytest.mark.integration
def test_a_failed_barrier_withholds_the_ack(tmp_path: Path, tansu: tuple[int, int, int]) -> None:
    """When the mirror cannot vouch for the journal (stopped), the Produce response is
    never sent: the connection is closed and the producer does not hear "accepted"."""

    async def run() -> None:
        async with gated(tmp_path, tansu) as (gate, mirror, _journal):
            await mirror.stop()
            with pytest.raises(JournalError):
                await mirror.barrier()
            producer = AIOKafkaProducer(
                bootstrap_servers=f"127.0.0.1:{gate.port}", acks="all", request_timeout_ms=3000
            )
            await producer.start()
            try:
                sent = await producer.send(TOPIC, b"never acked", partition=0)
                done, _ = await asyncio.wait({sent}, timeout=4)
                assert not done or sent.exception() is not None
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 10)
            assert gate.counters["withheld"] >= 1

    asyncio.run(run())


@pytest.mark.integration
def test_a_barrier_naming_partitions_fetches_their_records_itself(
    tmp_path: Path, tansu: tuple[int, int, int]
) -> None:
    """A barrier over the partitions a Produce wrote does not wait for the consumer's idle
    poll (here 5 s): its own fetch, sent after the call, brings the records, and the
    journal holds them when it returns. Records the two paths both fetched are written
    once (the mirror's count of journaled records is exact). A topic created meanwhile is
    followed as fast."""
    broker_port, _proxy_port, _gate_port = tansu
    bootstrap = f"127.0.0.1:{broker_port}"

    async def run() -> None:
        journal = Journal(tmp_path / "journal.sqlite3")
        mirror = Mirror(journal, bootstrap, lambda _t: {}, fetch_wait_ms=5000)
        await mirror.start()
        stepping = True

        async def step() -> None:
            while stepping:
                await mirror.step(timeout_ms=50)

        loop = asyncio.create_task(step())
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await asyncio.sleep(0.5)  # the consumer's first fetch is held
            sent = 0
            for i in range(20):
                partition = i % 2
                meta = await producer.send_and_wait(TOPIC, b"r%d" % i, partition=partition)
                sent += 1
                began = asyncio.get_running_loop().time()
                await mirror.barrier({(TOPIC, partition)})
                assert asyncio.get_running_loop().time() - began < 1.0
                held = {r.offset for r in journal.records(TOPIC, partition)}
                assert meta.offset in held
            # a topic created now is followed at once, not a held fetch per partition later
            fresh = "gate.fresh.ingest"
            await asyncio.to_thread(ensure_topics, bootstrap, [fresh], 4, 1)
            for partition in range(4):
                meta = await producer.send_and_wait(fresh, b"f", partition=partition)
                sent += 1
                began = asyncio.get_running_loop().time()
                await mirror.barrier({(fresh, partition)})
                assert asyncio.get_running_loop().time() - began < 2.0
                assert [r.offset for r in journal.records(fresh, partition)] == [meta.offset]
            await asyncio.sleep(6)  # the consumer's held fetches come back meanwhile
            await mirror.flush()
            assert mirror.targeted_fetches >= 24
            assert mirror.journaled == sent == journal.count()
        finally:
            stepping = False
            await loop
            await producer.stop()
            await mirror.stop()
            journal.close()

    asyncio.run(run())
