"""``privmesh produce`` and ``privmesh tail``: put raw events in, read product or DLQ topics."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from domains.contract import DataProduct, DomainContract
from domains.registry import get_contract
from infra.console import console, err
from streams.pseudonymise import normalise
from streams.settings import KafkaSettings
from streams.topics import ProductTopics

if TYPE_CHECKING:
    from infra.settings import GeneratorSettings
    from streams.generator import Person
    from streams.producing import RawProducer

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


def _lines(stream: TextIO | None, path: Path) -> Iterator[bytes]:
    handle = stream or path.open("r", encoding="utf-8")
    try:
        for line in handle:
            if line.strip():
                yield line.rstrip("\n").encode()
    finally:
        if stream is None:
            handle.close()


def produce(
    domain: DomainArg,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="JSON lines, one raw event per line ('-': stdin)."),
    ] = None,
    generate: Annotated[
        int | None, typer.Option(help="Send this many synthetic events instead of a file.", min=1)
    ] = None,
    product: ProductArg = None,
    rate: Annotated[float, typer.Option(help="Events per second (0: as fast as possible).")] = 0,
    bad_ratio: Annotated[float, typer.Option(help="Share of malformed synthetic events.")] = 0,
) -> None:
    """Send raw events to a product's ingest topic, keyed by their privacy unit."""
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
        if str(file) != "-" and not file.is_file():
            raise typer.BadParameter(f"no such file: {file}")
        stream = sys.stdin if str(file) == "-" else None
        events = ((unit_key(chosen, line), line) for line in _lines(stream, file))
    with RawProducer(KafkaSettings(), client_id=f"privmesh-produce-{domain}") as producer:
        if generate is not None:
            send_demo_consent(producer, [domain], people, demo)
        for key, value in paced(rate, events):
            producer.send(topic, value, key=key)
    err.print(f"sent {producer.sent} event(s) to {topic}")


# How long the generator waits after sending consent records before events: running
# processors apply them within a fraction of a second (a grant read after its subject's
# event drops the event).
CONSENT_SETTLE_SECONDS = 1.0


def send_demo_consent(
    producer: RawProducer, domains: list[str], people: list[Person], demo: GeneratorSettings
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
    limit: Annotated[int, typer.Option(help="Stop after this many records.", min=1)] = 20,
    follow: Annotated[bool, typer.Option("--follow", help="Keep waiting for new records.")] = False,
    latest: Annotated[bool, typer.Option("--latest", help="Only records from now on.")] = False,
    show_raw: Annotated[
        bool,
        typer.Option(
            "--show-raw", help="Print raw DLQ payloads (personal data: domain owners only)."
        ),
    ] = False,
) -> None:
    """Print records of a product topic (pseudonymised) or DLQ (reasons), as JSON lines."""
    from streams.reading import read_records
    from streams.topics import DETAIL_HEADER, REASON_HEADER

    contract = get_contract(domain)
    chosen = pick_product(contract, product)
    topics = ProductTopics.of(domain, chosen)
    topic = topics.dlq if dlq else topics.product

    async def run() -> int:
        count = 0
        async for record in read_records(
            KafkaSettings().bootstrap,
            topic,
            from_beginning=not latest,
            limit=limit,
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
            console.print_json(json.dumps(row), indent=None)
        return count

    count = asyncio.run(run())
    err.print(f"{count} record(s) from {topic}")


def _json_or_text(value: bytes | None) -> object:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return value.decode(errors="replace")
