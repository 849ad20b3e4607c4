"""Read every record of some topics, and what log compaction would keep of them (tests only)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

# (topic, partition) -> [(offset, key, value, headers)]
Snapshot = dict[tuple[str, int], list[tuple[int, bytes | None, bytes | None, tuple]]]

COMPACTED_SUFFIXES = (".consent", ".profiles")  # the mesh's compacted topics


async def read_topics(bootstrap: str, topics: list[str]) -> Snapshot:
    """Every record of every partition of ``topics``, read from the start until 4 empty polls."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    out: Snapshot = {}
    try:
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        idle = 0
        while idle < 4:
            batches = await consumer.getmany(timeout_ms=250)
            idle = 0 if batches else idle + 1
            for tp, records in batches.items():
                out.setdefault((tp.topic, tp.partition), []).extend(
                    (r.offset, r.key, r.value, tuple(r.headers)) for r in records
                )
    finally:
        await consumer.stop()
    return out


def compacted(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` as compaction leaves it: each key's latest record on compacted topics
    (a record without a key is kept)."""
    out: Snapshot = {}
    for (topic, partition), records in snapshot.items():
        compact = topic.endswith(COMPACTED_SUFFIXES)
        latest = {r[1]: r[0] for r in records}
        out[(topic, partition)] = [
            r for r in records if not compact or r[1] is None or latest[r[1]] == r[0]
        ]
    return out
