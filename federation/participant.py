"""A domain's side of a federated run: its data, local training and SecAgg+ steps.

The ClientApp (``federation.client_app``) hands every message here. Data is read once
per run from the domain's own Feast store (``census``) and kept in process memory for
the run's later messages; the SecAgg+ secrets live in the run's ``context.state``, which
Flower keeps between messages. Nothing here sends a row, a token or a per-record value
off the domain: only model updates (clipped, and masked under SecAgg+), example counts
and evaluation metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from federation import wire
from federation.dp import gaussian_noise
from federation.dp_sgd import moments_bound, noisy_moments
from federation.errors import FederationError
from federation.features import Dataset, Encoding, load_dataset
from federation.model import (
    build_model,
    check_data,
    evaluate,
    get_weights,
    set_weights,
    unflatten,
)
from federation.rounds import local_update
from federation.run_config import RunConfig
from federation.secagg.client import RoundSecrets, SecAggClient
from federation.secagg.protocol import quantise, weight_share
from federation.standardise import MOMENTS_BOUND, Standardisation, local_moments
from federation.task_specs import TaskSpec

log = logging.getLogger("privmesh.federation")

SECRETS_PREFIX = "privmesh.secagg."
SCORE_BINS = 1000
"""Evaluation returns class counts over this many score bins, for a pooled AUC."""


@dataclass
class RunData:
    """What a domain loaded for one run."""

    task: TaskSpec
    encoding: Encoding
    dataset: Dataset
    scaled: tuple[bytes, Dataset] | None = None
    """The dataset standardised by the run's statistics (their bytes as the key)."""

    def rows(self, message: Message) -> Dataset:
        """The dataset as the message's model reads it: standardised by the pooled
        statistics the message carries, or as encoded."""
        if wire.STANDARD_RECORD not in message.content.array_records:
            return self.dataset
        arrays = wire.arrays_of(message.content, wire.STANDARD_RECORD)
        key = b"".join(np.asarray(a, dtype=np.float64).tobytes() for a in arrays)
        if self.scaled is None or self.scaled[0] != key:
            scaling = Standardisation.from_arrays(arrays, self.encoding.width)
            d = self.dataset
            scaled = Dataset(
                scaling.apply(d.x_train),
                d.y_train,
                scaling.apply(d.x_test),
                d.y_test,
                d.without_label,
            )
            self.scaled = (key, scaled)
        return self.scaled[1]


_RUNS: dict[tuple[int, int], RunData] = {}
"""Loaded data by (run, node): one runner serves one node, tests serve several."""
_KEEP_RUNS = 2


class _Secrets(MutableMapping[int, RoundSecrets]):
    """SecAgg+ round secrets stored in the run context's config records."""

    def __init__(self, context: Context) -> None:
        self.records = context.state.config_records

    def __getitem__(self, round_: int) -> RoundSecrets:
        record = self.records.get(f"{SECRETS_PREFIX}{round_}")
        if record is None:
            raise KeyError(round_)
        return RoundSecrets.from_record(record)

    def __setitem__(self, round_: int, value: RoundSecrets) -> None:
        self.records[f"{SECRETS_PREFIX}{round_}"] = ConfigRecord(value.to_record())  # type: ignore[arg-type]

    def __delitem__(self, round_: int) -> None:
        del self.records[f"{SECRETS_PREFIX}{round_}"]

    def __iter__(self) -> Iterator[int]:
        return (
            int(k[len(SECRETS_PREFIX) :])
            for k in list(self.records)
            if k.startswith(SECRETS_PREFIX)
        )

    def __len__(self) -> int:
        return sum(1 for _ in self)


def domain_of(context: Context) -> str:
    """The domain this SuperNode serves (its ``--node-config domain=...``)."""
    domain = context.node_config.get("domain")
    if not isinstance(domain, str) or not domain:
        raise FederationError(
            "this SuperNode has no domain: start it with --node-config 'domain=\"<name>\"'"
        )
    return domain


def handle(message: Message, context: Context) -> Message:
    """Run the steps ``message`` asks for; a domain-side failure becomes an error reply."""
    domain = "?"
    try:
        domain = domain_of(context)
        config = RunConfig.from_flower(context.run_config)
        answers: dict[str, dict[str, Any]] = {}
        arrays: dict[str, list[Any]] = {}
        for step in wire.steps_of(message.content):
            began = time.perf_counter()
            answer, produced = _STEPS[step](message, context, domain, config)
            answer["seconds"] = time.perf_counter() - began  # the domain's compute, no data
            answers[step] = answer
            arrays.update(produced)
        return Message(wire.reply(answers, arrays), reply_to=message)
    except FederationError as exc:
        log.warning("domain %s refused a request: %s [%s]", domain, exc, exc.code)
        return Message(wire.error_reply(exc.code, str(exc), domain), reply_to=message)
    except Exception as exc:  # a bug or a broken store: still name the domain and the cause
        log.exception("domain %s failed a request", domain)
        reason = f"{type(exc).__name__}: {exc}"
        return Message(wire.error_reply("internal_error", reason, domain), reply_to=message)


