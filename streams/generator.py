"""Synthetic raw events with realistic fake people (Faker), for demos and benchmarks.

One pool of fake people is shared by every domain: the same person orders in the
shop, browses the web site and writes to support, so cross-domain linkage would be
possible in raw data, and the per-domain keys must make it impossible downstream.
A configurable share of events is deliberately malformed (derived from the
contract, so every domain exercises every dead-letter reason). Events are keyed by
their raw privacy-unit value, which keeps one subject on one partition of the
ingest topic. Nothing here logs an event's content.
"""

from __future__ import annotations

import json
import math
import random
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TypeVar

from faker import Faker

from domains.contract import ConsentMode, DataProduct, DomainContract, FieldType
from streams.consent import ConsentStatus, consent_key, consent_value
from streams.errors import StreamError
from streams.pseudonymise import normalise


@dataclass(frozen=True, slots=True)
class Person:
    """A fake person (every field synthetic)."""

    name: str
    email: str
    phone: str
    ip: str
    birth_date: date
    zip_code: str
    cookie: str
    user_agent: str
    country: str


COUNTRIES = ["DE", "FR", "NL", "ES", "IT", "GB", "US", "OTHER"]


def make_people(count: int, seed: int) -> list[Person]:
    """``count`` distinct fake people, reproducible for ``seed``."""
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
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
                phone=fake.phone_number(),
                ip=fake.ipv4_public(),
                birth_date=fake.date_of_birth(minimum_age=18, maximum_age=90),
                zip_code=fake.zipcode(),
                cookie=f"ck_{fake.uuid4()}",
                user_agent=fake.user_agent(),
                country=rng.choice(COUNTRIES),
            )
        )
    return people


Builder = Callable[[Person, random.Random, int, str], dict[str, object]]


def _order(person: Person, rng: random.Random, seq: int, at: str) -> dict[str, object]:
    return {
        "order_id": f"o-{seq:09d}",
        "customer_name": person.name,
        "customer_email": person.email,
        "ip_address": person.ip,
        "birth_date": person.birth_date.isoformat(),
        "zip_code": person.zip_code,
        "payment_method": rng.choice(["card", "card", "paypal", "invoice", "gift_card"]),
        "amount_cents": rng.randint(100, 25_000),
        "occurred_at": at,
    }


def _page_view(person: Person, rng: random.Random, seq: int, at: str) -> dict[str, object]:
    return {
        "view_id": f"pv-{seq:010d}",
        "visitor_id": person.cookie,
        "ip_address": person.ip,
        "user_agent": person.user_agent,
        "country": person.country,
        "page": rng.choice(["home", "home", "search", "product", "product", "cart", "checkout"]),
        "device_type": rng.choice(["desktop", "mobile", "mobile", "tablet"]),
        "duration_ms": int(rng.expovariate(1 / 20_000)) % 600_000,
        "viewed_at": at,
    }


_TOPICS = {
    "billing": "I was charged twice for my order",
    "delivery": "my parcel has not arrived yet",
    "returns": "I would like to return the shoes",
    "account": "I cannot log in to my account",
    "product": "the kettle stopped working",
    "other": "I have a question",
}


def _ticket(person: Person, rng: random.Random, seq: int, at: str) -> dict[str, object]:
    category = rng.choice(list(_TOPICS))
    event: dict[str, object] = {
        "ticket_id": f"T-{seq:09d}",
        "customer_email": person.email,
        "customer_name": person.name,
        "customer_phone": person.phone,
        # Free text names the person, as real tickets do: the contract drops it.
        "message": f"Hello, this is {person.name} ({person.phone}); {_TOPICS[category]}.",
        "category": category,
        "channel": rng.choice(["email", "chat", "phone"]),
        "handle_minutes": rng.randint(2, 180),
        "resolved_at": at,
    }
    if rng.random() < 0.6:
        event["satisfaction"] = rng.randint(1, 5)
    return event


