"""Synthetic raw events with realistic fake people (Faker), for demos and benchmarks.

One pool of fake people is shared by every domain: the same person orders in the
shop, browses the web site and writes to support, so cross-domain linkage would be
possible in raw data, and the per-domain keys must make it impossible downstream.
The pool is large (100,000 people by default) and its activity heavy-tailed: each person
has a log-normal activity weight, and each product draws its own weight per person from it
(:func:`product_weights`: correlated with the shared one, with the product's own tail), so a
heavy browser is not automatically a heavy buyer; a product's events are drawn in proportion
to its weights. Most people order 0 or 1 times a day and a few order several; page views are
many and heavier-tailed. Per-subject daily contribution bounds then bite as they would in
production (:func:`expected_truncation` says how much they remove). Products get different
shares of the traffic (page views often, orders rarely).
A configurable share of events is deliberately malformed (derived from the
contract, so every domain exercises every dead-letter reason). Events are keyed by
their raw privacy-unit value, which keeps one subject on one partition of the
ingest topic. Nothing here logs an event's content.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from operator import attrgetter
from typing import TypeVar

import numpy as np
from faker import Faker

from domains.contract import ConsentMode, DataProduct, DomainContract, FieldType
from streams.consent import ConsentStatus, consent_key, consent_value
from streams.errors import StreamError
from streams.pseudonymise import normalise


@dataclass(frozen=True, slots=True)
class Person:
    """A fake person (every field synthetic).

    ``activity`` is the person's shared relative activity weight (median 1); each product
    derives its own weight from it (:func:`product_weights`), correlated but not equal, so a
    heavy browser tends to order more without ordering as often as they browse.
    """

    name: str
    email: str
    phone: str
    ip: str
    birth_date: date
    zip_code: str
    cookie: str
    user_agent: str
    country: str
    activity: float = 1.0


COUNTRIES = ["DE", "FR", "NL", "ES", "IT", "GB", "US", "OTHER"]

DEFAULT_ACTIVITY_SIGMA = 1.5
"""Log-normal sigma of the people's activity weights: the median person acts ``e^(-s^2/2)``
times the mean (0.32 at 1.5), the top 1% about 12 times the median, so most people send a
few events a day and a few send hundreds, as real traffic does."""

PRODUCT_SHARES: dict[tuple[str, str], float] = {
    ("web", "page_views"): 0.66,
    # Orders per page view, from published e-commerce benchmarks, not from any truncation
    # figure: a conversion rate of about 2.5-3% of sessions (e.g. IRP Commerce's and
    # Shopify's yearly benchmarks) at about 5 pages per session (Contentsquare's digital
    # experience benchmark) is 0.005-0.006 orders per page view: 0.66 * 0.006 = 0.004.
    ("shop", "orders"): 0.004,
    ("support", "tickets"): 0.01,
    ("ewr", "departures"): 0.10,
    ("jfk", "departures"): 0.10,
    ("lga", "departures"): 0.10,
}
"""Share of the generator's events each product gets (relative; page views are frequent,
orders rarer; tickets are not tied to orders in this demo). At the demo's 200 events/s and
100,000 people that is about 70,000 orders a day, 0.7 per person (a compressed demo: a real
shop's customers order a few times a year), most people 0 or 1, a few several."""


@dataclass(frozen=True, slots=True)
class ProductActivity:
    """How one product's per-person activity relates to the shared activity weight.

    ``sigma``: the log-normal sigma of the product's weights at the default shared sigma
    (scaled with the pool's own: a pool with a heavier tail has heavier tails everywhere);
    ``correlation``: the correlation of a person's log weight for this product with their
    shared log weight (1: the shared weight itself).
    """

    sigma: float
    correlation: float


PRODUCT_ACTIVITY: dict[tuple[str, str], ProductActivity] = {
    # Purchase rates across customers follow a gamma mixture of Poissons (Ehrenberg's
    # negative binomial model of repeat buying), with shape k about 0.5 in consumer panels:
    # a coefficient of variation of 1/sqrt(k) = 1.41, which a log-normal matches at
    # sigma = sqrt(ln(1 + 2)) = 1.05. Chosen from that, not fitted to any bias.
    ("shop", "orders"): ProductActivity(sigma=1.05, correlation=0.5),
    # Browsing is more skewed than buying (a few visitors view hundreds of pages): the
    # shared sigma 1.5 itself, correlated with buying but far from identical (0.5 assumed).
    ("web", "page_views"): ProductActivity(sigma=DEFAULT_ACTIVITY_SIGMA, correlation=0.5),
}
"""Per-product activity (see :class:`ProductActivity`); a product not listed uses the shared
weight itself (as every product did before per-product activity)."""

# Name parts and formats the pool is combined from: Faker's own lists, read once, so a pool
# of 100,000 people takes about a second instead of a Faker call per field.
_POOL_SIZE = 512
_PHONE_FORMATS = ("({a}) {e}-{n:04d}", "{a}-{e}-{n:04d}", "{a}.{e}.{n:04d}", "+1-{a}-{e}-{n:04d}")
# First octets of globally routable unicast IPv4 addresses: 0, 10, 127 and multicast and
# above are not, and 100, 169, 172, 192, 198 and 203 hold private, shared or documentation
# blocks, so they are left out whole.
_PUBLIC_OCTETS = [o for o in range(1, 224) if o not in {10, 100, 127, 169, 172, 192, 198, 203}]
_FIRST_BIRTHDAY = date(1936, 1, 1).toordinal()
_BIRTHDAYS = date(2007, 12, 31).toordinal() - _FIRST_BIRTHDAY  # aged 18 to 90


def _local(name: str) -> str:
    """``name`` as an e-mail local part: lower-case ASCII letters only."""
    return "".join(c for c in name.lower() if "a" <= c <= "z") or "x"


def activity_weights(count: int, seed: int, sigma: float = DEFAULT_ACTIVITY_SIGMA) -> list[float]:
    """``count`` reproducible log-normal activity weights (median 1; all 1 when sigma is 0)."""
    if sigma < 0:
        raise ValueError(f"the activity sigma must be >= 0, got {sigma}")
    rng = np.random.default_rng([seed, 1])  # synthetic data, not security
    return list(rng.lognormal(0.0, sigma, count).tolist())


def product_weights(people: Sequence[Person], domain: str, product: str, seed: int) -> np.ndarray:
    """Each person's activity weight for ``domain``/``product``, reproducible for ``seed``.

    ``log w = s (c z + sqrt(1 - c^2) e)``: ``z`` the person's shared log weight over the
    pool's sigma, ``e`` a standard normal draw of the person for this product, ``c`` its
    :class:`ProductActivity` correlation, ``s`` its sigma times the pool's sigma over the
    default one (all 1 when the pool has no spread). A product not in
    :data:`PRODUCT_ACTIVITY` gets the shared weights.
    """
    shared = np.fromiter((p.activity for p in people), dtype=float, count=len(people))
    spec = PRODUCT_ACTIVITY.get((domain, product))
    logs = np.log(shared)
    spread = float(logs.std()) if len(people) > 1 else 0.0
    if spec is None or not spread > 1e-12:
        return shared
    z = (logs - logs.mean()) / spread
    rng = np.random.default_rng([seed, zlib.crc32(f"{domain}.{product}".encode())])
    own = rng.standard_normal(len(people))  # synthetic data, not security
    sigma = spec.sigma * spread / DEFAULT_ACTIVITY_SIGMA
    c = spec.correlation
    return np.exp(sigma * (c * z + math.sqrt(1.0 - c * c) * own))


def make_people(
    count: int, seed: int, activity_sigma: float = DEFAULT_ACTIVITY_SIGMA
) -> list[Person]:
    """``count`` distinct fake people (unique e-mails and cookies), reproducible for ``seed``.

    Names, user agents and e-mail domains come from small pools Faker draws once; the other
    fields are drawn for all people at once, so 100,000 people take about a second. Each
    person has a log-normal activity weight (see :func:`activity_weights`).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    fake = Faker("en_US")
    fake.seed_instance(seed)
    firsts = [fake.first_name() for _ in range(_POOL_SIZE)]
    lasts = [fake.last_name() for _ in range(_POOL_SIZE)]
    locals_ = [(_local(f), _local(last)) for f, last in zip(firsts, lasts, strict=True)]
    agents = [fake.user_agent() for _ in range(_POOL_SIZE)]
    domains = sorted({fake.free_email_domain() for _ in range(64)})
    rng = np.random.default_rng([seed, 0])  # synthetic data, not security

    def draw(low: int, high: int) -> list[int]:
        return list(rng.integers(low, high, count).tolist())

    first, last, agent = draw(0, _POOL_SIZE), draw(0, _POOL_SIZE), draw(0, _POOL_SIZE)
    domain, country, fmt = draw(0, len(domains)), draw(0, len(COUNTRIES)), draw(0, 4)
    area, exchange, line = draw(201, 990), draw(201, 1000), draw(0, 10_000)
    octet, host = draw(0, len(_PUBLIC_OCTETS)), draw(0, 1 << 24)
    hosts = [f"{h >> 16}.{h >> 8 & 255}.{h & 255}" for h in host]
    birthday, zip_code = draw(0, _BIRTHDAYS), draw(501, 99_951)
    cookie_hi, cookie_lo = draw(0, 1 << 62), draw(0, 1 << 62)
    weights = activity_weights(count, seed, activity_sigma)
    people: list[Person] = []
    for i in range(count):
        hi, lo = cookie_hi[i], cookie_lo[i]
        people.append(
            Person(
                name=f"{firsts[first[i]]} {lasts[last[i]]}",
                # The running index keeps every address unique, as a real user base's are.
                email=f"{locals_[first[i]][0]}.{locals_[last[i]][1]}{i}@{domains[domain[i]]}",
                phone=_PHONE_FORMATS[fmt[i]].format(a=area[i], e=exchange[i], n=line[i]),
                ip=f"{_PUBLIC_OCTETS[octet[i]]}.{hosts[i]}",
                birth_date=date.fromordinal(_FIRST_BIRTHDAY + birthday[i]),
                zip_code=f"{zip_code[i]:05d}",
                # A version-4 UUID laid out by hand; the index makes it unique.
                cookie=f"ck_{hi >> 30:08x}-{hi >> 14 & 0xFFFF:04x}-4{hi & 0xFFF:03x}-"
                f"{8 | lo >> 60:x}{lo >> 48 & 0xFFF:03x}-{(lo & 0xFFFFFFFFFFFF) ^ i:012x}",
                user_agent=agents[agent[i]],
                country=COUNTRIES[country[i]],
                activity=weights[i],
            )
        )
    return people


T = TypeVar("T")
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

SUBJECTS: dict[tuple[str, str], Callable[[Person], str]] = {
    ("shop", "orders"): attrgetter("email"),
    ("web", "page_views"): attrgetter("cookie"),
    ("support", "tickets"): attrgetter("email"),
    **{(airport, "departures"): _tailnum for airport in _CARRIERS},
}
"""The raw privacy-unit value of a person's events per product (what its builder puts in the
product's privacy-unit field), read without building an event."""


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
    for product in contract.products:
        subject_of = SUBJECTS.get((contract.domain, product.name))
        if subject_of is None:
            continue
        opt_in = product.consent is ConsentMode.OPT_IN
        for person in people:
            if opt_in and rng.random() < grant_share:
                records.append(
                    _consent(subject_of(person), product.purpose, ConsentStatus.GRANTED, at)
                )
            if rng.random() < withdraw_share:
                records.append(
                    _consent(subject_of(person), product.purpose, ConsentStatus.WITHDRAWN, at + 1.0)
                )
    return records


def _consent(subject: str, purpose: str, status: ConsentStatus, at: float) -> tuple[bytes, bytes]:
    return consent_key(purpose, subject), consent_value(subject, purpose, status, at)


def has_generator(domain: str, product: str) -> bool:
    """True when synthetic events exist for ``domain``/``product``."""
    return (domain, product) in BUILDERS


def product_share(
    domain: str, product: str, shares: Mapping[tuple[str, str], float] | None = None
) -> float:
    """The relative share of the generator's events ``domain``/``product`` gets (0: none)."""
    return (PRODUCT_SHARES if shares is None else shares).get((domain, product), 0.0)


def events_per_day(
    rate: float,
    domain: str,
    product: str,
    running: Sequence[tuple[str, str]] | None = None,
    bad_ratio: float = 0.0,
    shares: Mapping[tuple[str, str], float] | None = None,
) -> float:
    """Valid events a day ``domain``/``product`` gets from a generator sending ``rate`` events/s
    over the ``running`` products (default: every product with a share)."""
    table = PRODUCT_SHARES if shares is None else shares
    chosen = list(table) if running is None else list(running)
    total = sum(table.get(p, 0.0) for p in chosen)
    if (domain, product) not in chosen or total <= 0:
        return 0.0
    return rate * 86_400 * (1 - bad_ratio) * table.get((domain, product), 0.0) / total


def mixed(
    generators: Sequence[tuple[T, EventGenerator]],
    seed: int,
    shares: Mapping[tuple[str, str], float] | None = None,
) -> Iterator[tuple[T, EventGenerator]]:
    """Forever: the ``(tag, generator)`` that sends next, drawn in proportion to its product's
    share (equal shares when none of the products has one)."""
    if not generators:
        raise ValueError("at least one generator is needed")
    weights = [product_share(g.domain, g.product.name, shares) for _, g in generators]
    if not any(weights):
        weights = [1.0] * len(generators)
    cum = list(itertools.accumulate(weights))
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    while True:
        yield from rng.choices(generators, cum_weights=cum, k=256)


@dataclass(frozen=True, slots=True)
class TruncationBias:
    """What per-subject, per-day truncation removes from one product's day, in expectation.

    A subject's daily events are Poisson with mean ``events_per_day * activity / total
    activity`` (a day of independent draws by weight); the processor counts the first
    ``bound`` of them, ``bound = min(max_records_per_period, max_windows_per_period)`` (with
    thousands of windows a day a subject's records almost never share one, so the window
    bound acts like a record bound).
    """

    people: int
    events_per_day: float
    bound: int
    events_dropped_share: float  # share of the day's events the bound removes
    people_truncated_share: float  # share of the people with more events than the bound
    median_person_events: float  # expected events a day of the median-activity person
    top_percent_person_events: float  # ... of the person at the 99th activity percentile


def expected_truncation(
    people: Sequence[Person],
    events_per_day: float,
    max_records_per_period: int,
    max_windows_per_period: int | None = None,
    weights: np.ndarray | None = None,
) -> TruncationBias:
    """The expected bias of per-subject, per-day truncation at this traffic (see
    :class:`TruncationBias`); a measure summed over records loses the same share of its total
    as the count when, as here, a record's value does not depend on its rank in the day.
    ``weights``: the product's per-person weights (``EventGenerator.weights``); default the
    shared activity weights."""
    if not people:
        raise ValueError("at least one person is needed")
    if max_records_per_period < 1 or (max_windows_per_period or 1) < 1:
        raise ValueError("the contribution bounds must be >= 1")
    bound = min(max_records_per_period, max_windows_per_period or max_records_per_period)
    if weights is None:
        weights = np.fromiter((p.activity for p in people), dtype=float, count=len(people))
    lam = events_per_day * weights / weights.sum()
    pmf = np.exp(-lam)
    cdf = pmf.copy()
    kept = np.zeros_like(lam)
    for k in range(bound):  # E[min(N, b)] = sum over k < b of P(N > k)
        kept += 1.0 - cdf
        pmf = pmf * lam / (k + 1)
        cdf += pmf
    total = float(lam.sum())
    ordered = np.sort(lam)
    return TruncationBias(
        people=len(people),
        events_per_day=events_per_day,
        bound=bound,
        events_dropped_share=0.0 if total == 0 else 1.0 - float(kept.sum()) / total,
        people_truncated_share=float((1.0 - cdf).mean()),
        median_person_events=float(np.median(ordered)),
        top_percent_person_events=float(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]),
    )


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
        # Cumulative activity weights for this product: a person is drawn in proportion to
        # their weight (random.choices bisects them), so heavy users send most events.
        self.weights = product_weights(people, domain, product.name, seed)
        self._cum_weights = np.cumsum(self.weights).tolist()
        if not self._cum_weights[-1] > 0:
            raise ValueError("the people's activity weights must add up to more than 0")

    def person(self) -> Person:
        """The next acting person, drawn in proportion to the product's activity weights."""
        return self._rng.choices(self.people, cum_weights=self._cum_weights)[0]

    def good(self, now: float | None = None) -> dict[str, object]:
        """One valid event."""
        person = self.person()
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
