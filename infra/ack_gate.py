"""A Kafka-protocol gate: a producer hears "accepted" only once the journal holds its records.

The embedded Tansu keeps records in memory and answers a Produce as soon as it has them;
the journal's mirror copies them to disk a fetch later. Between the two, a ``kill -9`` of
the broker component would lose records producers had been told were accepted. The gate
sits on the public port, in front of the Tansu proxy, and forwards every connection byte
for byte. It reads only the frame sizes, the request headers (api key, version,
correlation id) and the responses' correlation ids: when a Produce response comes back it
holds it, and every later response of that connection (a connection's responses stay in
order), until ``barrier(partitions)`` (the mirror's) says the journal holds everything the
broker had acknowledged before it in the partitions that Produce wrote: the gate reads the
partitions (and their error codes) from the Produce response (:func:`produced_partitions`),
so the mirror fetches only those instead of polling every partition. A response it cannot
read asks the barrier for every partition (``None``); one whose partitions all failed
appended nothing and goes at once. If the barrier fails or times out, the response is never sent:
the client connection is closed and the producer sends again (see README "What the
embedded broker keeps" for what a retry means).

Client bytes are hostile input: a frame too short, too big or truncated closes that one
connection; the gate and the other connections go on.

With an ``ssl_context`` the gate also terminates TLS (and checks client certificates
when the context requires them): the embedded broker then offers a TLS listener
(``PRIVMESH_KAFKA_EMBEDDED_TLS_*``, docs/kafka-security.md). A gate with no barrier
forwards responses at once (TLS without the journal's acknowledgement hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

from infra.errors import GateProtocolError, InfraError

log = logging.getLogger("privmesh.ack_gate")

PRODUCE = 0  # Kafka api key of Produce
# Largest frame forwarded, either way (Kafka's socket.request.max.bytes is 100 MiB).
MAX_FRAME_BYTES = 100 * 1024 * 1024
# api_key int16, api_version int16, correlation_id int32: every request header starts so.
_REQUEST_HEADER = struct.Struct(">hhi")
_INT32 = struct.Struct(">i")
# How long a held Produce response waits for the journal before its connection is closed.
BARRIER_TIMEOUT_SECONDS = 25.0
# How long a client may take over its TLS handshake before the gate drops it.
TLS_HANDSHAKE_SECONDS = 10.0
# Produce responses are flexible (compact strings and arrays, tagged fields) from v9; the
# layout read here is Kafka's up to v12 (v10 to v12 only add tagged fields).
PRODUCE_FLEXIBLE_FROM = 9
PRODUCE_LAST_KNOWN = 12

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """The fixed start of a Kafka request header."""

    api_key: int
    api_version: int
    correlation_id: int


def frame_size(prefix: bytes, largest: int = MAX_FRAME_BYTES) -> int:
    """The size announced by a frame's 4-byte prefix; GateProtocolError if out of bounds."""
    (size,) = _INT32.unpack(prefix)
    if size < 4 or size > largest:
        raise GateProtocolError(f"frame size {size} outside 4..{largest}")
    return int(size)


def parse_request_header(frame: bytes) -> RequestHeader:
    """The header of a request ``frame`` (without its size prefix)."""
    if len(frame) < _REQUEST_HEADER.size:
        raise GateProtocolError(f"request of {len(frame)} bytes has no header")
    api_key, api_version, correlation_id = _REQUEST_HEADER.unpack_from(frame)
    if api_key < 0 or api_version < 0:
        raise GateProtocolError("negative api key or version")
    return RequestHeader(api_key, api_version, correlation_id)


def response_correlation_id(frame: bytes) -> int:
    """The correlation id a response ``frame`` (without its size prefix) answers."""
    if len(frame) < _INT32.size:
        raise GateProtocolError("response without a correlation id")
    return int(_INT32.unpack_from(frame)[0])


class _Reader:
    """Reads Kafka's primitive types from a response; GateProtocolError past its end."""

    _INT16: ClassVar[struct.Struct] = struct.Struct(">h")

    def __init__(self, data: bytes, flexible: bool) -> None:
        self.data = data
        self.at = 0
        self.flexible = flexible

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise GateProtocolError("produce response ends early")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def int16(self) -> int:
        return int(self._INT16.unpack(self.take(2))[0])

    def int32(self) -> int:
        return int(_INT32.unpack(self.take(4))[0])

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise GateProtocolError("varint too long")

    def count(self) -> int:
        """An array's length (a null array counts 0)."""
        n = self.uvarint() - 1 if self.flexible else self.int32()
        return max(n, 0)

    def string(self) -> str | None:
        n = self.uvarint() - 1 if self.flexible else self.int16()
        if n < 0:
            return None
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GateProtocolError("topic name not UTF-8") from exc

    def tagged_fields(self) -> None:
        if self.flexible:
            for _ in range(self.uvarint()):
                self.uvarint()  # tag
                self.take(self.uvarint())


