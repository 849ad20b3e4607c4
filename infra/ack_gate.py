"""A Kafka-protocol gate: a producer hears "accepted" only once the journal holds its records.

The embedded Tansu keeps records in memory and answers a Produce as soon as it has them;
the journal's mirror copies them to disk a fetch later. Between the two, a ``kill -9`` of
the broker component would lose records producers had been told were accepted. The gate
sits on the public port, in front of the Tansu proxy, and forwards every connection byte
for byte. It reads only the frame sizes, the request headers (api key, version,
correlation id) and the responses' correlation ids: when a Produce response comes back it
holds it, and every later response of that connection (a connection's responses stay in
order), until ``barrier()`` (the mirror's) says the journal holds everything the broker
had acknowledged before it. If the barrier fails or times out, the response is never sent:
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


Barrier = Callable[[], Awaitable[None]]


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
                    self.gate.counters["held"] += 1
                    barrier = asyncio.create_task(self.gate.wait_for_journal())
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
        self.counters = {"connections": 0, "held": 0, "withheld": 0, "protocol_errors": 0}
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

    async def wait_for_journal(self) -> None:
        """The barrier, bounded by the timeout."""
        assert self.barrier is not None
        await asyncio.wait_for(self.barrier(), self.barrier_timeout)

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
