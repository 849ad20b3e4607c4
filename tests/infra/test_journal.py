"""The broker journal on its own: records, positions, group offsets and retention."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.journal import Journal, JournalRecord, Retention, journal_records
from streams.settings import KafkaSettings
from streams.topics import topic_configs


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    """An empty journal in the test's directory."""
    return Journal(tmp_path / "journal.sqlite3")


def rec(
    topic: str,
    offset: int,
    ts: int = 0,
    key: bytes | None = b"k",
    size: int = 1,
    partition: int = 0,
) -> JournalRecord:
    """A record (of partition 0 unless told)."""
    return JournalRecord(topic, partition, offset, ts, key, b"v" * size, (("h", b"\x00\xff"),))


def test_records_headers_and_positions_round_trip(journal: Journal) -> None:
    """What is appended is read back in offset order, headers and null values included,
    and each partition's position is one past its last offset."""
    journal.record_topic("a.ingest", 2, {})
    rows = [rec("a.ingest", 5), JournalRecord("a.ingest", 1, 0, 7, None, None), rec("a.ingest", 3)]
    journal.append(rows)
    assert [r.offset for r in journal.records("a.ingest", 0)] == [3, 5]
    assert list(journal.records("a.ingest", 1)) == [rows[1]]
    assert journal.positions() == {("a.ingest", 0): 6, ("a.ingest", 1): 1}
    assert next(iter(journal.records("a.ingest", 0))).headers == (("h", b"\x00\xff"),)


def test_appending_again_is_idempotent(journal: Journal) -> None:
    """A record mirrored twice (a re-read after a restart) is kept once."""
    journal.record_topic("a.ingest", 1, {})
    journal.append([rec("a.ingest", 0), rec("a.ingest", 1)])
    journal.append([rec("a.ingest", 1)])
    assert journal.count() == 2


def test_group_offsets_are_replaced_per_partition(journal: Journal) -> None:
    """A later snapshot replaces a group's offset of a partition and keeps the others."""
    journal.save_group_offsets({"g": {("t", 0): 5, ("t", 1): 9}})
    journal.save_group_offsets({"g": {("t", 0): 7}, "h": {("t", 0): 1}})
    assert journal.group_offsets() == {"g": {("t", 0): 7, ("t", 1): 9}, "h": {("t", 0): 1}}


def test_the_journal_survives_reopening(tmp_path: Path) -> None:
    """Everything written is there after the file is closed and opened again."""
    path = tmp_path / "j.sqlite3"
    first = Journal(path)
    first.record_topic("a.consent", 1, {"cleanup.policy": "compact"})
    first.append([rec("a.consent", 0)])
    first.save_group_offsets({"g": {("a.consent", 0): 1}})
    first.close()
    again = Journal(path)
    assert again.topics() == {"a.consent": (1, {"cleanup.policy": "compact"})}
    assert journal_records(again) == {("a.consent", 0): [rec("a.consent", 0)]}
    assert again.group_offsets() == {"g": {("a.consent", 0): 1}}
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_time_retention_drops_old_records_but_keeps_the_last(journal: Journal) -> None:
    """Records older than retention.ms go; a partition's last record always stays, so its
    next offset survives a replay."""
    journal.record_topic("a.v1", 1, {"retention.ms": "1000"})
    journal.append([rec("a.v1", i, ts=i * 100) for i in range(10)])
    assert journal.trim(now_ms=1_500) == 5  # ts 0..400 are older than 500
    assert [r.offset for r in journal.records("a.v1", 0)] == [5, 6, 7, 8, 9]
    journal.trim(now_ms=10**9)
    assert [r.offset for r in journal.records("a.v1", 0)] == [9]
    assert journal.positions() == {("a.v1", 0): 10}


def test_retention_never_drops_an_ingest_record_no_processor_has_committed(
    journal: Journal,
) -> None:
    """An ingest record past retention stays until every group that reads the partition
    has committed past it (a domain whose worker is down keeps its backlog); with no
    group at all, nothing of an ingest partition is dropped."""
    journal.record_topic("a.ingest", 2, {"retention.ms": "1000", "retention.bytes": "10"})
    journal.append([rec("a.ingest", i, ts=i * 100) for i in range(10)])
    journal.append([rec("a.ingest", i, partition=1, ts=i * 100) for i in range(10)])
    journal.save_group_offsets({"fast": {("a.ingest", 0): 10}, "slow": {("a.ingest", 0): 4}})
    journal.trim(now_ms=10**9)
    assert [r.offset for r in journal.records("a.ingest", 0)] == [4, 5, 6, 7, 8, 9]
    assert len(list(journal.records("a.ingest", 1))) == 10  # no group has read it
    journal.save_group_offsets({"slow": {("a.ingest", 0): 10}})
    journal.trim(now_ms=10**9)
    assert [r.offset for r in journal.records("a.ingest", 0)] == [9]


def test_compaction_keeps_each_keys_latest(journal: Journal) -> None:
    """A compacted topic keeps the latest record of each key (tombstones too)."""
    journal.record_topic("a.consent", 1, {"cleanup.policy": "compact"})
    keys = [b"x", b"y", b"x", b"z", b"y", b"x"]
    journal.append([rec("a.consent", i, key=k) for i, k in enumerate(keys)])
    journal.trim(now_ms=10**12)
    assert [(r.offset, r.key) for r in journal.records("a.consent", 0)] == [
        (3, b"z"),
        (4, b"y"),
        (5, b"x"),
    ]


def test_erasure_requests_are_kept_for_ever() -> None:
    """The erasures topic has no retention; DLQs keep longer than ingest and product."""
    kafka = KafkaSettings()
    assert Retention.of(topic_configs("shop.erasures", kafka)) == Retention(False, -1, -1)
    dlq = Retention.of(topic_configs("shop.orders.dlq", kafka))
    ingest = Retention.of(topic_configs("shop.orders.ingest", kafka))
    assert dlq.ms == kafka.dlq_retention_ms > ingest.ms == kafka.retention_ms
    assert Retention.of(topic_configs("shop.consent", kafka)).compact


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=40),
    limit=st.integers(min_value=0, max_value=400),
)
def test_size_retention_keeps_the_newest_suffix_within_the_bound(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], limit: int
) -> None:
    """After a retention.bytes trim the partition holds a suffix of its records: the
    newest that fit in the bound (never fewer than the last one)."""
    journal = Journal(tmp_path_factory.mktemp("j") / "journal.sqlite3")
    journal.record_topic("a.v1", 1, {"retention.bytes": str(limit)})
    journal.append([rec("a.v1", i, key=None, size=n) for i, n in enumerate(sizes)])
    journal.trim(now_ms=0)
    kept = [r.offset for r in journal.records("a.v1", 0)]
    assert kept == list(range(len(sizes) - len(kept), len(sizes)))
    assert len(kept) >= 1
    if len(kept) > 1:
        assert sum(sizes[o] for o in kept) <= limit
    if kept[0] > 0:  # the next older record would not have fitted
        assert sum(sizes[o] for o in kept) + sizes[kept[0] - 1] > limit
    journal.close()
