"""Settings of the Kafka connection and of the stream processors."""

from __future__ import annotations

import ssl
import unicodedata
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from domains.addresses import BindAddress

# Addresses that listen on every interface, and where a local client reaches them.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - a lookup, not a bind


def refuse(code: str, message: str) -> PydanticCustomError:
    """A validation error whose ``type`` is the machine-readable ``code``."""
    return PydanticCustomError(code, message.replace("{", "{{").replace("}", "}}"))


def connect_host(bind: str) -> str:
    """The host part of a URL by which a client on this machine reaches a server bound to
    ``bind`` (loopback for a wildcard address; an IPv6 address in brackets)."""
    host = _WILDCARDS.get(bind, bind)
    return f"[{host}]" if ":" in host else host


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# Longest SASL user name or password accepted (Kafka brokers take far less in practice).
MAX_CREDENTIAL_CHARS = 1024


def checked_credential(name: str, value: str) -> str:
    """``value`` if it can travel in a SASL exchange: non-empty, at most
    MAX_CREDENTIAL_CHARS, UTF-8 encodable, without control characters (PLAIN separates
    its fields with NUL). The message never repeats the value."""
    bad = (
        not value
        or len(value) > MAX_CREDENTIAL_CHARS
        or any(unicodedata.category(c) in {"Cc", "Cs"} for c in value)
    )
    if bad:
        raise refuse(
            "kafka_sasl_bad_credential",
            f"PRIVMESH_KAFKA_{name.upper()} must be 1-{MAX_CREDENTIAL_CHARS} printable "
            "characters (no control characters, valid Unicode)",
        )
    return value


