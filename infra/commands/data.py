"""``privmesh produce`` and ``privmesh tail``: put raw events in, read product or DLQ topics."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as clock_time
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from domains.contract import DataProduct, DomainContract, FieldType
from domains.registry import get_contract
from infra.console import err
from streams.pseudonymise import Tokeniser, normalise
from streams.settings import KafkaSettings
from streams.topics import ProductTopics
from streams.transform import TOO_LARGE, WRONG_TYPE, ProductTransform, Rejected

if TYPE_CHECKING:
    import polars as pl

    from infra.settings import GeneratorSettings
    from streams.generator import Person
    from streams.producing import RecordProducer

DomainArg = Annotated[str, typer.Option("--domain", "-d", help="Domain name.")]
ProductArg = Annotated[
    str | None, typer.Option("--product", "-p", help="Product (default: the domain's only one).")
]


def pick_product(contract: DomainContract, name: str | None) -> DataProduct:
    """``name``'s product, or the only product when ``name`` is None."""
    if name is None:
        if len(contract.products) == 1:
            return contract.products[0]
        known = ", ".join(p.name for p in contract.products)
        raise typer.BadParameter(
            f"domain {contract.domain!r} has several products; pick one of {known}"
        )
    found = contract.product(name)
    if found is None:
        known = ", ".join(p.name for p in contract.products)
        raise typer.BadParameter(
            f"domain {contract.domain!r} has no product {name!r} (known: {known})"
        )
    return found


def unit_key(product: DataProduct, line: bytes) -> bytes | None:
    """Partition key of a raw event: its normalised privacy-unit value, if it has one."""
    try:
        payload = json.loads(line)
    except (ValueError, RecursionError):  # not UTF-8 JSON, huge ints, deep nesting
        return None
    unit = product.field(product.privacy_unit)
    if not isinstance(payload, dict) or unit is None:
        return None
    value = payload.get(unit.name)
    if not isinstance(value, str):
        return None
    try:
        return normalise(value, unit.type).encode()
    except UnicodeEncodeError:  # a lone surrogate: sent unkeyed, the processor refuses it
        return None


class FileFormat(StrEnum):
    """Formats ``privmesh produce --file`` reads."""

    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


_SUFFIXES = {
    ".jsonl": FileFormat.JSONL,
    ".ndjson": FileFormat.JSONL,
    ".json": FileFormat.JSONL,
    ".csv": FileFormat.CSV,
    ".parquet": FileFormat.PARQUET,
    ".pq": FileFormat.PARQUET,
}
MAX_REPORTED = 20  # bad records listed one by one; the rest are counted by reason
DEFAULT_TAIL = 20  # records ``privmesh tail`` prints without --limit or --follow


class UnreadableFile(ValueError):
    """A ``--file`` that cannot be read in its format (the message names no value)."""


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One record of a ``--file``: where it is (``line 3``, ``row 2``), the raw event
    bytes as they would be sent, and why it is refused before validation (if it is)."""

    place: str
    raw: bytes
    refused: Rejected | None = None


def file_format(file: Path, chosen: FileFormat | None) -> FileFormat:
    """``chosen``, else the format named by ``file``'s suffix (JSON lines when unknown)."""
    return chosen or _SUFFIXES.get(file.suffix.lower(), FileFormat.JSONL)


@dataclass(frozen=True, slots=True)
class FileContents:
    """The records of a ``--file``, and its column names (None for JSON lines)."""

    records: list[FileRecord]
    columns: list[str] | None = None


def read_records(
    product: DataProduct, file: Path, kind: FileFormat, stdin: IO[bytes] | None = None
) -> FileContents:
    """Every record of ``file`` (``stdin`` when given) as raw JSON event bytes.

    JSON lines are kept byte for byte (a line longer than the product's event limit is
    cut at it and refused as too large, so a huge line costs no memory); CSV and Parquet
    rows become JSON objects, CSV cells typed by the contract. Raises UnreadableFile."""
    try:
        if kind is FileFormat.JSONL:
            handle = stdin or file.open("rb")
            try:
                return FileContents(list(_jsonl_records(handle, product.max_event_bytes)))
            finally:
                if stdin is None:
                    handle.close()
        source: Path | IO[bytes] = io.BytesIO(stdin.read()) if stdin is not None else file
        frame = _read_table(source, kind)
    except OSError as exc:
        raise UnreadableFile(f"cannot read {file}: {exc.strerror or exc}") from None
    if frame is None:
        return FileContents([], [])
    return FileContents(list(_table_records(product, frame)), list(frame.columns))


