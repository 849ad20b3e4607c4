"""Topic names of a data product: ingest (raw, domain-private), product, dead-letter."""

from __future__ import annotations

from dataclasses import dataclass

from domains.contract import DataProduct, DomainContract
from streams.settings import KafkaSettings, get_kafka_settings

# Headers of every dead-letter record: a stable reason code, and a detail that names the
# field and the problem without echoing the raw value.
REASON_HEADER = "privmesh-reason"
DETAIL_HEADER = "privmesh-detail"
# Where a dead-lettered record came from: ``topic/partition/offset``.
SOURCE_HEADER = "privmesh-source"
# A dead letter whose value was cut (``streams.batch_send.dead_letter``): what was cut
# (``value``), the original length in bytes, and the sha256 (hex) of the original value.
TRUNCATED_HEADER = "privmesh-truncated"
ORIGINAL_BYTES_HEADER = "privmesh-original-bytes"
ORIGINAL_SHA256_HEADER = "privmesh-original-sha256"
# The original length of a dead letter's key, when the key was cut.
ORIGINAL_KEY_BYTES_HEADER = "privmesh-original-key-bytes"


@dataclass(frozen=True)
class ProductTopics:
    """The topics of one data product.

    ``ingest`` and ``dlq`` are inside the domain's ingestion boundary (raw events);
    ``product`` carries only pseudonymised events and may be shared; ``profiles`` is
    compacted and keyed by subject token: each subject's latest window features, so an
    erasure is a tombstone there.
    """

    ingest: str
    product: str
    dlq: str
    profiles: str

    @classmethod
    def of(cls, domain: str, product: DataProduct) -> ProductTopics:
        """Topic names for ``product`` of ``domain``."""
        base = f"{domain}.{product.name}"
        return cls(
            ingest=f"{base}.ingest",
            product=f"{base}.v{product.version}",
            dlq=f"{base}.dlq",
            profiles=f"{base}.profiles",
        )

    def all(self) -> tuple[str, ...]:
        """All topic names, ingest first."""
        return (self.ingest, self.product, self.dlq, self.profiles)


def erasures_topic(domain: str) -> str:
    """The domain's erasure requests: processors evict the named subjects' state."""
    return f"{domain}.erasures"


def erasures_dlq_topic(domain: str) -> str:
    """Malformed erasure requests, with the same reason headers as the products' DLQs."""
    return f"{domain}.erasures.dlq"


def consent_topic(domain: str) -> str:
    """The domain's consent records (raw subject, purpose, granted/withdrawn, time).

    Inside the ingestion boundary, like the ingest topics: the records name subjects by
    their raw privacy-unit value. Compacted, keyed by subject and purpose, so the topic
    holds each subject's latest decision per purpose.
    """
    return f"{domain}.consent"


def consent_dlq_topic(domain: str) -> str:
    """Malformed consent records, with the same reason headers as the products' DLQs."""
    return f"{domain}.consent.dlq"


def domain_topics(contract: DomainContract) -> list[str]:
    """Every topic of ``contract``'s domain: each product's topics, then erasure requests
    and consent records."""
    return [
        *(
            t
            for product in contract.products
            for t in ProductTopics.of(contract.domain, product).all()
        ),
        erasures_topic(contract.domain),
        erasures_dlq_topic(contract.domain),
        consent_topic(contract.domain),
        consent_dlq_topic(contract.domain),
    ]


def topic_configs(topic: str, kafka: KafkaSettings | None = None) -> dict[str, str]:
    """Kafka topic configs: per-subject profiles and consent records are compacted
    (tombstones erase a profile; the latest record per subject and purpose is kept);
    erasure requests are kept for ever; every other topic is bounded by retention
    (``PRIVMESH_KAFKA_RETENTION_MS``, ``_DLQ_RETENTION_MS``, ``_RETENTION_BYTES``)."""
    if topic.endswith((".profiles", ".consent")):
        return {"cleanup.policy": "compact"}
    if topic.endswith(".erasures"):
        return {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
    kafka = kafka or get_kafka_settings()
    keep_ms = kafka.dlq_retention_ms if topic.endswith(".dlq") else kafka.retention_ms
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(keep_ms),
        "retention.bytes": str(kafka.retention_bytes),
    }
