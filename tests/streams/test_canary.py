"""Canary: no raw identifier of 10,000 people leaves any domain's ingestion boundary."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from domains.contract import DataProduct, DomainContract, PrivacyTag, Protection
from domains.registry import get_contract
from streams.generator import BUILDERS, Person, consent_records, make_people
from streams.producing import RawProducer
from streams.pseudonymise import normalise
from streams.reading import Record
from streams.settings import KafkaSettings
from streams.topics import ProductTopics, consent_topic
from tests.conftest import FreshBroker
from tests.streams.test_processor_live import (
    create_topics,
    read_topics,
    running_workers,
    stop_all,
    wait_for_consent,
    wait_for_records,
)

DOMAINS = ["shop", "web", "support"]
PEOPLE, SEED = 10_000, 41
# One-hour windows (as bench/streams.py): 30,000 events produced in a burst on two cores
# arrive seconds after their event time, which 10 s windows with a 2 s grace count as late
# (not aggregated, so no features and no profiles to check).
WORKER_SETTINGS = {"PRIVMESH_STREAMS_WINDOW_SECONDS": "3600"}
IDENTIFYING = {PrivacyTag.DIRECT_IDENTIFIER, PrivacyTag.QUASI_IDENTIFIER}
# Digits and separators only (IPs, ISO dates, phone numbers): matched between non-digits, so
# a raw IP is not found inside a longer number, nor in its own /24 prefix ("a.b.c.0/24").
NUMERIC = re.compile(r"[0-9()+.x -]+")


def product_of(contract: DomainContract) -> DataProduct:
    [product] = contract.products
    return product


def raw_events(contract: DomainContract, people: list[Person]) -> list[dict[str, object]]:
    """One valid raw event per person for ``contract``'s product, timed now (the identifying
    values depend on the person only)."""
    product = product_of(contract)
    build = BUILDERS[(contract.domain, product.name)]
    rng = random.Random(SEED)
    at = datetime.now(UTC).isoformat()
    return [build(person, rng, seq, at) for seq, person in enumerate(people)]


def identifiers(contract: DomainContract, events: list[dict[str, object]]) -> set[str]:
    """The raw values of every identifying field the contract does not publish as is.

    Direct and quasi identifiers that are tokenised, generalised or dropped, except prefix
    generalisation (5-digit ZIP codes collide with numbers; their 3-character prefix is
    checked on the product events instead).
    """
    product = product_of(contract)
    fields = [
        f
        for f in product.fields
        if f.tag in IDENTIFYING
        and f.protection is not Protection.KEEP
        and not (f.generalise is not None and f.generalise.method == "prefix")
    ]
    found: set[str] = set()
    for event in events:
        for spec in fields:
            value = event.get(spec.name)
            if value is None:
                continue
            text = normalise(str(value), spec.type).lower()
            found.add(text)
            if text.startswith("ck_"):  # a cookie's random part identifies it alone
                found.add(text[3:])
            if NUMERIC.fullmatch(text) and "x" in text:  # a phone number without extension
                found.add(text.split("x")[0])
    return found


Trie = dict[str, "Trie"]


def trie_pattern(words: Iterable[str]) -> str:
    """One regular expression matching any of ``words``, as a trie (fast on many words)."""
    trie: Trie = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def walk(node: Trie) -> str:
        branches = [re.escape(char) + walk(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return walk(trie)


def matcher(secrets: set[str]) -> re.Pattern[str]:
    """Finds any of ``secrets`` in lower-cased text; numeric ones between non-digits."""
    numeric = {s for s in secrets if NUMERIC.fullmatch(s)}
    text = secrets - numeric
    return re.compile(
        f"(?:{trie_pattern(text)})|(?<![0-9.])(?:{trie_pattern(numeric)})(?![0-9]|/[0-9]|\\.[0-9])"
    )


def build_matcher(
    contracts: list[DomainContract], people: list[Person]
) -> tuple[set[str], re.Pattern[str]]:
    """The raw identifiers of ``people`` under ``contracts``, and their matcher."""
    secrets: set[str] = set()
    for contract in contracts:
        secrets |= identifiers(contract, raw_events(contract, people))
    return secrets, matcher(secrets)


def record_text(records: list[Record]) -> str:
    """Keys, values and headers of ``records`` as one lower-cased text."""
    parts: list[bytes] = []
    for r in records:
        parts += [r.key or b"", r.value or b""]
        parts += [k.encode() + b"=" + v for k, v in r.headers]
    return b"\n".join(parts).decode(errors="replace").lower()


def file_texts(path: Path) -> list[str]:
    """The raw text of a file, and for parquet files their decoded rows too."""
    texts = [path.read_bytes().decode(errors="replace").lower()]
    if path.suffix == ".parquet":
        texts.append(pd.read_parquet(path).to_csv(index=False).lower())
    return texts


@pytest.mark.integration
def test_no_raw_identifier_leaves_ingestion(
    fresh_broker: FreshBroker, isolated_env: Path, tmp_path: Path
) -> None:
    """With 10,000 people sending one event to each of shop, web and support, no e-mail,
    name, phone, cookie, exact IP, birth date or user agent appears in a product or profiles
    record, in any file of the data directory, or in the workers' logs; the generalised values
    and tokens do."""
    began = time.monotonic()
    bootstrap = fresh_broker.bootstrap
    contracts = [get_contract(d) for d in DOMAINS]
    topics = {c.domain: ProductTopics.of(c.domain, product_of(c)) for c in contracts}
    create_topics(bootstrap, contracts)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)

    with (
        running_workers(DOMAINS, bootstrap, isolated_env, log_dir, WORKER_SETTINGS) as workers,
        ThreadPoolExecutor(1) as pool,
    ):
        people = make_people(PEOPLE, SEED)  # while the workers start
        phase("people")
        # The identifiers do not depend on the events' time: the matcher is built meanwhile.
        find_later = pool.submit(build_matcher, contracts, people)
        for worker in workers.values():
            # Before producing: events older than a partition's assignment would be late.
            worker.wait_ready(timeout=90)
        phase("workers ready")
        with RawProducer(KafkaSettings(bootstrap_servers=bootstrap), "test-canary") as producer:
            # Web page views are opt-in: every visitor grants consent first.
            web = get_contract("web")
            for key, value in consent_records(web, people, SEED, 1.0, 0.0):
                producer.send(consent_topic("web"), value, key=key)
            producer.flush()
            wait_for_consent(workers["web"], "product_analytics", granted=PEOPLE)
            phase("consent applied")
            for contract in contracts:
                product = product_of(contract)
                unit = product.field(product.privacy_unit)
                assert unit is not None
                for event in raw_events(contract, people):
                    key = normalise(str(event[unit.name]), unit.type).encode()
                    value = json.dumps(event).encode()
                    producer.send(topics[contract.domain].ingest, value, key=key)
        phase("produced")
        expected = {t.product: PEOPLE for t in topics.values()}
        expected |= {t.profiles: PEOPLE for t in topics.values()}
        records = wait_for_records(bootstrap, expected, list(workers.values()), timeout=120)
        phase("outputs read")
        dead = read_topics(bootstrap, [t.dlq for t in topics.values()])
        assert all(r == [] for r in dead.values()), (
            f"dead letters: { {t: len(r) for t, r in dead.items()} }"
        )
        exit_codes = stop_all(workers)  # flushes the offline files
        phase("workers stopped")
        secrets, find = find_later.result()

    # The outputs are there, pseudonymised and generalised.
    for domain, t in topics.items():
        product_events = [json.loads(r.value or b"{}") for r in records[t.product]]
        token_field = next(k for k in product_events[0] if k.endswith("_token"))
        tokens = {e[token_field] for e in product_events}
        assert len(tokens) == PEOPLE and all(s.startswith("k1.") for s in tokens)
        profile_keys = {(r.key or b"").decode() for r in records[t.profiles]}
        assert profile_keys == tokens, f"{domain}: profiles are not one per subject"
        if "ip_address" in product_events[0]:
            prefixes = [e["ip_address"] for e in product_events]
            assert all(re.fullmatch(r"\d+\.\d+\.\d+\.0/24", ip) for ip in prefixes)
        if domain == "shop":
            assert all(re.fullmatch(r"\d+-\d+", e["birth_date"]) for e in product_events)
            assert all(len(e["zip_code"]) == 3 for e in product_events)
        offline = isolated_env / "features" / domain / "offline"
        history = sorted(offline.glob("*_subject_window/*.parquet"))
        assert history, f"{domain}: no offline part file written at shutdown"
        subjects = set(pd.concat([pd.read_parquet(p) for p in history])["subject"].dropna())
        assert tokens <= subjects, f"{domain}: offline history misses subjects"
        # Every product event is in the offline event files too (scanned below as well).
        events_dir = offline / f"{product_of(get_contract(domain)).name}_events"
        stored = pd.concat([pd.read_parquet(p) for p in sorted(events_dir.glob("*.parquet"))])
        assert sorted(stored[token_field]) == sorted(e[token_field] for e in product_events)

    # The scan.
    phase("checked outputs")
    assert find.search(f'x{{"v":"{people[7].email.upper()}"}}'.lower())  # the matcher works
    assert find.search(f"ip {people[7].ip}\n") and not find.search("ip 10.1.2.0/24 ")
    haystacks: dict[str, list[str]] = {}
    for t in topics.values():
        for topic in (t.product, t.profiles):
            haystacks[f"topic {topic} ({len(records[topic])} records)"] = [
                record_text(records[topic])
            ]
    files = sorted(p for p in isolated_env.rglob("*") if p.is_file())
    files += sorted(log_dir.glob("*.log"))
    for path in files:
        haystacks[f"file {path.relative_to(tmp_path)} ({path.stat().st_size} bytes)"] = file_texts(
            path
        )
    leaks: dict[str, list[str]] = {}
    for where, texts in haystacks.items():
        hits = sorted({m.group(0) for text in texts for m in find.finditer(text)})
        if hits:
            leaks[where] = hits[:5]
    phase("scanned")
    scanned = sum(len(text) for texts in haystacks.values() for text in texts)
    print(
        f"\ncanary: {len(secrets)} raw identifiers of {PEOPLE} people x {len(DOMAINS)} domains, "
        f"{scanned / 1e6:.1f} MB scanned; seconds since start {phases}; "
        f"worker exit codes {exit_codes}"
    )
    for where in haystacks:
        print(f"  {where}")
    assert not leaks, f"raw identifiers found: {leaks}"
    for contract in contracts:
        domain, events = contract.domain, f"offline/{product_of(contract).name}_events/"
        for part in ("online", "offline", "registry", events):
            assert any(f"data/features/{domain}/{part}" in w for w in haystacks), (domain, part)