def column_problems(product: DataProduct, columns: list[str]) -> str | None:
    """What is wrong with a table's columns (required fields missing, columns the contract
    does not know: counted, names withheld as the processor does), or None."""
    known = {f.name for f in product.fields}
    missing = [f.name for f in product.fields if f.required and f.name not in columns]
    unknown = sum(1 for c in columns if c not in known)
    problems = []
    if missing:
        problems.append(f"no column for required field(s) {', '.join(missing)}")
    if unknown:
        problems.append(
            f"{unknown} column(s) not in the contract of {product.name!r} (names withheld: "
            "a name can be an identifier)"
        )
    return "; ".join(problems) or None


def _jsonl_records(handle: IO[bytes], limit: int) -> Iterator[FileRecord]:
    number = 0
    while line := handle.readline(limit + 2):
        number += 1
        if not line.endswith(b"\n") and len(line) > limit:
            while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip the rest of an oversized line without holding it
            refused = Rejected(TOO_LARGE, f"line is longer than the event limit of {limit} bytes")
            yield FileRecord(f"line {number}", line[: limit + 1], refused)
            continue
        text = line.rstrip(b"\r\n")
        if text.strip():
            yield FileRecord(f"line {number}", text)


def _read_table(source: Path | IO[bytes], kind: FileFormat) -> pl.DataFrame | None:
    """The CSV (every cell text) or Parquet table, None when empty; UnreadableFile."""
    import polars as pl

    try:
        if kind is FileFormat.CSV:
            return pl.read_csv(source, infer_schema=False)
        return pl.read_parquet(source)
    except pl.exceptions.NoDataError:
        return None
    except (pl.exceptions.PolarsError, OSError) as exc:
        # Polars' messages quote the offending text: only a known cause is shown.
        text = str(exc)
        cause = (
            "it is not UTF-8 text"
            if "utf-8" in text
            else "a row has more fields than the header"
            if "more fields" in text
            else f"it is malformed ({type(exc).__name__}; check quoting and the delimiter)"
        )
        raise UnreadableFile(f"cannot read the file as {kind.value}: {cause}") from None


def _table_records(product: DataProduct, frame: pl.DataFrame) -> Iterator[FileRecord]:
    types = {f.name: f.type for f in product.fields}
    for index, row in enumerate(frame.iter_rows(named=True), start=1):
        # CSV: row 1 is the first row after the header, line index + 1 of the file.
        event = {k: _cell(v, types.get(k)) for k, v in row.items() if v is not None}
        try:
            raw = json.dumps(event, ensure_ascii=False, default=_json_value).encode()
        except (TypeError, ValueError):
            refused = Rejected(WRONG_TYPE, "a column holds a value JSON cannot carry (binary?)")
            yield FileRecord(f"row {index}", b"", refused)
            continue
        yield FileRecord(f"row {index}", raw)


def _cell(value: object, kind: FieldType | None) -> object:
    """A CSV text cell as the JSON value its contract type expects (left as text when it
    does not parse: the validator then names the field and the problem)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if kind is FieldType.INT or (kind is FieldType.TIMESTAMP and text.isdigit()):
            return int(text)
        if kind is FieldType.FLOAT:
            number = float(text)
            return number if math.isfinite(number) else value
    except ValueError:
        return value
    return value


def _json_value(value: object) -> object:
    if isinstance(value, datetime | date | clock_time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def check_records(product: DataProduct, records: list[FileRecord]) -> list[tuple[str, Rejected]]:
    """The records the stream processor would dead-letter, with its reason codes: the
    processor's own ``ProductTransform`` checks them (tokens from a throwaway key, unused)."""
    checker = ProductTransform(product, Tokeniser(secrets.token_bytes(32), 0))
    bad: list[tuple[str, Rejected]] = []
    for record in records:
        outcome = record.refused or checker.apply(record.raw, time.time())
        if isinstance(outcome, Rejected):
            bad.append((record.place, outcome))
    return bad


