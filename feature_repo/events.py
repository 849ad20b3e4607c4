"""The pseudonymised product events of the offline store: their columns and types.

No Feast in here: the stream processor writes these files, the DP API scans them with
polars, and the Feast definitions (``feature_repo.definitions``) expose them as a
feature view for training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from domains.contract import DataProduct, FieldSpec, FieldType, Protection, token_field_name

EVENT_TIME_TYPE = pa.timestamp("us", tz="UTC")
"""Arrow type of every time column of the product-event files (the contract's
``event_time`` field included): UTC instants with microsecond precision."""


def events_folder_name(product: str) -> str:
    """Name of the offline folder holding ``product``'s pseudonymised events."""
    return f"{product}_events"


def event_schema(product: DataProduct) -> pa.Schema:
    """The typed columns of ``product``'s event files: the product event's fields.

    Exactly the fields the stream processor publishes to ``<domain>.<product>.v1``:
    dropped fields are absent, tokenised ones appear as ``<field>_token`` (the privacy
    unit's token in ``product.subject_field``), generalised ones in their coarse form.
    Timestamps (the contract's ``event_time`` included, under its own name) are
    ``EVENT_TIME_TYPE``, a ``truncate_time`` generalisation as well; dates are ``date32``;
    ints ``int64``; floats ``float64``; everything else ``string``. Each column carries
    its field's privacy tag and protection as Arrow field metadata.
    """
    columns: list[pa.Field] = []
    for spec in product.fields:
        if spec.protection is Protection.DROP:
            continue
        name = token_field_name(spec.name) if spec.protection is Protection.TOKENISE else spec.name
        metadata = {"privacy_tag": spec.tag.value, "protection": spec.protection.value}
        columns.append(pa.field(name, _event_type(spec), not spec.required, metadata))
    return pa.schema(columns)


def _event_type(spec: FieldSpec) -> pa.DataType:
    if spec.protection is Protection.TOKENISE:
        return pa.string()
    if spec.protection is Protection.GENERALISE:
        assert spec.generalise is not None  # the contract requires it
        return EVENT_TIME_TYPE if spec.generalise.method == "truncate_time" else pa.string()
    return {
        FieldType.INT: pa.int64(),
        FieldType.FLOAT: pa.float64(),
        FieldType.TIMESTAMP: EVENT_TIME_TYPE,
        FieldType.DATE: pa.date32(),
    }.get(spec.type, pa.string())


def event_table(schema: pa.Schema, events: Sequence[dict[str, Any]]) -> pa.Table:
    """Product events (the published dicts) as a table of ``schema`` (``event_schema``).

    Absent optional fields become nulls; time fields arrive as ISO 8601 text with an
    offset, or as epoch seconds (``truncate_time``), and are stored as UTC instants.
    """
    arrays: list[pa.Array] = []
    for column in schema:
        values = [e.get(column.name) for e in events]
        if column.type == EVENT_TIME_TYPE:
            arrays.append(_instants(values))
        elif column.type == pa.date32():
            arrays.append(pa.array(values, pa.string()).cast(pa.date32()))
        else:
            arrays.append(pa.array(values, column.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _instants(values: list[Any]) -> pa.Array:
    """UTC instants from ISO 8601 texts with offsets or epoch seconds (one kind per column)."""
    if any(isinstance(v, int | float) for v in values):
        seconds = pa.array(values, pa.float64())
        micros = pc.round(pc.multiply(seconds, 1_000_000)).cast(pa.int64())
        return micros.cast(EVENT_TIME_TYPE)
    return pa.array(values, pa.string()).cast(EVENT_TIME_TYPE)
