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

Every step's parameters sit in one ``ConfigRecord`` named ``privmesh`` (keys
``<step>.<name>``), answers likewise; arrays travel in ``ArrayRecord`` s. A domain that cannot
do a step answers ``privmesh.error`` (code, message, domain) instead of failing silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from numpy.typing import NDArray

RECORD = "privmesh"
ERROR_RECORD = "privmesh.error"
MODEL_RECORD = "privmesh.model"
UPDATE_RECORD = "privmesh.update"
STANDARD_RECORD = "privmesh.standardisation"
"""The pooled column means and standard deviations the model's inputs are scaled by."""

CENSUS = "census"
KEYGEN = "keygen"
SHARE_KEYS = "share_keys"
COLLECT = "collect"
UNMASK = "unmask"
EVALUATE = "evaluate"
STEP_NAMES = (CENSUS, KEYGEN, SHARE_KEYS, COLLECT, UNMASK, EVALUATE)

ConfigValue = Any


def _record(steps: Mapping[str, Mapping[str, Any]]) -> ConfigRecord:
    """Every step's values in one record (``<step>.<key>``): Flower moves each record as
    an object of its own, so one record per message saves round trips."""
    values: dict[str, ConfigValue] = {"steps": list(steps)}
    for step, entries in steps.items():
        values.update({f"{step}.{key}": value for key, value in entries.items()})
    return ConfigRecord(values)


def request(
    steps: Mapping[str, Mapping[str, Any]], arrays: Mapping[str, list[NDArray[Any]]] | None = None
) -> RecordDict:
    """Content of a message asking for ``steps`` (in order) with their parameters."""
    content = RecordDict()
    content.config_records[RECORD] = _record(steps)
    for name, values in (arrays or {}).items():
        content.array_records[name] = arrays_record(values)
    return content


def reply(
    answers: Mapping[str, Mapping[str, Any]], arrays: Mapping[str, list[NDArray[Any]]]
) -> RecordDict:
    """Content of the answer to ``answers``' steps."""
    return request(answers, arrays)


def steps_of(content: RecordDict) -> list[str]:
    """The steps a request asks for (or a reply answers), in order."""
    record = content.config_records.get(RECORD)
    if record is None:
        return []
    steps = [str(s) for s in cast(list[str], record["steps"])]
    unknown = [s for s in steps if s not in STEP_NAMES]
    if unknown:
        raise ValueError(f"unknown privmesh steps {unknown}")
    return steps


def has_step(content: RecordDict, step: str) -> bool:
    """Whether ``content`` carries ``step``."""
    return step in steps_of(content)


def params(content: RecordDict, step: str) -> dict[str, Any]:
    """The parameters (or answers) of ``step``."""
    if not has_step(content, step):
        raise KeyError(f"the message carries no {step} step")
    record = content.config_records[RECORD]
    prefix = f"{step}."
    return {key[len(prefix) :]: value for key, value in record.items() if key.startswith(prefix)}


def arrays_record(values: list[NDArray[Any]]) -> ArrayRecord:
    """Numpy arrays, in order, as an ArrayRecord (models travel as one flat array: one
    object to move instead of one per layer)."""
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