Answer = tuple[dict[str, Any], dict[str, list[Any]]]


def _census(message: Message, context: Context, domain: str, config: RunConfig) -> Answer:
    from domains.registry import get_contract
    from domains.runtime import get_runtime_settings
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore

    request = wire.params(message.content, wire.CENSUS)
    task = TaskSpec.model_validate_json(str(request["task"]))
    encoding = Encoding.from_json(str(request["encoding"]))
    if domain not in task.domains:
        raise FederationError(f"domain {domain!r} does not take part in task {task.name!r}")
    runtime = get_runtime_settings()
    data_dir = context.node_config.get("data-dir") or runtime.data_dir
    store = DomainFeatureStore(
        get_contract(domain), Path(str(data_dir)).resolve(), FeatureStoreSettings()
    )
    store.apply()  # idempotent: the definitions this privmesh version reads with
    dataset = load_dataset(store, task, encoding)
    check_data(dataset.x_train, dataset.y_train, encoding.width)
    if len(dataset.y_test):
        check_data(dataset.x_test, dataset.y_test, encoding.width)
    if config.record_dp.enabled:  # refuses (with the reason) a target no noise can meet
        config.record_plan(dataset.train_examples)
    _RUNS[(context.run_id, context.node_id)] = RunData(task, encoding, dataset)
    runs = sorted({run for run, _ in _RUNS})
    for old in [key for key in _RUNS if key[0] in runs[:-_KEEP_RUNS]]:
        del _RUNS[old]
    answer = {
        "domain": domain,
        "train_examples": dataset.train_examples,
        "test_examples": len(dataset.y_test),
        "without_label": dataset.without_label,
        "features": encoding.width,
    }
    return answer, {}


def _run_data(context: Context) -> RunData:
    data = _RUNS.get((context.run_id, context.node_id))
    if data is None:
        raise FederationError(
            "this domain has not loaded the run's data (its process restarted after the "
            "census); it sits out until the coordinator re-admits it"
        )
    return data


def _keygen(message: Message, context: Context, domain: str, config: RunConfig) -> Answer:
    round_ = int(wire.params(message.content, wire.KEYGEN)["round"])
    client = SecAggClient(context.node_id, _Secrets(context))
    pk1, pk2 = client.keygen(round_)
    return {"round": round_, "pk1": pk1, "pk2": pk2}, {}


def _share_keys(message: Message, context: Context, domain: str, config: RunConfig) -> Answer:
    request = wire.params(message.content, wire.SHARE_KEYS)
    round_ = int(request["round"])
    keys = wire.pairs(
        cast(list[int], request["nodes"]),
        cast(list[bytes], request["pk1"]),
        cast(list[bytes], request["pk2"]),
    )
    client = SecAggClient(context.node_id, _Secrets(context))
    destinations, ciphertexts = client.share_keys(round_, int(request["threshold"]), keys)
    return {"round": round_, "destinations": destinations, "ciphertexts": ciphertexts}, {}


def _collect(message: Message, context: Context, domain: str, config: RunConfig) -> Answer:
    request = wire.params(message.content, wire.COLLECT)
    round_ = int(request["round"])
    data = _run_data(context)
    secure = bool(request["secure"])
    client = SecAggClient(context.node_id, _Secrets(context))
    if secure:  # check the shares before spending time on training
        client.receive_shares(
            round_, cast(list[int], request["sources"]), cast(list[bytes], request["ciphertexts"])
        )
    if bool(request.get("statistics", False)):
        return _statistics(client, data, request, round_, secure, config)
    model = build_model(data.task.model.kind, data.encoding.width, data.task.model.hidden)
    global_weights = _model_weights(message, model)
    set_weights(model, global_weights)
    answer: dict[str, Any] = {"round": round_}
    rows = data.rows(message)
    if bool(request["evaluate"]):
        answer.update(_evaluation(model, rows))
    norm, participants = _round_clipping(request, config, data.task)
    update = local_update(
        model,
        rows.x_train,
        rows.y_train,
        config,
        round_,
        domain,
        clipping_norm=norm,
        participants=participants,
    )
    # With DP, nothing computed from the domain's rows leaves but the noised update (and,
    # with adaptive clipping, the noised clipped bit inside it): its training loss and
    # whether clipping bound are withheld (NaN / False).
    answer["train_loss"] = float("nan") if config.private else update.loss
    # (server-side DP: the coordinator sees the update anyway and needs the flag as the
    # adaptive clipping bit)
    answer["clipped"] = update.clipped and not (
        config.dp.enabled and config.dp.clipping == "client"
    )
    answer["weight"] = update.weight
    vector = update.delta if update.bit is None else np.append(update.delta, update.bit)
    if not secure:
        return answer, {wire.UPDATE_RECORD: [vector.astype(np.float32)]}
    if config.dp.enabled and participants != int(request["weight_total"]):
        raise FederationError(
            "the round's noise is sized for a domain count other than the domains that "
            "shared keys (their uniform DP weights); refusing to under-noise the update"
        )
    share = weight_share(update.weight, int(request["weight_total"]))
    quantised = quantise(vector, float(request["scale"]), float(request["bound"]), share)
    masked = client.mask(round_, quantised)
    return answer, {wire.UPDATE_RECORD: [masked]}


