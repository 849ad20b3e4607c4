"""Producing raw bytes to Kafka topics (``privmesh produce``, erasure tombstones, consent).

kafka-python's producer: it works against any Kafka-protocol broker, including the
embedded Tansu, and needs no event loop. The demo generator (``privmesh generate``) uses
:class:`streams.rdkafka_producer.RdKafkaProducer` instead, which costs far less CPU while
the embedded broker holds acknowledgements; both satisfy :class:`RecordProducer`.
"""

from __future__ import annotations

import warnings
from types import TracebackType
from typing import Protocol, Self

from streams.errors import BrokerUnavailable
from streams.kafka_clients import kafka_python_config
from streams.settings import KafkaSettings

with warnings.catch_warnings():
    # kafka-python loads its protocol schemas at import through importlib.resources'
    # deprecated read_text: a DeprecationWarning on every CLI command that imported Feast
    # first (Feast turns them on). Only this import is quieted.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaProducer
    from kafka.errors import KafkaError


class RecordProducer(Protocol):
    """What code that only sends records needs of a producer (either implementation)."""

    sent: int

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record (``value=None`` is a tombstone)."""

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is acknowledged."""


class RawProducer:
    """A batching producer of ``bytes`` values; flushes and closes on exit."""

    def __init__(self, kafka: KafkaSettings, client_id: str, *, linger_ms: int = 5) -> None:
        try:
            self._producer = KafkaProducer(
                **kafka_python_config(kafka),
                client_id=client_id,
                linger_ms=linger_ms,
                acks=1,
                batch_size=256 * 1024,
                max_request_size=4 * 1024 * 1024,
            )
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {kafka.bootstrap}: {exc}; is `privmesh up` running, "
                "or PRIVMESH_KAFKA_BOOTSTRAP_SERVERS set?"
            ) from exc
        self.sent = 0

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record (``value=None`` is a tombstone)."""
        self._producer.send(topic, value=value, key=key, headers=headers or [])
        self.sent += 1

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is acknowledged."""
        self._producer.flush(timeout=timeout)

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
            self._producer.close(timeout=10)