# Synthetic departures of the three New York airports. The chance of arriving over
# 15 minutes late follows a made-up logistic model of carrier, destination, distance and
# arrival hour (with an airport-specific base rate), so the federated demo task has a
# signal to learn; the people pool only seeds a fleet of aircraft (the privacy unit).
_CARRIERS = {
    "ewr": ["UA", "UA", "UA", "EV", "EV", "B6", "DL", "AA", "WN", "US"],
    "jfk": ["B6", "B6", "B6", "DL", "DL", "9E", "AA", "AA", "MQ", "UA", "VX", "HA"],
    "lga": ["DL", "DL", "AA", "AA", "MQ", "US", "EV", "UA", "WN", "B6", "FL", "F9", "YV"],
}
_CARRIER_EFFECT = {
    "9E": 0.5,
    "EV": 0.8,
    "FL": 0.9,
    "F9": 0.9,
    "MQ": 0.5,
    "YV": 0.6,
    "HA": -1.2,
    "AS": -0.8,
    "US": -0.5,
    "DL": -0.7,
    "AA": -0.3,
}
_DESTINATIONS = [
    "ATL",
    "ORD",
    "LAX",
    "BOS",
    "MCO",
    "CLT",
    "SFO",
    "FLL",
    "MIA",
    "DCA",
    "DTW",
    "DFW",
    "RDU",
    "TPA",
    "DEN",
    "IAH",
    "MSP",
    "PBI",
    "BNA",
    "LAS",
]
_DESTINATION_EFFECT = {
    "ORD": 0.7,
    "ATL": 0.4,
    "SFO": 0.5,
    "DEN": 0.5,
    "BOS": -0.4,
    "LAX": -0.2,
    "MIA": 0.3,
    "DCA": 0.2,
    "LAS": -0.5,
}
_DISTANCE = {
    "ATL": 760,
    "ORD": 733,
    "LAX": 2475,
    "BOS": 187,
    "MCO": 944,
    "CLT": 541,
    "SFO": 2586,
    "FLL": 1069,
    "MIA": 1089,
    "DCA": 214,
    "DTW": 488,
    "DFW": 1372,
    "RDU": 427,
    "TPA": 1005,
    "DEN": 1626,
    "IAH": 1416,
    "MSP": 1028,
    "PBI": 1035,
    "BNA": 764,
    "LAS": 2248,
}
_AIRPORT_BASE = {"ewr": -1.0, "jfk": -1.3, "lga": -1.2}


def _tailnum(person: Person) -> str:
    digest = zlib.crc32(person.cookie.encode())
    return f"N{100 + digest % 900}{chr(65 + digest // 900 % 26)}{chr(65 + digest // 23400 % 26)}"


def _departures(airport: str) -> Builder:
    def build(person: Person, rng: random.Random, seq: int, at: str) -> dict[str, object]:
        carrier = rng.choice(_CARRIERS[airport])
        dest = rng.choice(_DESTINATIONS)
        distance = _DISTANCE[dest]
        arrival_hour = rng.randint(6, 23)
        logit = (
            _AIRPORT_BASE[airport]
            + _CARRIER_EFFECT.get(carrier, 0.0)
            + _DESTINATION_EFFECT.get(dest, 0.0)
            + 0.15 * (arrival_hour - 14)
            + 0.0002 * distance
        )
        late = rng.random() < 1 / (1 + math.exp(-logit))
        event: dict[str, object] = {
            "flight": f"{carrier}{rng.randint(1, 4999)}",
            "tailnum": _tailnum(person),
            "carrier": carrier,
            "dest": dest,
            "scheduled_departure": at,
            "scheduled_arrival_hour": arrival_hour,
            "distance": distance,
        }
        if rng.random() < 0.02:  # cancelled: no delays known
            return event
        arrival = int(15 + rng.expovariate(1 / 45)) if late else int(rng.gauss(-6, 9))
        event["arr_delay"] = max(-120, min(1500, arrival))
        event["dep_delay"] = max(-120, min(1500, arrival + rng.randint(-10, 5)))
        return event

    return build


BUILDERS: dict[tuple[str, str], Builder] = {
    ("shop", "orders"): _order,
    ("web", "page_views"): _page_view,
    ("support", "tickets"): _ticket,
    **{(airport, "departures"): _departures(airport) for airport in _CARRIERS},
}


def consent_records(
    contract: DomainContract,
    people: list[Person],
    seed: int,
    grant_share: float = 0.9,
    withdraw_share: float = 0.02,
    now: float | None = None,
) -> list[tuple[bytes, bytes]]:
    """Synthetic consent records ``(key, value)`` for ``people`` in ``contract``'s domain.

    For each purpose of a product with synthetic events: a grant from ``grant_share`` of
    the people where the product is ``opt_in``, then a withdrawal (an objection, for
    ``opt_out``) from ``withdraw_share`` of them, a second later. Reproducible for ``seed``.
    """
    if not 0 <= grant_share <= 1 or not 0 <= withdraw_share <= 1:
        raise ValueError("grant_share and withdraw_share must be within [0, 1]")
    at = now if now is not None else time.time()
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    records: list[tuple[bytes, bytes]] = []
    stamp = datetime.fromtimestamp(at, tz=UTC).isoformat()
    for product in contract.products:
        build = BUILDERS.get((contract.domain, product.name))
        if build is None:
            continue
        for seq, person in enumerate(people):
            subject = str(build(person, rng, seq, stamp)[product.privacy_unit])
            if product.consent is ConsentMode.OPT_IN and rng.random() < grant_share:
                records.append(_consent(subject, product.purpose, ConsentStatus.GRANTED, at))
            if rng.random() < withdraw_share:
                records.append(
                    _consent(subject, product.purpose, ConsentStatus.WITHDRAWN, at + 1.0)
                )
    return records


