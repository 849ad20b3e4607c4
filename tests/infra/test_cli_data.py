"""``privmesh produce`` / ``privmesh tail`` against the real embedded broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import polars as pl
import pytest
import yaml

from domains.registry import get_contract
from infra.broker import ensure_topics
from infra.commands.data import FileFormat, check_records
from infra.commands.data import read_records as read_file
from streams.generator import EventGenerator, make_people
from streams.pseudonymise import Tokeniser
from streams.reading import read_records
from streams.transform import ProductTransform, Rejected
from tests.infra.test_cli import run_cli

ORDERS = get_contract("shop").products[0]


def env_for(broker: str) -> dict[str, str]:
    return {"PRIVMESH_KAFKA_BOOTSTRAP_SERVERS": broker}


def fresh_domain(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A copy of the shop contract under a fresh domain name (topics apart on the session
    broker) in a contracts folder, and the environment that loads it."""
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    domain = f"t{uuid.uuid4().hex[:8]}"
    raw = {**get_contract("shop").model_dump(mode="json"), "domain": domain}
    (contracts / f"{domain}.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return domain, {"PRIVMESH_CONTRACTS_DIR": str(contracts)}


def valid_orders(count: int) -> list[dict[str, object]]:
    """``count`` valid shop orders from the demo generator (events of now)."""
    gen = EventGenerator("shop", ORDERS, make_people(20, 3), 0.0, 3)
    return [json.loads(value) for _, value in gen.stream(count)]


def read_topic(broker: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` (stops once nothing arrives for 2 s)."""

    async def read() -> list[tuple[bytes | None, bytes | None]]:
        return [(r.key, r.value) async for r in read_records(broker, topic)]

    return asyncio.run(read())


@pytest.mark.integration
def test_produce_file_then_tail_ingest_keys(broker: str, tmp_path: Path) -> None:
    """Checked events from a file land on the ingest topic keyed by their normalised
    privacy unit; a file with a bad line sends nothing, unless --send-invalid."""
    domain, env = fresh_domain(tmp_path)
    env.update(env_for(broker))
    topic = f"{domain}.orders.ingest"
    ensure_topics(broker, [topic, f"{domain}.orders.v1", f"{domain}.orders.dlq"], 2, 1)
    order = {**valid_orders(1)[0], "customer_email": "Ada@Example.org"}
    line = json.dumps(order)
    events = tmp_path / "events.jsonl"
    events.write_text(line + "\n\n" + "not json at all\n", encoding="utf-8")
    refused = run_cli("produce", "--domain", domain, "--file", str(events), env=env)
    assert refused.returncode == 1, refused.stderr
    assert "line 3: malformed_json" in refused.stderr and "nothing sent" in refused.stderr
    assert "Traceback" not in refused.stderr
    result = run_cli(
        "produce", "--domain", domain, "--file", str(events), "--send-invalid", env=env
    )
    assert result.returncode == 0, result.stderr
    assert f"sent 2 event(s) to {topic}" in result.stderr
    records = read_topic(broker, topic)
    assert sorted(records, key=lambda r: r[0] or b"") == [
        (None, b"not json at all"),
        (b"ada@example.org", line.encode()),
    ]


@pytest.mark.integration
def test_produce_csv_and_parquet_send_typed_events(broker: str, tmp_path: Path) -> None:
    """CSV and Parquet rows are typed by the contract, checked, and sent as JSON events the
    processor accepts; the count names events only."""
    domain, env = fresh_domain(tmp_path)
    env.update(env_for(broker))
    topic = f"{domain}.orders.ingest"
    ensure_topics(broker, [topic], 2, 1)
    orders = valid_orders(6)
    frame = pl.DataFrame(orders[:3])
    frame.write_csv(tmp_path / "orders.csv")
    pl.DataFrame(orders[3:]).write_parquet(tmp_path / "orders.parquet")
    for name in ("orders.csv", "orders.parquet"):
        result = run_cli("produce", "-d", domain, "-f", str(tmp_path / name), env=env)
        assert result.returncode == 0, result.stderr
        assert f"sent 3 event(s) to {topic}" in result.stderr
    sent = [json.loads(value or b"") for _, value in read_topic(broker, topic)]
    assert len(sent) == 6
    checker = ProductTransform(ORDERS, Tokeniser(b"k" * 32, 1))
    assert all(not isinstance(checker.apply(json.dumps(e).encode()), Rejected) for e in sent)
    assert sorted(str(e["amount_cents"]) for e in sent) == sorted(
        str(o["amount_cents"]) for o in orders
    )


@pytest.mark.integration
def test_generate_counts_events_apart_from_consent(broker: str) -> None:
    """``--generate N`` reports N events and the consent records on their own."""
    result = run_cli("produce", "--domain", "shop", "--generate", "5", env=env_for(broker))
    assert result.returncode == 0, result.stderr
    assert "sent 5 event(s) to shop.orders.ingest" in result.stderr
    assert "consent record(s)" in result.stderr


@pytest.mark.integration
def test_tail_shows_dlq_reasons_without_raw_values(broker: str) -> None:
    from streams.producing import RawProducer
    from streams.settings import KafkaSettings
    from streams.topics import DETAIL_HEADER, REASON_HEADER

    ensure_topics(broker, ["web.page_views.dlq", "web.page_views.v1"], 2, 1)
    kafka = KafkaSettings(bootstrap_servers=broker)
    with RawProducer(kafka, client_id="test") as producer:
        producer.send(
            "web.page_views.dlq",
            b'{"visitor_id": "ck_secret_cookie"}',
            headers=[(REASON_HEADER, b"missing_field"), (DETAIL_HEADER, b"required field x")],
        )
    result = run_cli("tail", "--domain", "web", "--dlq", "--limit", "1", env=env_for(broker))
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["reason"] == "missing_field" and row["detail"] == "required field x"
    assert "ck_secret_cookie" not in result.stdout
    raw = run_cli(
        "tail", "--domain", "web", "--dlq", "--limit", "1", "--show-raw", env=env_for(broker)
    )
    assert "ck_secret_cookie" in json.loads(raw.stdout)["raw"]


def test_produce_needs_exactly_one_source() -> None:
    result = run_cli("produce", "--domain", "shop")
    assert result.returncode == 2
    assert "exactly one of --file or --generate" in result.stderr


def test_produce_unknown_domain() -> None:
    result = run_cli("produce", "--domain", "nope", "--generate", "1")
    assert result.returncode == 2
    assert "unknown domain 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_tail_several_products_needs_a_choice(tmp_path: Path) -> None:
    result = run_cli("tail", "--domain", "shop", "--product", "refunds")
    assert result.returncode == 2
    assert "no product 'refunds'" in result.stderr


# ------------------------------------------------------------ checks before sending
NO_BROKER = {"PRIVMESH_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # nothing listens there


def check(tmp_path: Path, name: str, content: bytes) -> list[tuple[str, str]]:
    """(place, reason) of each bad record of a file ``name`` holding ``content``."""
    path = tmp_path / name
    path.write_bytes(content)
    kind = FileFormat(name.rsplit(".", 1)[1]) if "." in name else FileFormat.JSONL
    records = read_file(ORDERS, path, kind).records
    return [(place, rejected.reason) for place, rejected in check_records(ORDERS, records)]


def test_bad_jsonl_lines_are_named_with_processor_codes(tmp_path: Path) -> None:
    """Each bad line is reported by its line number with the processor's reason code."""
    good = valid_orders(2)
    lines = [
        json.dumps(good[0]),
        "",
        "{not json",
        json.dumps({**good[1], "amount_cents": 10**9}),
        json.dumps({**good[1], "amount_cents": "12"}),
        json.dumps({k: v for k, v in good[1].items() if k != "occurred_at"}),
        json.dumps({**good[1], "secret_extra": 1}),
        json.dumps({**good[1], "occurred_at": "1999-01-01T00:00:00+00:00"}),
        "[1, 2]",
        json.dumps(good[1]),
    ]
    content = ("\n".join(lines) + "\n").encode()
    assert check(tmp_path, "o.jsonl", content) == [
        ("line 3", "malformed_json"),
        ("line 4", "out_of_bounds"),
        ("line 5", "wrong_type"),
        ("line 6", "missing_field"),
        ("line 7", "unknown_field"),
        ("line 8", "out_of_window"),
        ("line 9", "not_an_object"),
    ]


def test_hostile_jsonl(tmp_path: Path) -> None:
    """Binary garbage, NUL, lone surrogates and a huge line are refused records, not errors."""
    order = valid_orders(1)[0]
    content = b"\n".join(
        [
            bytes(range(11, 256)) + b"\x00\x01",
            json.dumps({**order, "order_id": "ord-a\x00b"}).encode(),
            json.dumps({**order, "order_id": "ord-\ud800"}).encode(),
            b"{" + b" " * 10_000_000 + b"}",
            json.dumps(order).encode(),
        ]
    )
    found = check(tmp_path, "h.jsonl", content)
    assert [place for place, _ in found] == ["line 1", "line 2", "line 3", "line 4"]
    assert found[3] == ("line 4", "too_large")
    assert [reason for _, reason in found[:3]] == [
        "malformed_json",
        "invalid_value",
        "invalid_value",
    ]


def test_csv_rows_are_typed_and_checked(tmp_path: Path) -> None:
    """CSV cells get the contract's types; a bad row is named by its row number."""
    orders = valid_orders(3)
    orders[1]["amount_cents"] = "lots"
    pl.DataFrame([{k: str(v) for k, v in o.items()} for o in orders]).write_csv(tmp_path / "o.csv")
    records = read_file(ORDERS, tmp_path / "o.csv", FileFormat.CSV).records
    assert json.loads(records[0].raw)["amount_cents"] == orders[0]["amount_cents"]
    bad = check_records(ORDERS, records)
    assert [(p, r.reason) for p, r in bad] == [("row 2", "wrong_type")]


def test_csv_with_wrong_columns(tmp_path: Path) -> None:
    """A CSV whose columns are not the contract's: every row is refused, the header check
    names the missing required fields and counts the unknown columns (names withheld)."""
    found = check(tmp_path, "w.csv", b"customer_phone,order_id\n+44 20 7946 0000,ord-1\n")
    assert found == [("row 1", "unknown_field")]
    result = run_cli("produce", "-d", "shop", "-f", str(tmp_path / "w.csv"), env=NO_BROKER)
    assert result.returncode == 1
    assert "no column for required field(s) customer_name, customer_email" in result.stderr
    assert "1 column(s) not in the contract" in result.stderr
    assert "customer_phone" not in result.stderr and "7946" not in result.stderr


def test_cli_reports_and_sends_nothing(tmp_path: Path) -> None:
    """The command lists bad records (field names and codes, never values), exits 1 and
    never contacts the broker; hostile files give one clear line, no traceback."""
    secret = "ada.secret@example.org"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**valid_orders(1)[0], "order_id": secret}) + "\n")
    result = run_cli("produce", "-d", "shop", "-f", str(bad), env=NO_BROKER)
    assert result.returncode == 1, result.stderr
    assert "line 1: personal_value: field 'order_id'" in result.stderr
    assert secret not in result.stderr + result.stdout
    assert "nothing sent" in result.stderr and "Traceback" not in result.stderr
    hostile = {
        "empty.jsonl": (b"", "holds no records"),
        "binary.csv": (bytes(range(256)) * 50, "not UTF-8"),
        "ragged.csv": (b"order_id,amount_cents\nx,1,2\n", "more fields"),
        "garbage.parquet": (b"PAR1 not really", "cannot read the file as parquet"),
    }
    for name, (content, needle) in hostile.items():
        path = tmp_path / name
        path.write_bytes(content)
        result = run_cli("produce", "-d", "shop", "-f", str(path), env=NO_BROKER)
        assert result.returncode == 1, (name, result.stderr)
        assert needle in result.stderr and "Traceback" not in result.stderr, name
    forced = run_cli("produce", "-d", "shop", "-f", str(bad), "--format", "csv", env=NO_BROKER)
    assert forced.returncode == 1 and "Traceback" not in forced.stderr