def report_bad(bad: list[tuple[str, Rejected]], total: int) -> None:
    """Print each bad record (place, reason code, field: never a value), then a count."""
    for place, rejected in bad[:MAX_REPORTED]:
        err.print(f"{place}: {rejected.reason}: {rejected.detail}", markup=False)
    if len(bad) > MAX_REPORTED:
        err.print(f"... and {len(bad) - MAX_REPORTED} more bad record(s)")
    counts = Counter(r.reason for _, r in bad)
    summary = ", ".join(f"{reason} {n}" for reason, n in counts.most_common())
    err.print(f"{len(bad)} of {total} record(s) are invalid ({summary})", markup=False)


def produce(
    domain: DomainArg,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="JSON lines, CSV or Parquet of raw events ('-': stdin)."),
    ] = None,
    generate: Annotated[
        int | None, typer.Option(help="Send this many synthetic events instead of a file.", min=1)
    ] = None,
    product: ProductArg = None,
    rate: Annotated[float, typer.Option(help="Events per second (0: as fast as possible).")] = 0,
    bad_ratio: Annotated[float, typer.Option(help="Share of malformed synthetic events.")] = 0,
    file_kind: Annotated[
        FileFormat | None,
        typer.Option("--format", help="Format of --file (default: from its suffix; jsonl)."),
    ] = None,
    send_invalid: Annotated[
        bool,
        typer.Option(
            "--send-invalid", help="Send invalid records too (they go to the DLQ: for tests)."
        ),
    ] = False,
) -> None:
    """Send raw events to a product's ingest topic, keyed by their privacy unit.

    A file is checked first with the stream processor's own validation: invalid records
    are listed by line or row with the reason code the processor would give, and nothing
    is sent unless ``--send-invalid`` is given."""
    from infra.settings import GeneratorSettings
    from streams.generator import EventGenerator, make_people, paced
    from streams.producing import RawProducer

    if (file is None) == (generate is None):
        raise typer.BadParameter("give exactly one of --file or --generate")
    contract = get_contract(domain)
    chosen = pick_product(contract, product)
    topic = ProductTopics.of(domain, chosen).ingest
    if generate is not None:
        demo = GeneratorSettings()  # the same fake people as `privmesh generate`
        people = make_people(demo.people, demo.seed, demo.activity_sigma)
        gen = EventGenerator(domain, chosen, people, bad_ratio, demo.seed)
        events: Iterator[tuple[bytes | None, bytes]] = gen.stream(generate)
    else:
        assert file is not None
        events = iter(_checked_file(chosen, file, file_kind, send_invalid))
    consent = 0
    with RawProducer(KafkaSettings(), client_id=f"privmesh-produce-{domain}") as producer:
        if generate is not None:
            consent = send_demo_consent(producer, [domain], people, demo)
        for key, value in paced(rate, events):
            producer.send(topic, value, key=key)
    sent = f"sent {producer.sent - consent} event(s) to {topic}"
    if consent:
        sent += f" and {consent} consent record(s) to {domain}'s consent topic"
    err.print(sent)


def _checked_file(
    product: DataProduct, file: Path, kind: FileFormat | None, send_invalid: bool
) -> list[tuple[bytes | None, bytes]]:
    """The keyed records of ``file`` to send, after checking them all; exits non-zero,
    sending nothing, when the file is unreadable, empty or holds invalid records (unless
    ``send_invalid``)."""
    stdin = sys.stdin.buffer if str(file) == "-" else None
    if stdin is None and not file.is_file():
        raise typer.BadParameter(f"no such file: {file}")
    try:
        contents = read_records(product, file, file_format(file, kind), stdin)
    except UnreadableFile as exc:
        err.print(f"privmesh: {file}: {exc}; nothing sent", markup=False)
        raise typer.Exit(1) from None
    records = contents.records
    columns = column_problems(product, contents.columns) if contents.columns else None
    if columns:
        err.print(f"{file}: {columns}", markup=False)
    if not records:
        err.print(f"privmesh: {file} holds no records; nothing sent", markup=False)
        raise typer.Exit(1)
    bad = check_records(product, records)
    if bad:
        report_bad(bad, len(records))
        if not send_invalid:
            err.print("nothing sent: fix these records, or pass --send-invalid to send them")
            raise typer.Exit(1)
    return [(unit_key(product, r.raw), r.raw) for r in records if r.raw]


