"""From a domain's Feast store to a training matrix, the same columns in every domain.

The coordinator derives an :class:`Encoding` from the task and the contracts (public
metadata in the mesh) and sends it with the run; each domain checks its own contract
against it (a mismatch is that domain's ``schema_mismatch``, never a silently different
column layout), reads its pseudonymised events through Feast's point-in-time historical
retrieval, and encodes them. Only public facts shape the columns: a string field's
``allowed_values``, a numeric field's bounds, calendar parts of a timestamp.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from numpy.typing import NDArray

from domains.contract import DataProduct, DomainContract, FieldSpec, FieldType, Protection
from federation.errors import InvalidTask, NoTrainingData, SchemaMismatch
from federation.task_specs import FeatureSpec, LabelSpec, TaskSpec

if TYPE_CHECKING:  # pandas is imported where frames are handled: linting a task needs none
    import pandas as pd

    from feature_repo.store import DomainFeatureStore

_PART_SIZES = {"month": 12, "day": 31, "weekday": 7, "hour": 24}
_MAX_RANGE_WIDTH = 1_000
_NUMERIC = {FieldType.INT, FieldType.FLOAT}


@dataclass(frozen=True)
class FieldEncoding:
    """How one field becomes columns: the public facts the encoding depends on."""

    name: str
    encode: str
    categories: list[str] = field(default_factory=list)
    low: float = 0.0
    high: float = 0.0
    parts: list[str] = field(default_factory=list)
    timezone: str = "UTC"

    @property
    def width(self) -> int:
        """Number of columns."""
        if self.encode == "onehot":
            return len(self.categories)
        if self.encode == "onehot_range":
            return int(self.high - self.low) + 1
        if self.encode == "scale":
            return 1
        return sum(_PART_SIZES[p] for p in self.parts)


@dataclass(frozen=True)
class Encoding:
    """The column layout of a task: features in order, and the label rule."""

    product: str
    features: list[FieldEncoding]
    label: LabelSpec
    event_time: str

    @property
    def width(self) -> int:
        """Number of input columns."""
        return sum(f.width for f in self.features)

    @property
    def nonzero_per_row(self) -> int:
        """The most non-zero columns an encoded row can have: one per one-hot or scaled
        field, one per calendar part (a public bound, used to clip rows' moments)."""
        return sum(
            1 if f.encode in {"onehot", "onehot_range", "scale"} else len(f.parts)
            for f in self.features
        )

    def to_json(self) -> str:
        """Serialised for the run's messages."""
        return json.dumps(
            {
                "product": self.product,
                "features": [asdict(f) for f in self.features],
                "label": self.label.model_dump(),
                "event_time": self.event_time,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Encoding:
        """The inverse of :meth:`to_json`."""
        raw = json.loads(text)
        return cls(
            raw["product"],
            [FieldEncoding(**f) for f in raw["features"]],
            LabelSpec.model_validate(raw["label"]),
            raw["event_time"],
        )


def encoding_for(task: TaskSpec, contract: DomainContract) -> Encoding:
    """The encoding of ``task`` as ``contract`` (one participating domain) declares it."""
    product = _product(task, contract)
    encodings = [_field_encoding(spec, product, contract.domain) for spec in task.features]
    label = _field(product, task.label.field, contract.domain)
    if task.label.above is not None and label.type not in _NUMERIC:
        raise SchemaMismatch(
            f"domain {contract.domain!r}: label field {label.name!r} is {label.type.value}; "
            "'above' needs a numeric field"
        )
    return Encoding(product.name, encodings, task.label, product.event_time)


def task_encoding(task: TaskSpec, contracts: dict[str, DomainContract]) -> Encoding:
    """The one encoding every domain of ``task`` shares; refuses domains that differ."""
    missing = [d for d in task.domains if d not in contracts]
    if missing:
        raise InvalidTask(f"task {task.name!r} names unknown domains {missing}")
    reference = encoding_for(task, contracts[task.domains[0]])
    for domain in task.domains[1:]:
        check_encoding(reference, contracts[domain])
    return reference


def check_encoding(encoding: Encoding, contract: DomainContract) -> None:
    """Refuse a domain whose contract would encode the task differently."""
    product = contract.product(encoding.product)
    if product is None:
        raise SchemaMismatch(
            f"domain {contract.domain!r} publishes no data product {encoding.product!r}"
        )
    for expected in encoding.features:
        spec = FeatureSpec.model_validate(
            {
                "field": expected.name,
                "encode": expected.encode,
                "parts": expected.parts,
                "timezone": expected.timezone,
            }
        )
        actual = _field_encoding(spec, product, contract.domain)
        if actual != expected:
            raise SchemaMismatch(
                f"domain {contract.domain!r}: field {expected.name!r} of {product.name!r} "
                f"encodes as {_describe(actual)}, the task expects {_describe(expected)}"
            )
    label = _field(product, encoding.label.field, contract.domain)
    if encoding.label.above is not None and label.type not in _NUMERIC:
        raise SchemaMismatch(
            f"domain {contract.domain!r}: label field {label.name!r} is not numeric"
        )


def _describe(enc: FieldEncoding) -> str:
    if enc.encode == "onehot":
        return f"one-hot over {len(enc.categories)} categories"
    if enc.encode in {"onehot_range", "scale"}:
        return f"{enc.encode} over [{enc.low:g}, {enc.high:g}]"
    return f"calendar {enc.parts} in {enc.timezone}"


def _product(task: TaskSpec, contract: DomainContract) -> DataProduct:
    product = contract.product(task.product)
    if product is None:
        raise SchemaMismatch(
            f"domain {contract.domain!r} publishes no data product {task.product!r}"
        )
    return product


def _field(product: DataProduct, name: str, domain: str) -> FieldSpec:
    """The field ``name`` as published: kept as is, or the event time (maybe coarsened)."""
    spec = product.field(name)
    if spec is None:
        raise SchemaMismatch(f"domain {domain!r}: product {product.name!r} has no field {name!r}")
    usable = spec.protection is Protection.KEEP or (
        name == product.event_time and spec.protection is Protection.GENERALISE
    )
    if not usable:
        raise SchemaMismatch(
            f"domain {domain!r}: field {name!r} is protected ({spec.protection.value}) before it "
            "leaves ingestion; a task can only use fields published as they are"
        )
    return spec


def _field_encoding(spec: FeatureSpec, product: DataProduct, domain: str) -> FieldEncoding:
    declared = _field(product, spec.field, domain)
    name = spec.field

    def refuse(why: str) -> SchemaMismatch:
        return SchemaMismatch(f"domain {domain!r}: field {name!r} cannot be {spec.encode}: {why}")

    if spec.encode == "onehot":
        if not declared.allowed_values:
            raise refuse("it declares no public allowed_values")
        return FieldEncoding(name, "onehot", categories=list(declared.allowed_values))
    if spec.encode in {"onehot_range", "scale"}:
        if declared.type not in _NUMERIC or declared.bounds is None:
            raise refuse("it is not a bounded numeric field")
        low, high = float(declared.bounds.min), float(declared.bounds.max)
        if spec.encode == "onehot_range":
            if declared.type is not FieldType.INT or high - low + 1 > _MAX_RANGE_WIDTH:
                raise refuse(f"it needs an int field with at most {_MAX_RANGE_WIDTH} values")
        elif high == low:
            raise refuse("its bounds are a single value")
        return FieldEncoding(name, spec.encode, low=low, high=high)
    if declared.type is not FieldType.TIMESTAMP:
        raise refuse(f"it is {declared.type.value}, not a timestamp")
    try:
        ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise refuse(f"unknown timezone {spec.timezone!r}") from exc
    return FieldEncoding(name, "calendar", parts=list(spec.parts), timezone=spec.timezone)


# ------------------------------------------------------------------- encoding rows
def encode(
    frame: pd.DataFrame, encoding: Encoding
) -> tuple[NDArray[np.float32], NDArray[np.int64], int]:
    """Rows of ``frame`` as (features, labels, rows left out for want of a label).

    Calendar parts of the event time read the ``event_timestamp`` column (the entity
    time of the historical retrieval). A missing category becomes all zeros; a missing
    number becomes NaN, which the task's data check refuses with a count.
    """
    import pandas as pd

    label_values = frame[encoding.label.field]
    keep = label_values.notna().to_numpy()
    frame = frame.loc[keep]
    columns: list[NDArray[np.float32]] = []
    for enc in encoding.features:
        source = "event_timestamp" if enc.name == encoding.event_time else enc.name
        values = frame[source]
        if enc.encode == "onehot":
            codes = pd.Categorical(values, categories=enc.categories).codes
            columns.append(_one_hot(np.asarray(codes), len(enc.categories)))
        elif enc.encode == "onehot_range":
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            codes = np.where(np.isnan(numbers), -1, numbers - enc.low).astype(np.int64)
            codes[(codes < 0) | (codes >= enc.width)] = -1
            columns.append(_one_hot(codes, enc.width))
        elif enc.encode == "scale":
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            columns.append(((numbers - enc.low) / (enc.high - enc.low)).reshape(-1, 1))
        else:
            local = pd.to_datetime(values, utc=True).dt.tz_convert(enc.timezone)
            for part in enc.parts:
                codes = {
                    "month": local.dt.month - 1,
                    "day": local.dt.day - 1,
                    "weekday": local.dt.weekday,
                    "hour": local.dt.hour,
                }[part]
                columns.append(_one_hot(codes.to_numpy(dtype=np.int64), _PART_SIZES[part]))
    x = np.hstack(columns).astype(np.float32) if columns else np.zeros((len(frame), 0), "f4")
    y = _labels(frame[encoding.label.field], encoding.label)
    return x, y, int((~keep).sum())


def _one_hot(codes: NDArray[np.int64], width: int) -> NDArray[np.float32]:
    out = np.zeros((len(codes), width), dtype=np.float32)
    valid = codes >= 0
    out[np.nonzero(valid)[0], codes[valid]] = 1.0
    return out


def _labels(values: pd.Series, label: LabelSpec) -> NDArray[np.int64]:
    import pandas as pd

    if label.above is not None:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        return (numbers > label.above).astype(np.int64)
    return (values.astype(str) == label.equals).to_numpy().astype(np.int64)


def holdout_mask(subjects: pd.Series, times: pd.Series, fraction: float) -> NDArray[np.bool_]:
    """True for the rows held out for evaluation: a keyed-hash draw per (token, time).

    Stable across runs and workers (no random state), and independent of row order.
    """
    import pandas as pd

    stamps = pd.to_datetime(times, utc=True).astype("int64").to_numpy()
    draws = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{s}|{t}".encode(), digest_size=8).digest(), "little")
            for s, t in zip(subjects.astype(str).to_numpy(), stamps, strict=True)
        ),
        dtype=np.uint64,
        count=len(stamps),
    )
    return draws.astype(np.float64) / 2.0**64 < fraction


# ------------------------------------------------------------------- the domain's data
@dataclass(frozen=True)
class Dataset:
    """A domain's encoded training and evaluation rows."""

    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    without_label: int

    @property
    def train_examples(self) -> int:
        """Rows used for training."""
        return len(self.y_train)


def entity_rows(
    store: DomainFeatureStore,
    product: DataProduct,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Every (subject, event time) of ``product``'s pseudonymised events, deduplicated:
    the entity frame of a historical retrieval (at-least-once delivery can repeat an
    event; one row each is kept)."""
    import pandas as pd
    import pyarrow.dataset as ds

    folder = store.events_folder(product)
    if not folder.is_dir() or not any(folder.glob("part-*.parquet")):
        raise NoTrainingData(
            f"domain {store.contract.domain!r} holds no {product.name!r} events yet "
            "(nothing streamed into its offline store)"
        )
    dataset = ds.dataset(sorted(str(p) for p in folder.glob("part-*.parquet")))
    table = dataset.to_table(columns=[product.subject_field, product.event_time])
    frame = pd.DataFrame(
        {
            "subject": table.column(product.subject_field).to_pandas(),
            "event_timestamp": table.column(product.event_time).to_pandas(),
        }
    ).drop_duplicates()
    if since is not None:
        frame = frame[frame.event_timestamp >= pd.Timestamp(since)]
    if until is not None:
        frame = frame[frame.event_timestamp < pd.Timestamp(until)]
    if frame.empty:
        raise NoTrainingData(
            f"domain {store.contract.domain!r} has no {product.name!r} events in the task's "
            "time range"
        )
    return frame.reset_index(drop=True)


def load_dataset(store: DomainFeatureStore, task: TaskSpec, encoding: Encoding) -> Dataset:
    """The domain's rows for ``task``: Feast historical retrieval, encoding, holdout split."""
    check_encoding(encoding, store.contract)
    product = store.product_features(encoding.product).product
    entities = entity_rows(store, product, task.since, task.until)
    view = store.product_features(product).events_view
    names = sorted(
        {f.name for f in encoding.features if f.name != product.event_time} | {encoding.label.field}
    )
    refs = [f"{view.name}:{n}" for n in names]
    frame = store.store.get_historical_features(entity_df=entities, features=refs).to_df()
    test = holdout_mask(frame["subject"], frame["event_timestamp"], task.holdout)
    labelled = frame[encoding.label.field].notna().to_numpy()
    x, y, without = encode(frame, encoding)
    test_rows = test[labelled]
    return Dataset(x[~test_rows], y[~test_rows], x[test_rows], y[test_rows], without)
