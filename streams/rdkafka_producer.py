"""A librdkafka (confluent-kafka) producer with kafka-python's ``RawProducer`` interface.

Built for the demo generator and measured there, but **not its producer today**: in the
full stack behind the journaled ack gate it delivered 8-25 events/s of a 200-1,000
events/s generator (kafka-python's delivers the rate), on a quiet machine, with the old
and the new journal mirror alike (docs/streams-throughput.md, "Cost at rest"). Likely
cause, not yet confirmed by a trace: librdkafka puts one partition's batch in each Produce
request and the gate holds every request until the journal has it, so with the demo's
~100 ingest partitions far fewer records travel per acknowledged request than in
kafka-python's multi-partition requests (1,000 requests in flight did not help). Measured
apart, against the gate at a low rate, it costs 0.055 core where kafka-python costs 0.35.

Why: in the demo stack the embedded broker's ack gate answers a Produce only once the
journal holds it, so acknowledgements are slow and a connection sits at its in-flight
limit. kafka-python's network thread then loops over the record accumulator without
waiting (py-spy: ``Sender.run_once``, 0.86 core at 200 events/s; docs/streams-throughput.md,
"Cost at rest of the whole demo stack"). librdkafka's broker threads wait on their queues
and sockets instead, and batch per partition in C.

The producer waits for ``acks=all``, partitions keys with ``murmur2_random`` (Kafka's
Java-compatible default, which the processors check each event against: librdkafka's own
default, CRC32, would put a subject's events on the wrong partition), and counts every
failed delivery: a record is either acknowledged or counted in
:attr:`RdKafkaProducer.failed` and logged with its topic and the error's name, never with
its key or value.

Five requests in flight per connection, as kafka-python's default (librdkafka's is a
million): the ack gate holds each Produce until the journal has it, so records queue
meanwhile and go in fewer, fuller requests, each of which the gate answers with a journal
fetch. On the journaled broker at 200 events/s (a shared machine, load average 11-14, two
runs each) the broker component cost 0.17 core with 1 in flight, 0.27 with 5 and 0.46 with
the default, and 0.33 with 1 in a later pair: noisy. One in flight halves the throughput of
a burst (the demo's 101,734 consent records: 18.5 s with 1, 9.2 s with 5, 53 s with
kafka-python), so 5 it is.

It is not idempotent by default, although Tansu and the ack gate accept idempotent
producers: the embedded broker keeps producer ids in memory, so after it restarts (a crash,
or the memory rotation) an idempotent producer's next sequence numbers are refused and it
delivered nothing more within 20 s in a test, where a plain one resumed at once. Without
idempotence a retried batch may be written twice (at-least-once), as with the kafka-python
producer it replaces (``acks=1``, retries on).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from types import TracebackType
from typing import Self

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.errors import BrokerUnavailable
from streams.kafka_clients import librdkafka_config
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)

# librdkafka's own log lines (connection state, retries) go to this logger, not to stderr.
_LIBRDKAFKA_LOG = logging.getLogger("streams.librdkafka")

MAX_RECORD_BYTES = 4 * 1024 * 1024
"""The largest record the producer sends (librdkafka's ``message.max.bytes``), as the
kafka-python ``RawProducer``'s ``max_request_size``."""

_PURGE_REPORT_SECONDS = 5.0  # at most this long, to serve purged records' reports at close

LOG_INTERVAL_SECONDS = 10.0
"""A failure or client error of one reason is logged at most once per this many seconds
(the counters hold them all): a broker outage fails thousands of records at once."""


class RdKafkaProducer:
    """A batching producer of ``bytes`` values on librdkafka; flushes on exit.

    Drop-in for :class:`streams.producing.RawProducer` (``send``, ``flush``, ``sent``, a
    context manager) with :attr:`delivered` (acknowledged records), :attr:`failed` and
    :attr:`failures` (records refused at once or whose delivery failed, in total and by
    librdkafka error name) added. Once flushed or closed, ``delivered + failed`` is every
    record offered to :meth:`send`.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        client_id: str,
        *,
        linger_ms: int = 50,
        max_in_flight: int = 5,
        idempotent: bool = False,
        connect_timeout: float = 10.0,
    ) -> None:
        if not 0 <= linger_ms <= 10_000:
            raise ValueError(f"linger_ms must be within [0, 10000], got {linger_ms}")
        if not 1 <= max_in_flight <= 1000:
            raise ValueError(f"max_in_flight must be within [1, 1000], got {max_in_flight}")
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.failures: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._bootstrap = kafka.bootstrap
        self._producer = Producer(
            {
                **librdkafka_config(kafka),
                "client.id": client_id,
                "acks": "all",
                "enable.idempotence": idempotent,
                "partitioner": "murmur2_random",
                "linger.ms": linger_ms,
                "max.in.flight.requests.per.connection": max_in_flight,
                "batch.size": 256 * 1024,
                # Bounded as kafka-python's buffer_memory (32 MiB): a broker slower than the
                # rate blocks send() (backpressure) instead of queueing minutes of records.
                "queue.buffering.max.kbytes": 32 * 1024,
                "message.max.bytes": MAX_RECORD_BYTES,
                "error_cb": self._on_error,
                "logger": _LIBRDKAFKA_LOG,
            }
        )
        try:
            # librdkafka connects lazily: ask for metadata now, so an unreachable broker
            # fails here as kafka-python's producer does, not as a pile of failed records.
            self._producer.list_topics(timeout=connect_timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self._bootstrap}: {_error_name(exc)}; is `privmesh up` "
                "running, or PRIVMESH_KAFKA_BOOTSTRAP_SERVERS set?"
            ) from None

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record (``value=None`` is a tombstone); waits, serving delivery reports,
        while librdkafka's queue is full. A record librdkafka refuses at once (larger than
        :data:`MAX_RECORD_BYTES`, say) is counted as failed, not raised."""
        extra: list[tuple[str, str | bytes | None]] | None = list(headers) if headers else None
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=extra, on_delivery=self._delivered
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)
            except KafkaException as exc:
                self._count_failure(topic, _error_name(exc))
                return
        self.sent += 1
        self._producer.poll(0)  # serve the delivery reports that are ready, without waiting

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is acknowledged or has failed (and been counted),
        as long as some record is resolved every ``timeout`` seconds (a large backlog takes
        longer; kafka-python's flush also bounds each batch, not the whole); raises
        :class:`BrokerUnavailable` when ``timeout`` seconds pass without one."""
        while True:
            resolved = self.delivered + self.failed
            left = self._producer.flush(timeout)
            if not left:
                return
            if self.delivered + self.failed == resolved:
                raise BrokerUnavailable(
                    f"{left} record(s) not acknowledged by Kafka at {self._bootstrap}: none "
                    f"was within {timeout:g} s"
                )

    def close(self, timeout: float = 10.0) -> None:
        """Give the queued records up to ``timeout`` seconds (flushing sends them at once,
        whatever the linger), then count the rest as failed (purged) and release the client."""
        left = self._producer.flush(timeout)
        if left:
            self._producer.purge()
            # Serve the purged records' delivery reports (_PURGE_QUEUE), which count them;
            # they are queued as the purge reaches each partition, not all at once.
            self._producer.flush(_PURGE_REPORT_SECONDS)
        self._producer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self._count_failure(msg.topic() or "?", err.name())

    def _count_failure(self, topic: str, reason: str) -> None:
        self.failed += 1
        self.failures[reason] += 1
        if self._due(f"failed {reason}"):
            log.warning(
                "record to %s not delivered: %s (%d failed for this reason, %d in all)",
                topic,
                reason,
                self.failures[reason],
                self.failed,
            )

    def _on_error(self, err: KafkaError) -> None:
        # Client-wide errors (all brokers down, authentication): records are retried until
        # message.timeout.ms, then their delivery reports count them.
        if self._due(f"error {err.name()}"):
            log.warning("Kafka client error: %s (%s)", err.name(), err.str())

    def _due(self, reason: str) -> bool:
        """True when ``reason`` was not logged within :data:`LOG_INTERVAL_SECONDS`."""
        now = time.monotonic()
        last = self._logged_at.get(reason)
        if last is not None and now - last < LOG_INTERVAL_SECONDS:
            return False
        self._logged_at[reason] = now
        return True


def _error_name(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.name() if isinstance(error, KafkaError) else type(exc).__name__


__all__ = ["LOG_INTERVAL_SECONDS", "MAX_RECORD_BYTES", "RdKafkaProducer"]
