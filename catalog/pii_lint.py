"""PII lint at catalog level: personal-looking fields tagged non-personal, and direct
identifiers that reach a product topic in clear.

:func:`classify` decides whether a field is personal from its name and sample values:
the name is split into words (snake, kebab and camel case, glued compounds such as
``emailaddress`` or ``zipcode``), a person-identifying word (``email``, ``phone``, ``ssn``,
``birth``...) or a subject word followed by an identifier (``customer_id``,
``user_name``, ``device_id``) makes it personal unless the last word says the field is
about something else (``email_template``, ``user_count``, ``phone_model``); sample
values that look like e-mail addresses, phone numbers, IPs, IBANs, Luhn-valid card
numbers, SSNs, MAC addresses, device UUIDs, coordinates, birth dates or personal names
make it personal whatever its name. ``bench.catalog`` measures it against OpenMetadata's
``ColumnNameScanner`` on a labelled set.

:func:`scan_product_topics` reads recent events of every shared product topic from the
broker and reports fields the contract does not publish, direct identifiers that are not
tokens, and values that look personal in fields the contract calls non-personal. A
finding names the topic, the field and the kind of value, never the value itself.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

from catalog.graph import Catalog
from catalog.model import FieldEntity, TopicEntity
from domains.contract import PrivacyTag, Protection
from domains.lint import looks_personal as _contract_value_kind
from domains.pii_patterns import embedded_kind

Severity = Literal["error", "warning"]

# Words that identify or describe a person on their own.
PERSONAL_WORDS = frozenset(
    {
        "email", "mail", "phone", "mobile", "msisdn", "telephone", "fax", "ssn", "passport",
        "iban", "ip", "ipv4", "ipv6", "addr", "address", "street", "postcode", "postal", "zip",
        "city", "country", "county", "state", "region", "latitude", "longitude", "lat", "lon",
        "gps", "geo", "birth", "birthday", "dob", "age", "gender", "sex", "ethnicity", "race",
        "religion", "nationality", "marital", "salary", "income", "diagnosis", "medical",
        "prescription", "blood", "health", "password", "surname", "firstname", "lastname",
        "fullname", "nickname", "maiden", "username", "login", "handle", "imei", "vin", "mac",
        "cookie", "fingerprint", "forwarded", "cvv", "pan", "card", "credit", "bank", "tax",
        "national", "license", "licence", "plate", "routing", "social", "agent",
    }
)  # fmt: skip
# Words naming a person (or their device or session) that an identifier word can follow.
SUBJECT_WORDS = frozenset(
    {
        "customer", "user", "member", "employee", "person", "patient", "subscriber", "account",
        "visitor", "device", "session", "advertising", "client", "contact", "owner", "buyer",
        "guest", "student", "citizen", "driver", "remote",
    }
)  # fmt: skip
IDENTIFIER_WORDS = frozenset(
    {
        "id", "name", "number", "no", "num", "token", "key", "email", "mail", "phone", "ip",
        "uuid", "guid", "ref", "code", "handle", "login", "agent", "address", "addr",
    }
)  # fmt: skip
# Name parts that on their own say "a person's name".
NAME_QUALIFIERS = frozenset(
    {"first", "last", "full", "display", "maiden", "nick", "given", "family", "middle"}
)
# A field whose name ends in one of these is about a thing, a count or a setting.
NEUTRAL_HEADS = frozenset(
    {
        "template", "server", "campaign", "verified", "version", "model", "os", "type", "rate",
        "file", "count", "total", "brand", "format", "enabled", "flag", "size", "length",
        "status", "provider", "domain", "opt", "optin", "consent", "hash_algorithm",
    }
)  # fmt: skip
FREE_TEXT_WORDS = frozenset(
    {"comment", "comments", "notes", "note", "message", "remarks", "body", "text"}
)
_GLUED = sorted(
    PERSONAL_WORDS | SUBJECT_WORDS | IDENTIFIER_WORDS | NAME_QUALIFIERS
    | {"date", "of", "code", "address", "line", "name", "user"},
    key=len,
    reverse=True,
)  # fmt: skip

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_COORDS = re.compile(r"^-?\d{1,3}\.\d{3,},\s*-?\d{1,3}\.\d{3,}$")
_PERSON = re.compile(r"\b[A-Z][a-z]+ [A-Z][a-z]+\b")
_DATE = re.compile(r"^((19|20)\d\d)-[01]\d-[0-3]\d$")
_PHONE_SEPARATED = re.compile(r"^\+?[\d\s().-]{9,20}$")
_TOKEN = re.compile(r"^k\d+\.[a-z2-7]{26}$")
_EMBEDDED = (
    ("an e-mail address", re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")),
    ("a phone number", re.compile(r"\+\d[\d\s().-]{8,}\d")),
    ("a personal name", re.compile(r"\bmy name is\b", re.I)),
)


@dataclass(frozen=True)
class Verdict:
    """Whether a field looks personal, and why (a name word, or a kind of value)."""

    personal: bool
    reason: str


def name_words(name: str) -> list[str]:
    """``name`` split into lower-case words: snake, kebab and camel case, and glued
    compounds of known words (``emailaddress`` -> email, address; ``zipcode`` -> zip, code)."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", _CAMEL.sub("_", name)) if p]
    words: list[str] = []
    for part in (p.lower() for p in parts):
        words.extend(_unglue(part))
    return words