def check_tls_files(ca: Path | None, cert: Path | None, key: Path | None, prefix: str) -> None:
    """Refuse TLS files that are missing, unreadable or not PEM that Python's ssl loads
    (``kafka_tls_file_unreadable``, ``kafka_tls_file_invalid``)."""
    for suffix, path in (("CAFILE", ca), ("CERTFILE", cert), ("KEYFILE", key)):
        if path is None:
            continue
        try:
            if not path.is_file():
                raise OSError("not a file")
            with path.open("rb") as handle:
                handle.read(1)
        except (OSError, ValueError) as exc:
            raise refuse(
                "kafka_tls_file_unreadable",
                f"{prefix}_{suffix} ({str(path)[:200]!r}) cannot be read: "
                f"{type(exc).__name__}; give the path of a readable PEM file",
            ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if ca is not None:
            context.load_verify_locations(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise refuse(
            "kafka_tls_file_invalid",
            f"{prefix}_* files do not load as PEM certificates and key ({exc.__class__.__name__}: "
            f"{str(exc)[:120]}); check that the key matches the certificate and is not "
            "encrypted",
        ) from None


class KafkaSettings(BaseSettings):
    """Where the Kafka-protocol broker is (env prefix ``PRIVMESH_KAFKA_``).

    Leave ``bootstrap_servers`` unset to use the embedded Tansu broker that
    ``privmesh up`` starts on ``embedded_port``; set it (``host:port[,host:port]``)
    to use any Apache Kafka compatible cluster instead.
    """

    # hide_input_in_errors: a refused setting may be the SASL password
    model_config = SettingsConfigDict(
        env_prefix="PRIVMESH_KAFKA_", extra="ignore", hide_input_in_errors=True
    )

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
    embedded_rotate_after_seconds: Annotated[float, Field(ge=1.0, le=86_400.0)] = Field(
        default=10.0,
        description=(
            "The least time a broker incarnation runs before it may be rotated (replays stay rare)."
        ),
    )

    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        description=(
            "How every Kafka client of privmesh connects: PLAINTEXT, SSL (TLS, with a client "
            "certificate for mTLS), SASL_PLAINTEXT or SASL_SSL (user name and password, over "
            "TLS for SASL_SSL). docs/kafka-security.md says which are tested end to end."
        ),
    )
    sasl_mechanism: SaslMechanism | None = Field(
        default=None,
        description="SASL mechanism of the SASL_* protocols: PLAIN (the default), "
        "SCRAM-SHA-256 or SCRAM-SHA-512.",
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None, repr=False, description="SASL password (never logged nor shown)."
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="PEM bundle of the CAs that sign the brokers' certificates "
        "(the system's CAs when unset).",
    )
    ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate (mTLS), with its key or without."
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of ssl_certfile (unencrypted)."
    )
    ssl_check_hostname: bool = Field(
        default=True,
        description="Check that the broker's certificate names the host connected to.",
    )
    embedded_tls_certfile: Path | None = Field(
        default=None,
        description=(
            "PEM server certificate: the embedded broker's public port speaks TLS (clients "
            "then need PRIVMESH_KAFKA_SECURITY_PROTOCOL=SSL and a CA that signed it)."
        ),
    )
    embedded_tls_keyfile: Path | None = Field(
        default=None, description="PEM private key of embedded_tls_certfile."
    )
    embedded_tls_cafile: Path | None = Field(
        default=None,
        description="PEM CA bundle: when set the embedded broker accepts only clients "
        "presenting a certificate it signed (mTLS).",
    )

    @field_validator("sasl_username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        return None if value is None else checked_credential("sasl_username", value)

    @field_validator("sasl_password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            checked_credential("sasl_password", value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _consistent_security(self) -> Self:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise refuse(
                "kafka_sasl_unused",
                f"SASL settings are set but PRIVMESH_KAFKA_SECURITY_PROTOCOL is "
                f"{self.security_protocol}: set it to SASL_SSL (or SASL_PLAINTEXT), or unset "
                "PRIVMESH_KAFKA_SASL_*",
            )
        if sasl and not (self.sasl_username and self.sasl_password):
            raise refuse(
                "kafka_sasl_credentials_missing",
                f"{self.security_protocol} needs PRIVMESH_KAFKA_SASL_USERNAME and "
                "PRIVMESH_KAFKA_SASL_PASSWORD",
            )
        client_files = {
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        if not tls and any(client_files.values()):
            raise refuse(
                "kafka_tls_unused",
                f"PRIVMESH_KAFKA_SSL_* files are set but the security protocol is "
                f"{self.security_protocol}: set it to SSL (or SASL_SSL), or unset them",
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise refuse(
                "kafka_tls_key_without_cert",
                "PRIVMESH_KAFKA_SSL_KEYFILE is set without PRIVMESH_KAFKA_SSL_CERTFILE",
            )
        check_tls_files(self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, "PRIVMESH_KAFKA_SSL")
        self._check_embedded_tls()
        return self

    def _check_embedded_tls(self) -> None:
        cert, key, ca = (
            self.embedded_tls_certfile,
            self.embedded_tls_keyfile,
            self.embedded_tls_cafile,
        )
        if not (cert or key or ca):
            if self.embedded and self.security_protocol != "PLAINTEXT":
                raise refuse(
                    "kafka_embedded_plaintext",
                    f"the embedded broker speaks PLAINTEXT but clients are set to "
                    f"{self.security_protocol}: set PRIVMESH_KAFKA_EMBEDDED_TLS_CERTFILE and "
                    "_KEYFILE (TLS), or PRIVMESH_KAFKA_BOOTSTRAP_SERVERS (an external Kafka)",
                )
            return
        if not (cert and key):
            raise refuse(
                "kafka_embedded_tls_incomplete",
                "the embedded broker's TLS needs both PRIVMESH_KAFKA_EMBEDDED_TLS_CERTFILE "
                "and PRIVMESH_KAFKA_EMBEDDED_TLS_KEYFILE",
            )
        if not self.embedded_journal:
            raise refuse(
                "kafka_embedded_tls_unjournaled",
                "the embedded broker terminates TLS in its journaled mode only: unset "
                "PRIVMESH_KAFKA_EMBEDDED_JOURNAL=false or the EMBEDDED_TLS_* settings",
            )
        if self.embedded and self.security_protocol != "SSL":
            raise refuse(
                "kafka_embedded_tls_mismatch",
                f"the embedded broker speaks TLS without SASL but clients are set to "
                f"{self.security_protocol}: set PRIVMESH_KAFKA_SECURITY_PROTOCOL=SSL",
            )
        check_tls_files(ca, cert, key, "PRIVMESH_KAFKA_EMBEDDED_TLS")

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
    feature_flush_max_rows: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=1000,
        description=(
            "Most rows one feature flush writes to the online store (window rows first, then "
            "subject rows, oldest first, shared between products); the rest wait for the next "
            "flush. 1,000 rows take about 50 ms on sqlite and 70 ms on Redis, the smallest "
            "write whose cost per row is flat (docs/streams-throughput.md), so a backlog "
            "never makes one flush long."
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
    worker_web_bind: BindAddress = Field(
        default="127.0.0.1",
        description=(
            "Address the worker's health and metrics pages listen on: loopback in "
            "development; 0.0.0.0 (or ::) where Prometheus or the posture page reach the "
            "worker from another host or pod (the Kubernetes manifests set it so). An IP "
            "address or a host name."
        ),
    )

    @property
    def worker_web_host(self) -> str:
        """The address a local client reaches the worker's pages on (the bind address,
        or loopback when it binds every interface)."""
        return connect_host(self.worker_web_bind)


@cache
def get_kafka_settings() -> KafkaSettings:
    """Process-wide Kafka settings."""
    return KafkaSettings()


@cache
def get_stream_settings() -> StreamSettings:
    """Process-wide stream settings."""
    return StreamSettings()
