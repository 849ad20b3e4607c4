"""Airport domains with synthetic departures in their Feast stores, for federation tests."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

AIRPORTS = ("ewr", "jfk", "lga")


def fill_store(data_dir: Path, domain: str, events: int, seed: int) -> int:
    """Write ``events`` synthetic departures of ``domain`` through the processor's transform
    into its offline store; returns how many carry a label (an arrival delay)."""
    from domains.registry import get_contract
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from streams.generator import EventGenerator, make_people
    from streams.keys import derive_domain_key
    from streams.pseudonymise import Tokeniser
    from streams.transform import Accepted, ProductTransform

    contract = get_contract(domain)
    product = contract.products[0]
    store = DomainFeatureStore(contract, data_dir, FeatureStoreSettings())
    store.apply()
    generator = EventGenerator(domain, product, make_people(300, seed), seed=seed)
    transform = ProductTransform(product, Tokeniser(derive_domain_key(b"f" * 32, domain, 1), 1))
    start = datetime(2026, 11, 2, tzinfo=UTC)
    accepted = []
    for i in range(events):
        _, raw = generator.next_event(now=(start + timedelta(seconds=37 * i)).timestamp())
        result = transform.apply(raw)
        assert isinstance(result, Accepted)
        accepted.append(result.event)
    if accepted:
        store.append_events(product, accepted)
    return sum("arr_delay" in e for e in accepted)


@pytest.fixture(scope="session")
def airport_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: three airport domains holding 1,500 departures each."""
    data_dir = tmp_path_factory.mktemp("airport-template")
    for seed, domain in enumerate(AIRPORTS, start=1):
        fill_store(data_dir, domain, 1_500, seed)
    return data_dir


@pytest.fixture
def airport_data(airport_template: Path, tmp_path: Path) -> Path:
    """A test's own copy of the three airport domains' stores."""
    data_dir = tmp_path / "airports"
    shutil.copytree(airport_template, data_dir)
    return data_dir