def _unglue(part: str) -> list[str]:
    if part in _GLUED or len(part) <= 3:
        return [part]
    for word in _GLUED:
        if part.startswith(word) and len(word) >= 3:
            rest = part[len(word) :]
            tail = _unglue(rest)
            if all(t in _GLUED or t.isdigit() for t in tail):
                return [word, *tail]
    return [part]


def classify_name(name: str) -> Verdict:  # noqa: PLR0911 (a decision list: first match wins)
    """The verdict of the field name alone."""
    words = name_words(name)
    if not words:
        return Verdict(False, "empty name")
    if words[-1] in NEUTRAL_HEADS or (len(words) > 1 and words[-1] in {"count", "total"}):
        return Verdict(False, f"about a {words[-1]}, not a person")
    if words in (["name"], ["names"]):
        return Verdict(True, "a name")
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else None
        if word in NAME_QUALIFIERS and following == "name":
            return Verdict(True, f"a person's {word} name")
        identifies = following in IDENTIFIER_WORDS or (
            following is None and word in {"customer", "user", "patient", "employee"}
        )
        if word in SUBJECT_WORDS and identifies:
            return Verdict(True, f"identifies a {word}")
        if word in PERSONAL_WORDS:
            if word == "card" and following not in (None, "number", "no", "last4", "holder"):
                continue
            return Verdict(True, f"name word {word!r}")
        if word in FREE_TEXT_WORDS and index == len(words) - 1:
            return Verdict(True, "free text (carries identifiers)")
    if words[-1] in {"free", "text"} or words[:2] == ["free", "text"]:
        return Verdict(True, "free text (carries identifiers)")
    return Verdict(False, "no personal word")


def value_kind(value: str | int | float, now: datetime | None = None) -> str | None:
    """What kind of personal value ``value`` looks like, or None."""
    text = str(value).strip()
    if not text:
        return None
    birth = _DATE.match(text)
    if birth:  # a calendar date long enough ago to be a birth date
        year = int(birth.group(1))
        return "a birth date" if year <= (now or datetime.now(UTC)).year - 12 else None
    kind = _contract_value_kind(text)
    if kind == "a phone number" and not _phone_separated(text):
        kind = None
    if kind:
        return kind
    patterns = [
        ("a social security number", _SSN),
        ("a MAC address", _MAC),
        ("a device or account UUID", _UUID),
        ("coordinates", _COORDS),
    ]
    patterns += [(f"text holding {label}", p) for label, p in _EMBEDDED]
    for label, pattern in patterns:
        if pattern.search(text):
            return label
    embedded = embedded_kind(text)  # the stream processor's detectors (cards, IBANs, ...)
    if embedded:
        return f"text holding {embedded}"
    return "a personal name" if _PERSON.fullmatch(text) else None


def _phone_separated(text: str) -> bool:
    """Phone numbers are written with a + or separators; bare digit runs are ids or
    epoch seconds."""
    return bool(_PHONE_SEPARATED.match(text)) and (
        text.startswith(("+", "0")) or any(c in text for c in " ().-")
    )


def classify(name: str, samples: Sequence[str | int | float] = ()) -> Verdict:
    """Whether a field with ``name`` and ``samples`` holds personal data."""
    for sample in samples:
        kind = value_kind(sample)
        if kind:
            return Verdict(True, f"a sample value looks like {kind}")
    return classify_name(name)


# ---------------------------------------------------------------------- catalog lint
@dataclass(frozen=True)
class Finding:
    """One lint finding: stable code, the entity, and what to do."""

    severity: Severity
    code: str
    entity: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.entity}: {self.severity} [{self.code}] {self.message}"


