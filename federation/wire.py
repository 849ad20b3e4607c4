"""What privmesh's ServerApp and ClientApps say to each other, as Flower records.

A message carries one or more *steps*, run in order by the domain (so a SecAgg+ round
needs two exchanges, not four: the unmasking of round r travels with the key sharing
of round r+1, and the key generation of round r+1 with the training of round r):

``census``      load and check the domain's data for the task; report example counts
``keygen``      fresh SecAgg+ key pairs for a round; report the public keys
``share_keys``  secret-share the round's mask seed and key among the neighbours
``collect``     evaluate the received global model, train, clip (and noise), return the
                update: masked and quantised under SecAgg+, else in clear
``unmask``      reveal shares so the server can remove the masks of a round
``evaluate``    evaluate a model on the domain's held-out rows

Every step's parameters sit in a ``ConfigRecord`` named ``privmesh.<step>`` and its
answer in one of the same name; arrays travel in ``ArrayRecord`` s. A domain that cannot
do a step answers ``privmesh.error`` (code, message, domain) instead of failing silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from numpy.typing import NDArray

STEPS_RECORD = "privmesh.steps"
ERROR_RECORD = "privmesh.error"
MODEL_RECORD = "privmesh.model"
UPDATE_RECORD = "privmesh.update"

CENSUS = "census"
KEYGEN = "keygen"
SHARE_KEYS = "share_keys"
COLLECT = "collect"
UNMASK = "unmask"
EVALUATE = "evaluate"
STEP_NAMES = (CENSUS, KEYGEN, SHARE_KEYS, COLLECT, UNMASK, EVALUATE)


def record_name(step: str) -> str:
    """The ConfigRecord holding ``step``'s parameters (requests) or answers (replies)."""
    return f"privmesh.{step}"


def request(
    steps: Mapping[str, Mapping[str, Any]], arrays: Mapping[str, list[NDArray[Any]]] | None = None
) -> RecordDict:
    """Content of a message asking for ``steps`` (in order) with their parameters."""
    content = RecordDict()
    content.config_records[STEPS_RECORD] = ConfigRecord({"steps": list(steps)})
    for step, params in steps.items():
        content.config_records[record_name(step)] = ConfigRecord(dict(params))
    for name, values in (arrays or {}).items():
        content.array_records[name] = arrays_record(values)
    return content


def steps_of(content: RecordDict) -> list[str]:
    """The steps a request asks for, in order."""
    record = content.config_records.get(STEPS_RECORD)
    if record is None:
        return []
    steps = [str(s) for s in cast(list[str], record["steps"])]
    unknown = [s for s in steps if s not in STEP_NAMES]
    if unknown:
        raise ValueError(f"unknown privmesh steps {unknown}")
    return steps


def params(content: RecordDict, step: str) -> ConfigRecord:
    """The parameters (or answers) of ``step``."""
    record = content.config_records.get(record_name(step))
    if record is None:
        raise KeyError(f"the message carries no {record_name(step)} record")
    return record


def arrays_record(values: list[NDArray[Any]]) -> ArrayRecord:
    """Numpy arrays, in order, as an ArrayRecord."""
    return ArrayRecord({str(i): Array(np.ascontiguousarray(v)) for i, v in enumerate(values)})


def arrays_of(content: RecordDict, name: str) -> list[NDArray[Any]]:
    """The numpy arrays of ArrayRecord ``name``, in order."""
    record = content.array_records[name]
    return [record[str(i)].numpy() for i in range(len(record))]


def error_reply(code: str, message: str, domain: str) -> RecordDict:
    """A domain's structured refusal of a request."""
    content = RecordDict()
    content.config_records[ERROR_RECORD] = ConfigRecord(
        {"code": code, "message": message, "domain": domain}
    )
    return content


def error_of(content: RecordDict) -> tuple[str, str, str] | None:
    """(code, message, domain) of a structured refusal, or None."""
    record = content.config_records.get(ERROR_RECORD)
    if record is None:
        return None
    return str(record["code"]), str(record["message"]), str(record["domain"])


def pairs(
    ids: list[int], first: list[bytes], second: list[bytes]
) -> dict[int, tuple[bytes, bytes]]:
    """Parallel lists back into ``{node: (first, second)}``."""
    return {int(n): (bytes(a), bytes(b)) for n, a, b in zip(ids, first, second, strict=True)}
