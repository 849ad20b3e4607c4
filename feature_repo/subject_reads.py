"""A domain's per-subject data read without Feast: the online features of its sqlite store
and the folders of its pseudonymised events.

What a data-subject access request reads (``governance.dsr``): a short-lived command that would
otherwise import Feast (seconds) to look up a few keys. The sqlite online store's layout
is Feast's own (``DomainFeatureStore`` writes it): one table per feature view named
``<project>_<view>``, rows ``(entity_key, feature_name, value)`` with the entity key
serialised as Feast's ``serialize_entity_key`` version 3 and the value a serialised
``feast.types.Value`` protobuf. ``tests/feature_repo/test_subject_reads.py`` checks the
answers against ``DomainFeatureStore.subject_features`` on a real store.
"""

from __future__ import annotations

import sqlite3
import struct
from contextlib import closing
from pathlib import Path
from typing import Any

from domains.contract import DataProduct, DomainContract
from feature_repo.errors import UnreadableValue
from feature_repo.names import SUBJECT_KEY, feast_project
from feature_repo.specs import product_views

_STRING, _INT32, _INT64, _DOUBLE, _FLOAT, _BOOL = 2, 3, 4, 5, 6, 7  # Value.proto's fields
_NULL = 19
_SQLITE_CHUNK = 900  # bound parameters per query (sqlite builds before 3.32 allow 999)


def subject_key(token: str) -> bytes:
    """Feast's serialised entity key (version 3) of one subject token."""
    name, value = SUBJECT_KEY.encode(), token.encode()
    return (
        struct.pack("<I", 1)
        + struct.pack("<II", _STRING, len(name))
        + name
        + struct.pack("<II", _STRING, len(value))
        + value
    )


def _varint(blob: bytes, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = blob[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, at
        shift += 7


def decode_value(blob: bytes) -> Any:
    """A stored scalar ``feast.types.Value`` as Feast's ``to_dict`` gives it (None: unset)."""
    tag, at = _varint(blob, 0) if blob else (_NULL << 3, 0)
    field, wire = tag >> 3, tag & 7
    if field in (_INT64, _INT32, _BOOL) and wire == 0:
        number, _ = _varint(blob, at)
        if field == _BOOL:
            return bool(number)
        return number - (1 << 64) if number >= 1 << 63 else number  # two's complement
    if field == _DOUBLE and wire == 1:
        return struct.unpack_from("<d", blob, at)[0]
    if field == _FLOAT and wire == 5:
        return struct.unpack_from("<f", blob, at)[0]
    if field == _STRING and wire == 2:
        length, at = _varint(blob, at)
        return blob[at : at + length].decode()
    if field != _NULL:
        raise UnreadableValue(f"online value field {field} is not a scalar this reader decodes")
    return None


class SqliteSubjectReader:
    """Per-subject reads of one domain's sqlite online store and event folders: the
    ``events_folder`` and ``subject_features`` of ``DomainFeatureStore``, without Feast."""

    def __init__(self, contract: DomainContract, data_dir: Path) -> None:
        self.contract = contract
        self.directory = (data_dir / "features" / contract.domain).resolve()
        self.views = {p.name: product_views(p) for p in contract.products}

    def events_folder(self, product: DataProduct | str) -> Path:
        """Folder of ``product``'s pseudonymised event part files."""
        from feature_repo.events import events_folder_name

        name = product if isinstance(product, str) else product.name
        return self.directory / "offline" / events_folder_name(name)

    def subject_features(self, product: str, subjects: list[str]) -> list[dict[str, Any]]:
        """Online per-subject features (None values for unknown subjects, and for every
        subject while the store or the view's table does not exist)."""
        view = self.views[product].subject
        names = view.feature_names
        found = self._read(f"{feast_project(self.contract.domain)}_{view.name}", subjects)
        return [
            {SUBJECT_KEY: s, **{n: found.get(subject_key(s), {}).get(n) for n in names}}
            for s in subjects
        ]

    def _read(self, table: str, subjects: list[str]) -> dict[bytes, dict[str, Any]]:
        path = self.directory / "online.db"
        if not subjects or not path.is_file():
            return {}
        found: dict[bytes, dict[str, Any]] = {}
        keys = list(dict.fromkeys(subject_key(s) for s in subjects))
        with closing(sqlite3.connect(str(path), timeout=5.0)) as conn:
            for start in range(0, len(keys), _SQLITE_CHUNK):
                chunk = keys[start : start + _SQLITE_CHUNK]
                try:
                    rows = conn.execute(
                        f'SELECT entity_key, feature_name, value FROM "{table}" '  # noqa: S608
                        f"WHERE entity_key IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                except sqlite3.OperationalError:  # no table: the views were never applied
                    return {}
                for key, feature, blob in rows:
                    found.setdefault(bytes(key), {})[feature] = decode_value(blob)
        return found
