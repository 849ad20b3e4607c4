"""Task encodings from contracts, schema checks per domain, encoding rows, Feast reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from domains.contract import DomainContract
from domains.registry import load_contracts
from federation.errors import NoTrainingData, SchemaMismatch
from federation.features import (
    Encoding,
    check_encoding,
    encode,
    encoding_for,
    holdout_mask,
    load_dataset,
    task_encoding,
)
from federation.task_specs import TaskSpec, get_task


def flight_task(**changes: object) -> TaskSpec:
    raw = json.loads(get_task("flight_delay").model_dump_json())
    raw.update(changes)
    return TaskSpec.model_validate(raw)


def renamed(contract: DomainContract, old: str, new: str) -> DomainContract:
    raw = contract.model_dump(mode="json")
    for field in raw["products"][0]["fields"]:
        if field["name"] == old:
            field["name"] = new
    return DomainContract.model_validate(raw)


def test_the_demo_task_encodes_the_same_in_every_airport() -> None:
    """carrier 16 + dest 105 + month/day/weekday/hour 74 + arrival hour 24 + distance 1."""
    contracts = load_contracts()
    encoding = task_encoding(get_task("flight_delay"), contracts)
    assert encoding.width == 220
    assert [f.width for f in encoding.features] == [16, 105, 74, 24, 1]
    assert Encoding.from_json(encoding.to_json()) == encoding
    for domain in ("ewr", "jfk", "lga"):
        check_encoding(encoding, contracts[domain])


def test_a_domain_whose_contract_differs_is_named() -> None:
    """A renamed field, or other categories, is that domain's schema_mismatch."""
    contracts = load_contracts()
    encoding = task_encoding(get_task("flight_delay"), contracts)
    with pytest.raises(SchemaMismatch, match=r"'jfk'.*no field 'carrier'"):
        check_encoding(encoding, renamed(contracts["jfk"], "carrier", "airline"))
    raw = contracts["lga"].model_dump(mode="json")
    for field in raw["products"][0]["fields"]:
        if field["name"] == "dest":
            field["allowed_values"] = field["allowed_values"][:50]
    with pytest.raises(SchemaMismatch, match="one-hot over 50 categories"):
        check_encoding(encoding, DomainContract.model_validate(raw))


def test_tasks_cannot_use_protected_or_unfit_fields() -> None:
    """Tokenised fields, strings without public values and unbounded ints are refused."""
    contracts = load_contracts()
    ewr = contracts["ewr"]
    for feature, message in [
        ({"field": "tailnum", "encode": "onehot"}, "protected"),
        ({"field": "flight", "encode": "onehot"}, "no public allowed_values"),
        ({"field": "carrier", "encode": "scale"}, "not a bounded numeric"),
        ({"field": "distance", "encode": "onehot_range"}, "at most 1000 values"),
        ({"field": "distance", "encode": "calendar"}, "not a timestamp"),
    ]:
        with pytest.raises(SchemaMismatch, match=message):
            encoding_for(flight_task(features=[feature]), ewr)
    with pytest.raises(SchemaMismatch, match="unknown timezone"):
        encoding_for(
            flight_task(
                features=[
                    {
                        "field": "scheduled_departure",
                        "encode": "calendar",
                        "timezone": "Mars/Olympus",
                    }
                ]
            ),
            ewr,
        )


def test_rows_encode_to_one_hots_and_scaled_numbers() -> None:
    """Categories, ranges, calendar parts in local time and [0, 1] scaling; label rule."""
    encoding = task_encoding(get_task("flight_delay"), load_contracts())
    frame = pd.DataFrame(
        {
            "subject": ["a", "b", "c"],
            "event_timestamp": pd.to_datetime(
                ["2013-01-01T10:15:00Z", "2013-07-04T22:00:00Z", "2013-07-04T23:00:00Z"], utc=True
            ),
            "carrier": ["UA", "B6", None],
            "dest": ["IAH", "LAX", "SFO"],
            "scheduled_arrival_hour": [8, 23, 0],
            "distance": [1400, 5000, 0],
            "arr_delay": [16.0, 15.0, np.nan],
        }
    )
    x, y, without = encode(frame, encoding)
    assert x.shape == (2, 220) and without == 1
    assert list(y) == [1, 0]
    carrier = encoding.features[0]
    assert x[0, carrier.categories.index("UA")] == 1 and x[0, :16].sum() == 1
    offset = 16 + 105  # calendar: month, day, weekday, hour in New York time
    assert x[0, offset + 0] == 1  # January
    assert x[0, offset + 12 + 0] == 1  # the 1st
    assert x[0, offset + 12 + 31 + 1] == 1  # a Tuesday
    assert x[0, offset + 12 + 31 + 7 + 5] == 1  # 10:15 UTC is 05:15 in New York
    assert x[0, -1] == pytest.approx(1400 / 5000) and x[1, -1] == 1.0
    assert x[1, offset + 74 + 23] == 1  # arrival hour 23


