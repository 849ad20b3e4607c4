"""``privmesh consent grant|withdraw|load``: publish consent decisions to a domain.

The records go to ``<domain>.consent`` (inside the domain's ingestion boundary); the
domain's processors apply them within a fraction of a second and, on a withdrawal,
erase the subject's features for the purpose. A record is validated here exactly as
the processors validate it, so a bad one is refused before it is sent.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from domains.registry import get_contract
from infra.console import console, err
from infra.errors import InvalidCliValue
from infra.inputs import one_of, subject_option

app = typer.Typer(
    help="Consent decisions per subject and purpose (opt-in grants, withdrawals).",
    no_args_is_help=True,
)
DomainOpt = Annotated[str, typer.Option("--domain", "-d", help="Domain name.")]
SubjectOpt = Annotated[
    str,
    typer.Option(
        "--subject", "-s",
        help="The subject's raw privacy-unit value (e.g. the e-mail or cookie id).",
    ),
]  # fmt: skip
PurposeOpt = Annotated[
    str | None,
    typer.Option(help="The purpose (default: the domain's only purpose)."),
]


def _publish(domain: str, records: list[bytes]) -> int:
    """Validate ``records`` (raw JSON values) for ``domain`` and send them; all or none."""
    from streams.consent import MalformedConsent, consent_key, parse_consent
    from streams.errors import ConsentRefused
    from streams.producing import RawProducer
    from streams.settings import KafkaSettings
    from streams.topics import consent_topic

    contract = get_contract(domain)
    purposes = frozenset(p.purpose for p in contract.products)
    parsed = []
    for line, raw in enumerate(records, start=1):
        try:
            parsed.append((parse_consent(raw, purposes), raw))
        except MalformedConsent as exc:
            raise ConsentRefused(
                f"record {line} is refused ({exc.reason}): {exc.detail}; nothing was sent"
            ) from None
    with RawProducer(KafkaSettings(), client_id=f"privmesh-consent-{domain}") as producer:
        for record, raw in parsed:
            producer.send(
                consent_topic(domain), raw, key=consent_key(record.purpose, record.subject)
            )
    return len(parsed)


def _decide(domain: str, subject: str, purpose: str | None, status: str) -> None:
    subject_option("--subject", subject)  # before the Kafka client loads
    contract = get_contract(domain)
    purposes = sorted({p.purpose for p in contract.products})
    if purpose is None:
        if len(purposes) != 1:
            raise InvalidCliValue(f"give --purpose (one of {', '.join(purposes)})")
        purpose = purposes[0]
    one_of("--purpose", purpose, purposes)
    from streams.consent import ConsentStatus, consent_value

    raw = consent_value(subject, purpose, ConsentStatus(status), time.time())
    _publish(domain, [raw])
    console.print(f"{status} consent for {purpose} in {domain} (one subject) sent")


@app.command("grant")
def grant(domain: DomainOpt, subject: SubjectOpt, purpose: PurposeOpt = None) -> None:
    """Record a subject's consent to a purpose (needed by opt-in products)."""
    _decide(domain, subject, purpose, "granted")


@app.command("withdraw")
def withdraw(domain: DomainOpt, subject: SubjectOpt, purpose: PurposeOpt = None) -> None:
    """Record a withdrawal (or objection): events dropped, features for the purpose erased."""
    _decide(domain, subject, purpose, "withdrawn")


@app.command("load")
def load(
    domain: DomainOpt,
    file: Annotated[Path, typer.Option("--file", "-f", help="JSON lines ('-': stdin).")],
) -> None:
    """Send consent records from a file, one JSON object per line; refused whole if one is bad."""
    if str(file) != "-" and not file.is_file():
        raise typer.BadParameter(f"no such file: {file}")
    text = sys.stdin.read() if str(file) == "-" else file.read_text("utf-8")
    lines = [line.encode() for line in text.splitlines() if line.strip()]
    sent = _publish(domain, lines)
    err.print(f"sent {sent} consent record(s) to {domain}")
