"""Synthetic raw events with realistic fake people (Faker), for demos and benchmarks.

A fixed pool of people places orders, so repeat customers exist and distinct
counts are meaningful. A configurable share of events is deliberately malformed
to exercise the dead-letter path. Nothing here logs an event's content.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

from faker import Faker

from domains.contract import DataProduct


@dataclass(frozen=True, slots=True)
class Person:
    """A fake person (all fields synthetic)."""

    name: str
    email: str
    ip: str
    birth_date: date
    zip_code: str


def make_people(count: int, seed: int) -> list[Person]:
    """``count`` distinct fake people, reproducible for ``seed``."""
    fake = Faker("en_US")
    fake.seed_instance(seed)
    people: list[Person] = []
    emails: set[str] = set()
    while len(people) < count:
        name = fake.name()
        email = f"{fake.user_name()}{len(people)}@{fake.free_email_domain()}"
        if email in emails:
            continue
        emails.add(email)
        people.append(
            Person(
                name=name,
                email=email,
                ip=fake.ipv4_public(),
                birth_date=fake.date_of_birth(minimum_age=18, maximum_age=90),
                zip_code=fake.zipcode(),
            )
        )
    return people


class OrderGenerator:
    """Raw ``shop.orders`` events (the demo product's ingest schema)."""

    def __init__(self, product: DataProduct, people: list[Person], bad_ratio: float, seed: int):
        if not people:
            raise ValueError("at least one person is needed")
        if not 0 <= bad_ratio <= 1:
            raise ValueError(f"bad_ratio must be within [0, 1], got {bad_ratio}")
        self.product = product
        self.people = people
        self.bad_ratio = bad_ratio
        self._rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
        self._seq = 0

    def good(self, now: float | None = None) -> dict[str, object]:
        """One valid order event."""
        person = self._rng.choice(self.people)
        self._seq += 1
        return {
            "order_id": f"o-{self._seq:09d}",
            "customer_name": person.name,
            "customer_email": person.email,
            "ip_address": person.ip,
            "birth_date": person.birth_date.isoformat(),
            "zip_code": person.zip_code,
            "amount_cents": self._rng.randint(100, 25_000),
            "occurred_at": datetime.fromtimestamp(now or time.time(), tz=UTC).isoformat(),
        }

    def bad(self, now: float | None = None) -> bytes:
        """One malformed event, of a randomly chosen kind."""
        event = self.good(now)
        kind = self._rng.randrange(5)
        if kind == 0:
            return b'{"order_id": "o-broken", "amount_cents": '
        if kind == 1:
            del event["customer_email"]
        elif kind == 2:
            event["amount_cents"] = 10_000_000
        elif kind == 3:
            event["customer_email"] = "not-an-email"
        else:
            event["amount_cents"] = "twelve"
        return json.dumps(event).encode()

    def next_raw(self, now: float | None = None) -> bytes:
        """The next event's bytes, malformed with probability ``bad_ratio``."""
        if self.bad_ratio and self._rng.random() < self.bad_ratio:
            return self.bad(now)
        return json.dumps(self.good(now), separators=(",", ":")).encode()

    def stream(self, count: int | None = None) -> Iterator[bytes]:
        """``count`` events (forever when None)."""
        produced = 0
        while count is None or produced < count:
            yield self.next_raw()
            produced += 1


def paced(rate: float, events: Iterator[bytes]) -> Iterator[bytes]:
    """Yield ``events`` at about ``rate`` per second (0: as fast as possible)."""
    if rate <= 0:
        yield from events
        return
    interval = 1.0 / rate
    next_at = time.monotonic()
    for raw in events:
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
        next_at = max(next_at + interval, time.monotonic() - 1.0)
        yield raw