def lint_catalog(catalog: Catalog) -> list[Finding]:
    """Fields tagged non-personal that look personal (warnings, a human decides), and
    shared topics carrying a direct identifier that is not a token (errors)."""
    from domains.registry import load_contracts

    contracts = load_contracts()
    findings: list[Finding] = []
    for entity in catalog.of_kind("field"):
        assert isinstance(entity, FieldEntity)
        if entity.tag is not PrivacyTag.NON_PERSONAL:
            continue
        domain, product_name, name = entity.id.split(":", 1)[1].split(".", 2)
        product = contracts[domain].product(product_name)
        spec = product.field(name) if product else None
        samples = list(spec.examples) if spec else []
        verdict = classify(name, samples)
        if verdict.personal and not (
            spec and spec.allowed_values and not samples_personal(samples)
        ):
            findings.append(
                Finding(
                    "warning",
                    "looks_personal_tagged_non_personal",
                    entity.id,
                    f"tagged non_personal but {verdict.reason}; tag it (and protect it), or "
                    "declare its public allowed_values if it is a public category",
                )
            )
    for topic in catalog.of_kind("topic"):
        assert isinstance(topic, TopicEntity)
        if topic.boundary != "shared":
            continue
        for column in topic.columns:
            if (
                column.tag == PrivacyTag.DIRECT_IDENTIFIER
                and column.protection is not Protection.TOKENISE
            ):
                findings.append(
                    Finding(
                        "error",
                        "direct_identifier_in_clear",
                        f"{topic.id}#{column.name}",
                        "a direct identifier reaches a shared product topic untokenised; "
                        "set its protection to tokenise or drop",
                    )
                )
    return findings


def samples_personal(samples: Iterable[str | int | float]) -> bool:
    """True when any sample value looks personal."""
    return any(value_kind(s) for s in samples)


def scan_product_topics(limit: int, bootstrap: str | None = None) -> list[Finding]:
    """Read up to ``limit`` events of each shared product topic and report what reached
    it that the contract does not allow (see the module docstring)."""
    from domains.registry import load_contracts
    from streams.errors import BrokerUnavailable
    from streams.settings import KafkaSettings
    from streams.topics import ProductTopics

    address = bootstrap or KafkaSettings().bootstrap
    try:
        existing = asyncio.run(_topics(address))
    except BrokerUnavailable as exc:
        return [
            Finding(
                "warning", "topics_not_scanned", "broker",
                f"product topics not scanned: {exc}; start the stack (privmesh up) or pass "
                "--sample 0",
            )
        ]  # fmt: skip
    findings: list[Finding] = []
    for contract in load_contracts().values():
        for product in contract.products:
            topic = ProductTopics.of(contract.domain, product).product
            if topic not in existing:
                findings.append(
                    Finding(
                        "warning", "topic_not_scanned", f"topic:{topic}",
                        "the broker has no such topic yet (the product was never started)",
                    )
                )  # fmt: skip
                continue
            events = asyncio.run(_read(address, topic, limit))
            findings.extend(check_events(contract.domain, product, topic, events))
    return findings


async def _topics(bootstrap: str) -> set[str]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from streams.errors import BrokerUnavailable
    from streams.kafka_clients import aiokafka_config

    consumer = AIOKafkaConsumer(**aiokafka_config(bootstrap=bootstrap), client_id="privmesh-lint")
    try:
        await consumer.start()
        return set(await consumer.topics())
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    finally:
        await consumer.stop()


async def _read(bootstrap: str, topic: str, limit: int) -> list[dict[str, object]]:
    from streams.reading import read_records

    out: list[dict[str, object]] = []
    async for record in read_records(bootstrap, topic, limit=limit, idle_timeout=1.0):
        if record.value is None:
            continue
        try:
            body = json.loads(record.value)
        except ValueError:
            body = {"<unparseable>": "x"}
        out.append(body if isinstance(body, dict) else {"<not an object>": "x"})
    return out


def check_events(
    domain: str, product: object, topic: str, events: Iterable[dict[str, object]]
) -> list[Finding]:
    """Findings for product events ``events`` of ``product`` read from ``topic``."""
    from catalog.protection import published_name
    from domains.contract import DataProduct

    assert isinstance(product, DataProduct)
    allowed = {published_name(f): f for f in product.fields if published_name(f)}
    seen: set[tuple[str, str]] = set()
    findings: list[Finding] = []

    def report(code: str, column: str, message: str, severity: Severity = "error") -> None:
        if (code, column) not in seen:
            seen.add((code, column))
            findings.append(Finding(severity, code, f"topic:{topic}#{column}", message))

    for event in events:
        for key, value in event.items():
            spec = allowed.get(key)
            if spec is None:
                report(
                    "unexpected_field_in_product_topic", key,
                    "the contract publishes no such field; a processor or producer leaks it",
                )  # fmt: skip
                continue
            if value is None:
                continue
            if spec.protection is Protection.TOKENISE:
                if not _TOKEN.match(str(value)):
                    report(
                        "direct_identifier_in_clear", key,
                        f"{spec.name} is tokenised by contract but a value is not a token",
                    )  # fmt: skip
                continue
            if spec.tag is PrivacyTag.NON_PERSONAL and spec.protection is Protection.KEEP:
                kind = value_kind(value) if isinstance(value, str) else None
                if kind and not spec.allowed_values:
                    report(
                        "personal_value_in_product_topic", key,
                        f"a value of this non-personal field looks like {kind}",
                    )  # fmt: skip
    del domain
    return findings