# How long the generator waits after sending consent records before events: running
# processors apply them within a fraction of a second (a grant read after its subject's
# event drops the event).
CONSENT_SETTLE_SECONDS = 1.0


def send_demo_consent(
    producer: RecordProducer, domains: list[str], people: list[Person], demo: GeneratorSettings
) -> int:
    """Synthetic consent decisions of ``people`` in ``domains`` (grants for opt-in purposes,
    a few withdrawals everywhere), sent and flushed; returns how many."""
    from streams.generator import consent_records
    from streams.topics import consent_topic

    sent = 0
    for index, domain in enumerate(domains):
        records = consent_records(
            get_contract(domain),
            people,
            demo.seed + 1000 + index,
            demo.consent_grant_share,
            demo.consent_withdraw_share,
        )
        for key, value in records:
            producer.send(consent_topic(domain), value, key=key)
        sent += len(records)
    if sent:
        producer.flush()
        time.sleep(CONSENT_SETTLE_SECONDS)
    return sent


def tail(
    domain: DomainArg,
    product: ProductArg = None,
    dlq: Annotated[bool, typer.Option("--dlq", help="Read the dead-letter topic.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Stop after this many records (default: 20; with --follow: none).", min=1
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep printing new records until Ctrl-C.")
    ] = False,
    latest: Annotated[bool, typer.Option("--latest", help="Only records from now on.")] = False,
    show_raw: Annotated[
        bool,
        typer.Option(
            "--show-raw", help="Print raw DLQ payloads (personal data: domain owners only)."
        ),
    ] = False,
) -> None:
    """Print records of a product topic (pseudonymised) or DLQ (reasons), as JSON lines.

    Without ``--follow`` it stops after ``--limit`` records (20) or once the topic is
    quiet for 2 s; with ``--follow`` it prints records as they arrive until Ctrl-C
    (exit status 0) or ``--limit``."""
    from streams.reading import read_records
    from streams.topics import DETAIL_HEADER, REASON_HEADER

    contract = get_contract(domain)
    chosen = pick_product(contract, product)
    topics = ProductTopics.of(domain, chosen)
    topic = topics.dlq if dlq else topics.product

    count = 0

    async def run() -> None:
        nonlocal count
        async for record in read_records(
            KafkaSettings().bootstrap,
            topic,
            from_beginning=not latest,
            limit=limit if limit is not None or follow else DEFAULT_TAIL,
            follow=follow,
        ):
            count += 1
            row: dict[str, object] = {"partition": record.partition, "offset": record.offset}
            if dlq:
                row["reason"] = record.header(REASON_HEADER)
                row["detail"] = record.header(DETAIL_HEADER)
                row["bytes"] = len(record.value or b"")
                if show_raw:
                    row["raw"] = (record.value or b"").decode(errors="replace")
            else:
                row["key"] = (record.key or b"").decode(errors="replace")
                row["event"] = _json_or_text(record.value)
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()  # a follower piped into another program sees each record

    with contextlib.suppress(KeyboardInterrupt):  # how --follow ends
        asyncio.run(run())
    err.print(f"{count} record(s) from {topic}")
    if count == 0 and not follow:
        err.print(
            "nothing to show: events reach the topic once a worker runs (`privmesh up`, or "
            f"`privmesh worker --domain {domain}`) and records are sent (`privmesh produce "
            f"--domain {domain} --file F`, or the generator of `privmesh up`); "
            "`--follow` waits for them"
        )


def _json_or_text(value: bytes | None) -> object:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return value.decode(errors="replace")
