"""Feast-free subject reads (a DSR access) give exactly ``DomainFeatureStore``'s answer."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from feast.protos.feast.types.Value_pb2 import Int64List
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from domains.registry import load_contracts
from feature_repo.errors import UnreadableValue
from feature_repo.settings import FeatureStoreSettings
from feature_repo.store import DomainFeatureStore, _python_value, subject_entity_key
from feature_repo.subject_reads import SqliteSubjectReader, decode_value, subject_key


@pytest.mark.parametrize(
    "value",
    [
        ValueProto(int64_val=0),
        ValueProto(int64_val=7),
        ValueProto(int64_val=-3),
        ValueProto(int64_val=2**62 + 5),
        ValueProto(int32_val=-2),
        ValueProto(double_val=1.5),
        ValueProto(double_val=-0.0),
        ValueProto(float_val=2.5),
        ValueProto(bool_val=True),
        ValueProto(string_val="k1.abc"),
        ValueProto(string_val=""),
        ValueProto(),
    ],
)
def test_values_decode_as_feast_gives_them(value: ValueProto) -> None:
    """Every scalar an online row holds decodes to Feast's own Python value."""
    blob = value.SerializeToString()
    assert decode_value(blob) == _python_value(blob) if blob else decode_value(blob) is None


def test_a_list_value_is_refused_by_its_code() -> None:
    """A value the reader cannot decode is an error with a code, never a wrong number."""
    blob = ValueProto(int64_list_val=Int64List(val=[1, 2])).SerializeToString()
    with pytest.raises(UnreadableValue) as caught:
        decode_value(blob)
    assert caught.value.code == "unreadable_online_value"


def test_subject_keys_are_feasts() -> None:
    """The entity key of a token is Feast's serialised key (version 3)."""
    for token in ("k1.abcdefghijklmnop", "", "é"):
        assert subject_key(token) == subject_entity_key(token)


def test_subject_features_equal_the_feast_stores(tmp_path: Path) -> None:
    """Written, unknown and repeated subjects read alike; before the store exists and
    before its views are applied every value is None."""
    contract = load_contracts()["shop"]
    reader = SqliteSubjectReader(contract, tmp_path)
    assert reader.subject_features("orders", ["k1.x"]) == [
        {"subject": "k1.x", "window_start": None, "events": None, "amount_cents_sum": None}
    ]
    store = DomainFeatureStore(contract, tmp_path, FeatureStoreSettings())
    assert reader.subject_features("orders", ["k1.x"])[0]["events"] is None
    store.apply()
    view = store.product_features("orders").subject_view
    written = [f"k1.subject{i:04d}" for i in range(1200)]
    now = datetime.now(UTC)
    store.write_online(
        view,
        [
            {"subject": s, "window_start": 1_800_000_000 + i, "events": i % 11}
            | {"amount_cents_sum": float(i) * 1.5, "event_timestamp": now}
            for i, s in enumerate(written)
        ],
    )
    asked = [*written[:3], "k1.unknown", written[2], *written[-1000:]]
    assert reader.subject_features("orders", asked) == store.subject_features("orders", asked)
    assert reader.events_folder("orders") == store.events_folder("orders")
    assert reader.subject_features("orders", []) == []


def test_the_reader_imports_no_feast(tmp_path: Path) -> None:
    """Reading a subject loads neither Feast nor pandas (what keeps `dsr access` fast)."""
    code = (
        "import sys; from pathlib import Path; from domains.registry import load_contracts; "
        "from feature_repo.subject_reads import SqliteSubjectReader; "
        f"r = SqliteSubjectReader(load_contracts()['shop'], Path({str(tmp_path)!r})); "
        "r.subject_features('orders', ['k1.x']); r.events_folder('orders'); "
        "print(sorted(m for m in ('feast', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