def produced_partitions(frame: bytes, api_version: int) -> frozenset[TopicPartition] | None:
    """The partitions a Produce response ``frame`` (without its size prefix) reports as
    written (error code 0); None for a version this reader does not know. A frame that
    does not parse, or has bytes past its fields, raises GateProtocolError."""
    if api_version > PRODUCE_LAST_KNOWN:
        return None
    flexible = api_version >= PRODUCE_FLEXIBLE_FROM
    reader = _Reader(frame, flexible)
    reader.int32()  # correlation id
    reader.tagged_fields()  # response header v1
    written: set[TopicPartition] = set()
    for _topic in range(reader.count()):
        name = reader.string()
        for _partition in range(reader.count()):
            index, error_code = reader.int32(), reader.int16()
            reader.take(8)  # base offset
            if api_version >= 2:
                reader.take(8)  # log append time
            if api_version >= 5:
                reader.take(8)  # log start offset
            if api_version >= 8:
                for _error in range(reader.count()):
                    reader.take(4)  # batch index
                    reader.string()
                    reader.tagged_fields()
                reader.string()  # error message
            reader.tagged_fields()
            if error_code == 0:
                if name is None:
                    raise GateProtocolError("a produce response names no topic")
                written.add((name, index))
        reader.tagged_fields()
    if api_version >= 1:
        reader.int32()  # throttle time
    reader.tagged_fields()
    if reader.at != len(frame):
        raise GateProtocolError("produce response longer than its fields")
    return frozenset(written)


class PendingRequests:
    """The requests of one connection still waiting for a response, in order.

    A broker answers a connection's requests in order, except that a Produce with
    ``acks=0`` gets no answer at all: a response therefore answers the oldest pending
    request with its correlation id, and the Produce requests before it were acks=0.
    """

    def __init__(self) -> None:
        self._queue: deque[RequestHeader] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def sent(self, header: RequestHeader) -> None:
        """Note a request forwarded upstream."""
        self._queue.append(header)

    def answered(self, correlation_id: int) -> RequestHeader:
        """The request a response with ``correlation_id`` answers (acks=0 Produce requests
        skipped before it are forgotten); GateProtocolError if no request matches."""
        for index, header in enumerate(self._queue):
            if header.correlation_id == correlation_id:
                if any(h.api_key != PRODUCE for h in list(self._queue)[:index]):
                    raise GateProtocolError("a response skipped a request that needs one")
                for _ in range(index + 1):
                    self._queue.popleft()
                return header
            if header.api_key != PRODUCE:
                break
        raise GateProtocolError(f"response {correlation_id} answers no pending request")


async def read_frame(reader: asyncio.StreamReader, largest: int = MAX_FRAME_BYTES) -> bytes | None:
    """One frame (without its size prefix); None at a clean end of stream. A truncated
    frame, or one over ``largest`` bytes, raises GateProtocolError."""
    try:
        prefix = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise GateProtocolError("truncated size prefix") from exc
        return None
    size = frame_size(prefix, largest)
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise GateProtocolError(f"frame truncated at {len(exc.partial)} of {size} bytes") from exc


# The mirror's barrier: the partitions a Produce wrote, or None for every partition.
Barrier = Callable[[frozenset[TopicPartition] | None], Awaitable[None]]