def _round_clipping(
    request: dict[str, Any], config: RunConfig, task: TaskSpec
) -> tuple[float, int | None]:
    """The round's clipping norm and the domain count its noise is sized for, as the
    coordinator sent them, checked: the norm is public (a wrong one costs utility, not
    privacy: noise scales with it), but a count above the task's domains would shrink
    every domain's noise, so it is refused."""
    norm = float(request.get("clipping_norm", config.dp.clipping_norm))
    if not (norm > 0 and np.isfinite(norm)):
        raise FederationError("the round's clipping norm must be a positive number")
    raw = request.get("participants")
    if raw is None:
        return norm, None
    participants = int(raw)
    if not 1 <= participants <= len(task.domains):
        raise FederationError(
            f"the round's noise would be sized for {participants} domains; the task has "
            f"{len(task.domains)}: refusing to under-noise the update"
        )
    return norm, participants


def _statistics(
    client: SecAggClient,
    data: RunData,
    request: dict[str, Any],
    round_: int,
    secure: bool,
    config: RunConfig,
) -> Answer:
    """The domain's column moments over its training rows, weighted by its row count:
    masked under SecAgg+, so that only their pooled mean is ever learnt; with
    record-level DP, each row's part clipped and the sum noised (``noisy_moments``)."""
    if config.record_dp.enabled:
        moments = noisy_moments(
            data.dataset.x_train,
            moments_bound(data.encoding.nonzero_per_row),
            config.record_dp.statistics_noise,
            gaussian_noise,
        )
    else:
        moments = local_moments(data.dataset.x_train)
    weight = data.dataset.train_examples
    answer = {"round": round_, "train_loss": float("nan"), "clipped": False, "weight": weight}
    if not secure:
        return answer, {wire.UPDATE_RECORD: [moments]}
    share = weight_share(weight, int(request["weight_total"]))
    quantised = quantise(moments, float(request["scale"]), MOMENTS_BOUND, share)
    return answer, {wire.UPDATE_RECORD: [client.mask(round_, quantised)]}


def _unmask(message: Message, context: Context, domain: str, config: RunConfig) -> Answer:
    request = wire.params(message.content, wire.UNMASK)
    round_ = int(request["round"])
    client = SecAggClient(context.node_id, _Secrets(context))
    owners, shares = client.reveal(
        round_, cast(list[int], request["active"]), cast(list[int], request["dead"])
    )
    return {"round": round_, "owners": owners, "shares": shares}, {}


def _evaluate(message: Message, context: Context, domain: str, config: RunConfig) -> Answer:
    data = _run_data(context)
    model = build_model(data.task.model.kind, data.encoding.width, data.task.model.hidden)
    set_weights(model, _model_weights(message, model))
    return _evaluation(model, data.rows(message)), {}


def _model_weights(message: Message, model: Any) -> list[Any]:
    """The global model the message carries (one flat vector) in the model's shapes."""
    (flat,) = wire.arrays_of(message.content, wire.MODEL_RECORD)
    return unflatten(np.asarray(flat), [tuple(w.shape) for w in get_weights(model)])


def _evaluation(model: Any, dataset: Dataset) -> dict[str, Any]:
    """Loss, AUC and score histograms per class on the held-out rows (nothing per row)."""
    import torch

    if not len(dataset.y_test):
        return {"eval_examples": 0}
    result = evaluate(model, dataset.x_test, dataset.y_test)
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.as_tensor(dataset.x_test)).reshape(-1)).numpy()
    bins = np.minimum((scores * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
    positives = np.bincount(bins[dataset.y_test == 1], minlength=SCORE_BINS)
    negatives = np.bincount(bins[dataset.y_test == 0], minlength=SCORE_BINS)
    return {
        "eval_loss": result.loss,
        "eval_auc": result.auc,
        "eval_examples": result.examples,
        "eval_positives": [int(v) for v in positives],
        "eval_negatives": [int(v) for v in negatives],
    }


_STEPS = {
    wire.CENSUS: _census,
    wire.KEYGEN: _keygen,
    wire.SHARE_KEYS: _share_keys,
    wire.COLLECT: _collect,
    wire.UNMASK: _unmask,
    wire.EVALUATE: _evaluate,
}
