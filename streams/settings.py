"""Settings of the Kafka connection and of the stream processors."""

from __future__ import annotations

from functools import cache
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """Where the Kafka-protocol broker is (env prefix ``PRIVMESH_KAFKA_``).

    Leave ``bootstrap_servers`` unset to use the embedded Tansu broker that
    ``privmesh up`` starts on ``embedded_port``; set it (``host:port[,host:port]``)
    to use any Apache Kafka compatible cluster instead.
    """

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_KAFKA_", extra="ignore")

    bootstrap_servers: str | None = None
    embedded_port: Annotated[int, Field(ge=1024, le=65535)] = 19092
    partitions: Annotated[int, Field(ge=1, le=1024)] = 4
    replication_factor: Annotated[int, Field(ge=1, le=7)] = 1
    retention_ms: Annotated[int, Field(ge=60_000, le=31_536_000_000)] = Field(
        default=600_000,
        description=(
            "retention.ms of the ingest and product topics: records older than this may be "
            "dropped (the stream processors read them within seconds). The embedded "
            "broker's journal never drops an ingest record no processor has committed; on "
            "an external Kafka cluster set this to at least the longest processor outage "
            "you must survive."
        ),
    )
    dlq_retention_ms: Annotated[int, Field(ge=60_000, le=31_536_000_000)] = Field(
        default=604_800_000,
        description="retention.ms of the dead-letter topics (7 days: time to inspect them).",
    )
    retention_bytes: Annotated[int, Field(ge=65_536, le=1 << 40)] = Field(
        default=1024 * 1024,
        description=(
            "retention.bytes of every delete-policy topic, per partition: with retention_ms "
            "it bounds what a broker (the embedded one in memory) keeps and replays."
        ),
    )
    embedded_journal: bool = Field(
        default=True,
        description=(
            "Journal the embedded broker's topics and consumer-group offsets on disk "
            "(<data_dir>/broker/journal.sqlite3) and replay them when it starts: its "
            "storage is memory only."
        ),
    )
    embedded_ack_after_journal: bool = Field(
        default=True,
        description=(
            "With the journal on, answer a Produce only once the journal holds its records "
            "(a gate on the public port holds the response): a kill -9 of the broker then "
            "loses no acknowledged record, at some latency per produce request."
        ),
    )
    embedded_memory_limit_mb: Annotated[int, Field(ge=64, le=1 << 20)] = Field(
        default=512,
        description=(
            "Resident size past which the embedded broker is rotated: drained into the "
            "journal, restarted, and given back only what retention keeps (same offsets)."
        ),
    )

    @property
    def embedded(self) -> bool:
        """True when privmesh runs its own broker."""
        return self.bootstrap_servers is None

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients connect to."""
        return self.bootstrap_servers or f"127.0.0.1:{self.embedded_port}"


class StreamSettings(BaseSettings):
    """Stream processor tunables (env prefix ``PRIVMESH_STREAMS_``)."""

    model_config = SettingsConfigDict(env_prefix="PRIVMESH_STREAMS_", extra="ignore")

    master_key: SecretStr | None = Field(
        default=None,
        description=(
            "Master secret (>= 32 bytes, hex or text) from which per-domain pseudonymisation "
            "keys are derived. Unset in development: a random key is generated once under "
            "the data directory. Required in production."
        ),
    )
    key_version: Annotated[int, Field(ge=1, le=999)] = 1
    window_seconds: Annotated[int, Field(ge=1, le=86_400)] = 10
    grace_seconds: Annotated[int, Field(ge=0, le=3_600)] = 2
    feature_flush_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.05,
        description="How often changed per-subject rows and closed windows go to the online store.",
    )
    feature_flush_duty: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.25,
        description=(
            "Largest share of time spent flushing features: under load the flush interval "
            "grows so the online store does not take CPU from the stream."
        ),
    )
    offline_flush_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0,
        description="How often buffered per-subject rows become an offline parquet part file.",
    )
    max_events_per_subject: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=20,
        description=(
            "Contribution bound: at most this many events of one subject count towards "
            "one window's aggregates, so one person moves a released number by a bounded amount."
        ),
    )
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=2000, description="Records fetched, transformed and acknowledged together."
    )
    batch_within_seconds: Annotated[float, Field(gt=0, le=10)] = Field(
        default=0.05, description="How long one fetch waits for records before returning."
    )
    rebalance_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 3.0
    session_timeout_seconds: Annotated[float, Field(ge=3, le=300)] = Field(
        default=6.0,
        description=(
            "Consumer-group session timeout. Tansu holds a JoinGroup for about half of it, "
            "so a short one makes workers start (and rebalance) quickly."
        ),
    )
    producer_linger_ms: Annotated[int, Field(ge=0, le=1000)] = 5
    producer_batch_bytes: Annotated[int, Field(ge=16_384, le=16_777_216)] = 262_144
    worker_web_port: Annotated[int, Field(ge=1024, le=65535)] = 6066


@cache
def get_kafka_settings() -> KafkaSettings:
    """Process-wide Kafka settings."""
    return KafkaSettings()


@cache
def get_stream_settings() -> StreamSettings:
    """Process-wide stream settings."""
    return StreamSettings()