class _Connection:
    """One client connection and its upstream twin."""

    def __init__(
        self,
        gate: AckGate,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.gate = gate
        self.client_reader, self.client_writer = client
        self.upstream_reader, self.upstream_writer = upstream
        self.pending = PendingRequests()
        # responses in order; a Produce response comes with the barrier it waits for
        self.outbox: asyncio.Queue[tuple[bytes, asyncio.Task[None] | None] | None] = asyncio.Queue()
        self.requests: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        """Pump both ways until either side ends or misbehaves."""
        self.requests = asyncio.create_task(self._pump_requests())
        responses = asyncio.create_task(self._pump_responses())
        sender = asyncio.create_task(self._send_responses())
        try:
            # the client hanging up ends it; upstream ending lets held responses go first
            done, _ = await asyncio.wait(
                {self.requests, sender}, return_when=asyncio.FIRST_COMPLETED
            )
            if self.requests.cancelled() and not sender.done():  # paused: release the held
                await asyncio.wait({sender})
                done = {sender}
            for task in done:
                error = None if task.cancelled() else task.exception()
                if isinstance(error, GateProtocolError):
                    self.gate.counters["protocol_errors"] += 1
                    log.info("gate closed a connection: %s", error)
        finally:
            for task in (self.requests, responses, sender):
                task.cancel()
            for task in (self.requests, responses, sender):
                with contextlib.suppress(BaseException):
                    await task
            self.drop_held()
            for writer in (self.client_writer, self.upstream_writer):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    def drop_held(self) -> None:
        """Cancel the barriers of responses never sent."""
        while not self.outbox.empty():
            item = self.outbox.get_nowait()
            if item is not None and item[1] is not None:
                item[1].cancel()

    async def _pump_requests(self) -> None:
        while (frame := await read_frame(self.client_reader)) is not None:
            header = parse_request_header(frame)
            self.pending.sent(header)
            self.upstream_writer.writelines((_INT32.pack(len(frame)), frame))
            await self.upstream_writer.drain()

    async def _pump_responses(self) -> None:
        try:
            # a fetch response may be bigger than any request: the broker's are not bounded
            while (frame := await read_frame(self.upstream_reader, 2**31 - 1)) is not None:
                header = self.pending.answered(response_correlation_id(frame))
                barrier = None
                if header.api_key == PRODUCE and self.gate.barrier is not None:
                    partitions = self.gate.written(frame, header.api_version)
                    if partitions is None or partitions:
                        self.gate.counters["held"] += 1
                        barrier = asyncio.create_task(self.gate.wait_for_journal(partitions))
                await self.outbox.put((frame, barrier))
        finally:
            await self.outbox.put(None)

    async def _send_responses(self) -> None:
        while (item := await self.outbox.get()) is not None:
            frame, barrier = item
            if barrier is not None:
                try:
                    await barrier
                except Exception as exc:  # any failure: the ack is withheld
                    self.gate.counters["withheld"] += 1
                    log.warning(
                        "a Produce response was withheld (%s: %s): closing its connection",
                        type(exc).__name__,
                        exc if isinstance(exc, InfraError) else "",
                    )
                    return
            self.client_writer.writelines((_INT32.pack(len(frame)), frame))
            await self.client_writer.drain()


class AckGate:
    """The public port: connections forwarded to ``upstream_port``, Produce responses held
    until ``barrier()`` returns (at most ``barrier_timeout`` seconds; not held without a
    barrier), TLS terminated with ``ssl_context`` when given."""

    def __init__(
        self,
        port: int,
        upstream_port: int,
        barrier: Barrier | None,
        barrier_timeout: float = BARRIER_TIMEOUT_SECONDS,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if barrier_timeout <= 0:
            raise ValueError(f"barrier_timeout must be positive, got {barrier_timeout}")
        self.port = port
        self.upstream_port = upstream_port
        self.barrier = barrier
        self.barrier_timeout = barrier_timeout
        self.host = host
        self.ssl_context = ssl_context
        self.counters = {
            "connections": 0,
            "held": 0,
            "withheld": 0,
            "protocol_errors": 0,
            "unread_produce_responses": 0,
        }
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on the public port."""
        self._server = await asyncio.start_server(
            self._accept,
            self.host,
            self.port,
            reuse_address=True,
            ssl=self.ssl_context,
            ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS if self.ssl_context else None,
        )

    def written(self, frame: bytes, api_version: int) -> frozenset[TopicPartition] | None:
        """The partitions a Produce response says it wrote; None (every partition) when
        the response cannot be read (counted: the barrier is then the costly one)."""
        try:
            partitions = produced_partitions(frame, api_version)
        except GateProtocolError:
            partitions = None
        if partitions is None:
            self.counters["unread_produce_responses"] += 1
        return partitions

    async def wait_for_journal(self, partitions: frozenset[TopicPartition] | None = None) -> None:
        """The barrier over ``partitions`` (None: all), bounded by the timeout."""
        assert self.barrier is not None
        await asyncio.wait_for(self.barrier(partitions), self.barrier_timeout)

    def pause(self) -> None:
        """Take no new connection nor request; responses still flow (a drain releases the
        held ones)."""
        if self._server is not None:
            self._server.close()
        for conn in self._connections:
            if conn.requests is not None:
                conn.requests.cancel()

    async def close(self) -> None:
        """Close every connection (responses still held are never sent) and the port."""
        self.pause()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                writer.close()
                return
            self.counters["connections"] += 1
            conn = _Connection(self, (reader, writer), upstream)
            self._connections.add(conn)
            try:
                await conn.serve()
            finally:
                self._connections.discard(conn)
        finally:
            self._tasks.discard(task)
