"""Erasing one subject from a domain: tokens, stores, compacted topics, and a record.

The raw identifier given by the requester is used only to derive the subject's tokens
(under every key version the domain has used); it is never stored, logged or sent.
Then, in this order:

1. an erasure request naming the tokens goes to ``<domain>.erasures``: running
   processors evict the subjects from their in-memory windows and delete their online
   rows again, so a flush racing with this erasure cannot bring a row back;
2. the subjects' online rows (sqlite, Redis or Postgres) and offline history (parquet)
   are deleted;
3. a tombstone per token goes to each product's compacted ``profiles`` topic;
4. the erasure is recorded, append-only, in ``erasures/<domain>.jsonl``.

Product-topic events are not rewritten (Kafka cannot delete single records from a
non-compacted topic): they expire with the topic's retention, and consumers learn of
the erasure from ``<domain>.erasures``. Erasure is not a block list: a later event of
the same person is processed again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from domains.contract import DataProduct, DomainContract
from streams.keyring import DomainTokens
from streams.records import append_record as append_jsonl
from streams.topics import ProductTopics, erasures_topic

if TYPE_CHECKING:  # subject_tokens (a DSR access) needs neither Feast nor Kafka clients
    from feature_repo.store import DomainFeatureStore
    from streams.producing import RawProducer

TOKEN_PATTERN = re.compile(r"k[0-9]{1,3}\.[a-z2-7]{16,64}")
MAX_TOKENS_PER_REQUEST = 10_000


MAX_REQUEST_BYTES = 1_000_000

# Reason codes of malformed erasure requests (``privmesh-reason`` on the erasures DLQ).
MALFORMED_JSON = "malformed_json"
TOO_LARGE = "too_large"
MISSING_FIELD = "missing_field"
INVALID_VALUE = "invalid_value"


class MalformedErasureRequest(ValueError):
    """An erasure request that is not ``{"tokens": [<token>, ...]}``; ``reason`` is a code."""

    def __init__(self, detail: str, reason: str = INVALID_VALUE) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_erasure_request(raw: bytes | None) -> set[str]:
    """The tokens an erasure request names; MalformedErasureRequest says what is wrong.

    The error never echoes the payload: a request could carry a raw identifier sent by
    mistake, and the error is logged.
    """
    if raw is not None and len(raw) > MAX_REQUEST_BYTES:
        raise MalformedErasureRequest(f"request is over {MAX_REQUEST_BYTES} bytes", TOO_LARGE)
    try:
        request = json.loads(raw or b"")
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, huge ints, deep nesting
        raise MalformedErasureRequest("not UTF-8 JSON", MALFORMED_JSON) from None
    tokens = request.get("tokens") if isinstance(request, dict) else None
    if not isinstance(tokens, list) or not tokens:
        raise MalformedErasureRequest("needs a non-empty list 'tokens'", MISSING_FIELD)
    if len(tokens) > MAX_TOKENS_PER_REQUEST:
        raise MalformedErasureRequest(f"names more than {MAX_TOKENS_PER_REQUEST} tokens", TOO_LARGE)
    if not all(isinstance(t, str) and TOKEN_PATTERN.fullmatch(t) for t in tokens):
        raise MalformedErasureRequest("'tokens' holds a value that is not a privmesh token")
    return set(tokens)


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """What one erasure did; holds tokens, never the raw identifier."""

    erasure_id: str
    domain: str
    requested_at: str
    tokens: list[str]
    online_rows: int
    offline_rows: int
    tombstones: int
    requested_by: str


def subject_tokens(
    contract: DomainContract,
    tokens: DomainTokens,
    subject: str,
    products: Collection[DataProduct] | None = None,
) -> set[str]:
    """Every token ``subject`` can have in the domain: each product's unit (of ``products``
    only, when given), each key version."""
    found: set[str] = set()
    for product in contract.products if products is None else products:
        unit = product.field(product.privacy_unit)
        assert unit is not None  # the contract guarantees it
        found |= tokens.all_tokens(subject, unit.type)
    return found


def erase_subject(
    contract: DomainContract,
    tokens: DomainTokens,
    store: DomainFeatureStore,
    producer: RawProducer,
    log_dir: Path,
    subject: str,
    requested_by: str,
) -> ErasureRecord:
    """Erase ``subject`` (a raw privacy-unit value) from ``contract``'s domain."""
    from feature_repo import preaggregate

    domain = contract.domain
    token_set = subject_tokens(contract, tokens, subject)
    now = datetime.now(UTC)
    erasure_id = f"{domain}-{now.strftime('%Y%m%dT%H%M%S%f')}-{os.getpid()}"
    request = {"erasure_id": erasure_id, "tokens": sorted(token_set)}
    producer.send(erasures_topic(domain), json.dumps(request).encode(), key=erasure_id.encode())
    producer.flush()
    erased = store.erase_subjects(token_set)
    for product in contract.products:  # the events' pre-aggregates hold the subject's id
        preaggregate.erase(
            preaggregate.preaggregate_folder(store.events_folder(product)), token_set
        )
    tombstones = 0
    for product in contract.products:
        topic = ProductTopics.of(domain, product).profiles
        for token in sorted(token_set):
            producer.send(topic, None, key=token.encode())
            tombstones += 1
    producer.flush()
    record = ErasureRecord(
        erasure_id=erasure_id,
        domain=domain,
        requested_at=now.isoformat(),
        tokens=sorted(token_set),
        online_rows=erased.online,
        offline_rows=erased.offline,
        tombstones=tombstones,
        requested_by=requested_by,
    )
    append_record(log_dir / f"{domain}.jsonl", record)
    return record


def append_record(path: Path, record: ErasureRecord) -> None:
    """Append ``record`` durably (fsync) to the domain's erasure log."""
    append_jsonl(path, asdict(record))


def read_erasure_log(path: Path) -> list[ErasureRecord]:
    """Every erasure recorded in ``path``, oldest first."""
    if not path.exists():
        return []
    return [
        ErasureRecord(**json.loads(line))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