def _consent(subject: str, purpose: str, status: ConsentStatus, at: float) -> tuple[bytes, bytes]:
    return consent_key(purpose, subject), consent_value(subject, purpose, status, at)


def has_generator(domain: str, product: str) -> bool:
    """True when synthetic events exist for ``domain``/``product``."""
    return (domain, product) in BUILDERS


class EventGenerator:
    """Raw events of one demo data product, keyed by their raw privacy-unit value."""

    def __init__(
        self,
        domain: str,
        product: DataProduct,
        people: list[Person],
        bad_ratio: float = 0.0,
        seed: int = 7,
    ) -> None:
        builder = BUILDERS.get((domain, product.name))
        if builder is None:
            known = ", ".join(f"{d}.{p}" for d, p in sorted(BUILDERS))
            raise StreamError(
                f"no synthetic events for {domain}.{product.name} (known: {known}); "
                "use `privmesh produce --file` with your own events"
            )
        if not people:
            raise ValueError("at least one person is needed")
        if not 0 <= bad_ratio <= 1:
            raise ValueError(f"bad_ratio must be within [0, 1], got {bad_ratio}")
        self.domain = domain
        self.product = product
        self.people = people
        self.bad_ratio = bad_ratio
        self._build = builder
        self._rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
        self._seq = 0

    def good(self, now: float | None = None) -> dict[str, object]:
        """One valid event."""
        person = self._rng.choice(self.people)
        self._seq += 1
        at = datetime.fromtimestamp(now or time.time(), tz=UTC).isoformat()
        return self._build(person, self._rng, self._seq, at)

    def bad(self, now: float | None = None) -> bytes:
        """One malformed event; its kind is drawn from the contract's rules."""
        event = self.good(now)
        product = self.product
        bounded = [f for f in product.fields if f.bounds is not None and f.name in event]
        categorical = [f for f in product.fields if f.allowed_values and f.name in event]
        strings = [f for f in product.fields if f.type is FieldType.STRING and f.name in event]
        match self._rng.randrange(8):
            case 0:  # truncated JSON
                return json.dumps(event).encode()[: self._rng.randint(1, 40)]
            case 1:  # the privacy unit is missing
                del event[product.privacy_unit]
            case 2 if bounded:  # far outside the contract bounds
                spec = self._rng.choice(bounded)
                assert spec.bounds is not None
                event[spec.name] = int(spec.bounds.max) * 10 + 1
            case 3 if strings:  # a number where a string belongs
                event[self._rng.choice(strings).name] = 12345
            case 4:  # a value of the right type that is not valid
                unit = product.field(product.privacy_unit)
                if unit is not None and unit.type is FieldType.EMAIL:
                    event[unit.name] = "not-an-email"
                else:
                    event[product.event_time] = "yesterday at noon"
            case 5:  # a field the contract does not know
                event["debug_dump"] = "x"
            case 6:  # larger than the contract's size limit
                event["debug_dump"] = "x" * product.max_event_bytes
            case 7 if categorical:  # outside the public categories
                event[self._rng.choice(categorical).name] = "unlisted"
            case _:  # the rule does not apply to this product: not a JSON object
                return b"[1, 2, 3]"
        return json.dumps(event).encode()

    def next_event(self, now: float | None = None) -> tuple[bytes | None, bytes]:
        """The next ``(key, value)``; malformed (and unkeyed) with probability ``bad_ratio``."""
        if self.bad_ratio and self._rng.random() < self.bad_ratio:
            return None, self.bad(now)
        event = self.good(now)
        return self._unit_key(event), json.dumps(event, separators=(",", ":")).encode()

    def _unit_key(self, event: dict[str, object]) -> bytes:
        unit = self.product.field(self.product.privacy_unit)
        assert unit is not None  # the contract guarantees it
        return normalise(str(event[unit.name]), unit.type).encode()

    def stream(self, count: int | None = None) -> Iterator[tuple[bytes | None, bytes]]:
        """``count`` events (forever when None)."""
        produced = 0
        while count is None or produced < count:
            yield self.next_event()
            produced += 1


T = TypeVar("T")


def paced(rate: float, events: Iterator[T]) -> Iterator[T]:
    """Yield ``events`` at about ``rate`` per second (0: as fast as possible)."""
    if rate <= 0:
        yield from events
        return
    interval = 1.0 / rate
    next_at = time.monotonic()
    for item in events:
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
        next_at = max(next_at + interval, time.monotonic() - 1.0)
        yield item