def test_missing_numbers_become_nan_for_the_data_check() -> None:
    """A NaN feature is kept as NaN, so the domain's data check refuses it with a count."""
    encoding = task_encoding(get_task("flight_delay"), load_contracts())
    frame = pd.DataFrame(
        {
            "subject": ["a"],
            "event_timestamp": pd.to_datetime(["2013-01-01T10:15:00Z"], utc=True),
            "carrier": ["UA"],
            "dest": ["IAH"],
            "scheduled_arrival_hour": [8],
            "distance": [np.nan],
            "arr_delay": [1.0],
        }
    )
    x, _, _ = encode(frame, encoding)
    assert np.isnan(x[0, -1])


def test_the_holdout_is_stable_and_near_its_fraction() -> None:
    """The same (token, time) always lands on the same side; about 20% are held out."""
    subjects = pd.Series([f"k1.{i:06d}" for i in range(20_000)])
    times = pd.Series(pd.date_range("2013-01-01", periods=20_000, freq="min", tz="UTC"))
    first = holdout_mask(subjects, times, 0.2)
    assert np.array_equal(first, holdout_mask(subjects, times, 0.2))
    assert np.array_equal(first[::-1], holdout_mask(subjects[::-1], times[::-1], 0.2))
    assert abs(first.mean() - 0.2) < 0.015  # ~5 sigma at n=20,000


def test_a_domain_without_events_has_no_training_data(tmp_path: Path) -> None:
    """An empty offline store is no_training_data, naming the domain."""
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore

    contracts = load_contracts()
    task = get_task("flight_delay")
    store = DomainFeatureStore(contracts["ewr"], tmp_path, FeatureStoreSettings())
    store.apply()
    with pytest.raises(NoTrainingData, match="'ewr' holds no 'departures' events"):
        load_dataset(store, task, task_encoding(task, contracts))


def test_training_rows_come_from_feasts_point_in_time_retrieval(tmp_path: Path) -> None:
    """Events written by the processor's path come back through Feast, encoded and split."""
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from streams.generator import EventGenerator, make_people
    from streams.keys import derive_domain_key
    from streams.pseudonymise import Tokeniser
    from streams.transform import Accepted, ProductTransform

    contracts = load_contracts()
    task = get_task("flight_delay")
    contract = contracts["jfk"]
    product = contract.products[0]
    store = DomainFeatureStore(contract, tmp_path, FeatureStoreSettings())
    store.apply()
    generator = EventGenerator("jfk", product, make_people(200, 1), seed=2)
    transform = ProductTransform(product, Tokeniser(derive_domain_key(b"t" * 32, "jfk", 1), 1))
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = []
    for i in range(3_000):
        _, raw = generator.next_event(now=(start + timedelta(minutes=i)).timestamp())
        result = transform.apply(raw)
        assert isinstance(result, Accepted)
        events.append(result.event)
    store.append_events(product, events[:1_500])
    store.append_events(product, events[1_500:])
    dataset = load_dataset(store, task, task_encoding(task, contracts))
    labelled = sum("arr_delay" in e for e in events)
    assert dataset.without_label == len(events) - labelled
    assert len(dataset.y_train) + len(dataset.y_test) == labelled
    assert 0.1 < len(dataset.y_test) / labelled < 0.3
    assert dataset.x_train.shape[1] == 220 and not np.isnan(dataset.x_train).any()
    assert 0.05 < dataset.y_train.mean() < 0.95
