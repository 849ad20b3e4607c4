"""The names in feature_repo.names are a storage format: rows already in the online and
offline stores, and Feast projects already applied, are found by them, so each keeps its
spelling (a rename needs a migration, not an edit here)."""

from __future__ import annotations

from feature_repo import names


def test_column_names_keep_their_stored_spelling() -> None:
    """Window and subject rows are written and read under these column names."""
    assert (
        names.SUBJECT_KEY,
        names.WINDOW_KEY,
        names.PARTITION_KEY,
        names.EVENT_TIMESTAMP,
        names.DISTINCT_SUBJECTS,
        names.EVENTS,
        names.WINDOW_PARTITIONS,
    ) == (
        "subject",
        "window_start",
        "partition",
        "event_timestamp",
        "distinct_subjects",
        "events",
        "partitions",
    )
    assert names.sum_feature("amount_cents") == "amount_cents_sum"
    assert names.sum_cap_feature("amount_cents") == "amount_cents_sum_cap"


def test_store_names_keep_their_stored_spelling() -> None:
    """A domain's Feast project and its products' views are looked up by these names."""
    assert names.feast_project("shop") == "privmesh_shop"
    assert names.subject_view_name("orders") == "orders_subject_window"
    assert names.window_view_name("orders") == "orders_window_stats"
    assert names.events_view_name("orders") == "orders_events"
