"""The processor's health report is all the health page and /metrics read: a hand-made
report gives the page and the series it describes, with no processor behind it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from streams.health import (
    ConsentHealth,
    ErasureHealth,
    HealthReport,
    KeyVersion,
    ProductHealth,
)
from streams.metrics import metrics_registry, render


def report() -> HealthReport:
    orders = ProductHealth(
        name="orders",
        counters={"accepted": 7, "rejected": 2, "rejected.malformed_json": 2},
        late_events=0,
        capped_events=1,
        truncated_events=0,
        truncated_sums={"amount_cents": 0.0},
        late_events_since_start=3,
        capped_events_since_start=4,
        truncated_events_since_start=5,
        truncated_sums_since_start={"amount_cents": 120.0},
    )
    return HealthReport(
        domain="shop",
        assigned_partitions=["shop.orders.ingest/0"],
        ingest={"consumed": 9},
        features={},
        erasures=ErasureHealth(applied=1, malformed=0, rereads=0),
        consent=ConsentHealth(
            counters={"records": 3, "malformed": 1, "withdrawal_erasures": 2},
            ready=True,
            subjects={"sales_analytics": {"granted": 2, "withdrawn": 1}},
        ),
        products=[orders],
        key_versions=[KeyVersion(1, "retired"), KeyVersion(2, "active")],
    )


class Source:
    def health(self) -> HealthReport:
        return report()


def test_metrics_are_read_from_the_report_alone() -> None:
    """Every per-product and consent series takes its value from the report: counts since
    start for the tallies, applied = records - malformed, 1 for the active key only."""
    text = render(metrics_registry(Source(), started=1.0)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("privmesh_")
    }

    def at(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"domain": "shop", **labels}.items())))]

    assert at("privmesh_stream_consumed_events_total") == 9
    assert at("privmesh_stream_late_events_total", product="orders") == 3
    assert at("privmesh_stream_capped_events_total", product="orders") == 4
    assert at("privmesh_stream_truncated_events_total", product="orders") == 5
    assert at("privmesh_stream_events_total", product="orders", outcome="published") == 7
    assert at("privmesh_stream_subject_rows_pushed_total", product="orders") == 0  # absent
    dead = at("privmesh_stream_dead_letters_total", product="orders", reason="malformed_json")
    assert dead == 2
    cut = at("privmesh_stream_truncated_sum_total", product="orders", measure="amount_cents")
    assert cut == 120.0
    records = {k[1]: v for k, v in samples.items() if k[0] == "privmesh_consent_records_total"}
    assert records == {
        (("domain", "shop"), ("result", "applied")): 2,
        (("domain", "shop"), ("result", "malformed")): 1,
    }
    keys = {k[1]: v for k, v in samples.items() if k[0] == "privmesh_pseudonymisation_key_version"}
    assert keys == {
        (("domain", "shop"), ("state", "retired"), ("version", "1")): 0.0,
        (("domain", "shop"), ("state", "active"), ("version", "2")): 1.0,
    }


def test_health_page_shows_the_owned_partitions_tallies() -> None:
    """The page lists each product's counters with the owned partitions' tallies (not the
    counts since start), and the consent counters beside readiness and subjects."""
    page = report().page(uptime_seconds=12.5)
    assert page["products"] == {
        "orders": {
            "accepted": 7,
            "rejected": 2,
            "rejected.malformed_json": 2,
            "late_events": 0,
            "capped_events": 1,
            "truncated_events": 0,
            "truncated_sums": {"amount_cents": 0.0},
        }
    }
    assert page["consent"] == {
        "records": 3,
        "malformed": 1,
        "withdrawal_erasures": 2,
        "ready": True,
        "subjects": {"sales_analytics": {"granted": 2, "withdrawn": 1}},
    }
    assert (page["domain"], page["uptime_seconds"]) == ("shop", 12.5)
