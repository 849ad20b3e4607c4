"""The ServerApp's run: census, rounds (SecAgg+ or plain), evaluation, registry.

Secure rounds are pipelined over two exchanges each::

    exchange A(r): unmask(r-1) + share_keys(r)      -> model r-1 known
    exchange B(r): collect(r) with model r-1 + keygen(r+1)

so a SecAgg+ round costs two message exchanges instead of Flower's four, and a domain
that dies at any point costs the round nothing while the survivors meet the threshold:
dying before or while sharing keys leaves it out of the round; dying after sharing keys
(no vector) or while unmasking is repaired from the other domains' shares. A round
needs ``min-domains`` vectors. With DP, each collect request carries the round's
clipping norm (adaptive by default) and the number of domains that shared keys, for
which every domain sizes its noise (``federation.dp``); the unmasked sum's last element
is the domains' noisy clipped bits, from which the next round's norm is stepped.
Every exchange ends on a straggler deadline (``federation.messenger``), and each round
takes whoever holds keys for it: nothing waits for a fixed number of domains.

Progress is logged as ``privmesh-event {json}`` lines, which ``flwr run --stream``
shows and ``privmesh train`` turns into a progress bar.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import Context, MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid
from numpy.typing import NDArray

from federation import wire
from federation.aggregation import (
    ServerOptimizer,
    combine,
    fedavg_weight,
    pooled_auc,
    weighted_mean,
)
from federation.dp import Accountant
from federation.dp_sgd import MIN_DP_STD
from federation.errors import FederationError, NotEnoughParticipants, SecAggProtocolError
from federation.features import Encoding, task_encoding
from federation.messenger import Messenger, Request
from federation.model import build_model, flatten, get_weights, parameter_count
from federation.run_config import SERVER_STEPS, RunConfig
from federation.secagg.protocol import (
    choose_scale,
    decode_sum,
    neighbourhood_size,
)
from federation.secagg.server import SecAggRound, public_keys_from
from federation.standardise import MOMENTS_BOUND, Standardisation
from federation.task_specs import TaskSpec, get_task

EVENT_PREFIX = "privmesh-event "
CENSUS_GRACE_FACTOR = 3.0
"""Loading takes as long as a domain's data is large: the census waits for stragglers
three times as long as the majority took (the rounds' straggler factor if larger)."""
NOISE_BOUND_SIGMAS = 12.0
"""With client-side noise, SecAgg+ carries values up to C + 12 sigma (a larger one is
refused, never clipped: odds about 1e-32 per element)."""


def emit(kind: str, **fields: Any) -> None:
    """Log one progress event as a JSON line."""
    log(INFO, "%s%s", EVENT_PREFIX, json.dumps({"event": kind, **fields}, default=str))


@dataclass
class Member:
    """A domain that passed the census."""

    node: int
    domain: str
    train_examples: int
    test_examples: int
    without_label: int


@dataclass
class RoundLog:
    """What happened in one round."""

    round: int
    participants: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    released: bool = False
    lost_reason: str = ""
    train_loss: float | None = None
    clipped: int = 0
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    pooled_auc: float | None = None
    seconds: float = 0.0
    exchanges: dict[str, float] = field(default_factory=dict)
    compute: dict[str, float] = field(default_factory=dict)
    """The slowest domain's own compute per step (the rest of an exchange is transport)."""
    privacy: dict[str, float] = field(default_factory=dict)
    clipping_norm: float = 0.0
    """The C every update of this round was clipped to."""
    noise_std: float = 0.0
    """With DP: the noise standard deviation per coordinate each domain added (client
    clipping) or the coordinator added to the sum (server clipping)."""
    sized_for: int = 0
    """With DP: the domains the noise was sized for (those that shared keys / were asked)."""
    positives: NDArray[np.int64] | None = None
    negatives: NDArray[np.int64] | None = None

    def add_histograms(self, answer: Any) -> None:
        """Add one domain's evaluation class counts; refresh the pooled AUC."""
        pos = np.asarray(answer["eval_positives"], dtype=np.int64)
        neg = np.asarray(answer["eval_negatives"], dtype=np.int64)
        self.positives = pos if self.positives is None else self.positives + pos
        self.negatives = neg if self.negatives is None else self.negatives + neg
        self.pooled_auc = pooled_auc(self.positives, self.negatives)


class Coordinator:
    """Runs one federated training job on a Flower Grid."""

    def __init__(self, grid: Grid, context: Context, poll_seconds: float) -> None:
        from domains.registry import load_contracts

        self.grid = grid
        self.context = context
        self.config = RunConfig.from_flower(context.run_config)
        self.task: TaskSpec = get_task(self.config.task)
        self.encoding: Encoding = task_encoding(self.task, load_contracts())
        self.messenger = Messenger(
            grid, poll_seconds, self.config.straggler_grace, self.config.straggler_factor
        )
        import torch

        torch.manual_seed(self.config.train.seed)
        model = build_model(self.task.model.kind, self.encoding.width, self.task.model.hidden)
        initial = get_weights(model)
        self.shapes = [tuple(w.shape) for w in initial]
        self.parameters = parameter_count(model)
        self.weights: NDArray[np.float64] = flatten(initial)
        step = self.config.aggregator if self.config.aggregator in SERVER_STEPS else "fedavg"
        self.optimizer = ServerOptimizer(
            self.config.server_learning_rate, self.config.server_momentum, step
        )
        self.standardisation: Standardisation | None = None
        self.stopping = Stopping(self.config.patience)
        self.accountant = Accountant(self.config.dp) if self.config.dp.enabled else None
        self.clipping = self.config.dp.adaptive_clipping()
        self.charges: list[tuple[int, int]] = []
        """Each unmasked DP round as (vectors in the sum, domains its noise was sized for)."""
        self.members: dict[int, Member] = {}
        self._asked: set[int] = set()
        self.refused: dict[str, str] = {}
        self.rounds: list[RoundLog] = []
        self.released = 0
        self.final: dict[str, dict[str, float]] = {}
        self.final_auc: float | None = None
        self.started = datetime.now(UTC)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Train; the lineage document of the result (weights in ``self.weights``)."""
        emit(
            "run_started",
            task=self.task.name,
            domains=self.task.domains,
            rounds=self.config.rounds,
            secure_aggregation=self.config.secure_aggregation,
            dp=self.config.dp.enabled,
            parameters=self.parameters,
            features=self.encoding.width,
        )
        keys = self._census()
        if self.config.secure_aggregation:
            self._secure_rounds(keys)
        else:
            if self.config.standardises:
                self._plain_statistics()
            self._plain_rounds()
        self._final_evaluation()
        best = self.stopping.best
        if best is not None and best[0] < self.released:
            self.weights = best[1]  # an earlier round's model was better on held-out rows
            self._final_evaluation()
        self.weights = self._raw_weights(self.weights)
        return self.lineage()

    # ------------------------------------------------------------------ standardisation
    def _model_arrays(self, weights: NDArray[np.float64]) -> dict[str, list[NDArray[Any]]]:
        """A model message's arrays: the weights, and the run's standardisation if any."""
        arrays: dict[str, list[NDArray[Any]]] = {wire.MODEL_RECORD: [weights.astype(np.float32)]}
        if self.standardisation is not None:
            arrays[wire.STANDARD_RECORD] = self.standardisation.arrays()
        return arrays

    def _raw_weights(self, weights: NDArray[np.float64]) -> NDArray[np.float64]:
        """``weights`` rewritten to take the raw encoded columns (the registry's form)."""
        if self.standardisation is None:
            return weights
        first = 1 if self.task.model.kind == "logistic_regression" else self.task.model.hidden[0]
        return self.standardisation.fold(weights, self.encoding.width, first)

    def _standardised(self, moments: NDArray[np.float64], record: RoundLog) -> None:
        """Round 0's outcome: the pooled column statistics every later message carries."""
        floor = MIN_DP_STD if self.config.record_dp.enabled else None
        self.standardisation = Standardisation.from_moments(moments, floor)
        emit(
            "standardised",
            columns=len(self.standardisation.mean),
            participants=record.participants,
            seconds=round(record.seconds, 3),
        )

    def _plain_statistics(self) -> None:
        """Without SecAgg+, the domains' moments are averaged in clear, like their updates."""
        began = time.monotonic()
        record = RoundLog(0)
        nodes = self._idle_online(set())
        step = {wire.COLLECT: {"round": 0, "secure": False, "statistics": True}}
        outcome, _ = self.messenger.exchange(
            {n: Request(MessageType.TRAIN, wire.request(step)) for n in nodes},
            quorum=_majority(len(nodes)),
            timeout=self.config.stage_timeout,
            group="0",
        )
        vectors, weights = [], []
        for node, reply in outcome.replies.items():
            (vector,) = wire.arrays_of(reply, wire.UPDATE_RECORD)
            if len(vector) == 2 * self.encoding.width and np.isfinite(vector).all():
                vectors.append(np.asarray(vector, dtype=np.float64))
                weights.append(self.members[node].train_examples)
                record.participants.append(self._domain(node))
        record.seconds = time.monotonic() - began
        if len(vectors) >= self.config.min_domains:
            self._standardised(weighted_mean(vectors, weights), record)

    @property
    def clipping_norm(self) -> float:
        """The next round's clipping norm: adaptive with DP (by default), else fixed."""
        return self.clipping.norm if self.clipping is not None else self.config.dp.clipping_norm

    @property
    def _bits(self) -> bool:
        """Whether each domain's update carries its noisy clipped bit as a last element."""
        return self.clipping is not None and self.config.dp.clipping == "client"

    def _prepare_noise(self, record: RoundLog, participants: int) -> float:
        """Fix the round's clipping norm and noise for ``participants`` domains; the
        largest magnitude an element of a domain's vector may have (SecAgg+'s bound)."""
        dp = self.config.dp
        record.clipping_norm = self.clipping_norm
        bound = record.clipping_norm
        if not dp.enabled:
            return bound
        record.sized_for = participants
        z = dp.update_noise_multiplier
        if dp.clipping == "server":
            record.noise_std = z * record.clipping_norm
            return bound
        record.noise_std = dp.domain_scale(participants, z, record.clipping_norm)
        bound += NOISE_BOUND_SIGMAS * record.noise_std
        if self.clipping is not None:
            bound = max(bound, self.clipping.bits_limit(participants))
        return bound

    def _collect_params(self, record: RoundLog) -> dict[str, Any]:
        """What a domain needs to clip and noise its update as the round prescribes."""
        params: dict[str, Any] = {"clipping_norm": record.clipping_norm}
        if self.config.dp.enabled:
            params["participants"] = record.sized_for
        return params

    def _weight(self, node: int) -> int:
        return fedavg_weight(self.members[node].train_examples, self.config.dp.enabled)

    def _domain(self, node: int) -> str:
        found = self.members.get(node)
        return found.domain if found else f"node-{node}"

    # ------------------------------------------------------------------ census
    def _census(self) -> dict[int, tuple[bytes, bytes]]:
        nodes = self._wait_for_nodes()
        self._asked.update(nodes)
        steps = self._census_step()
        if self.config.secure_aggregation:
            steps[wire.KEYGEN] = {"round": self._first_round()}
        requests = {n: Request(MessageType.QUERY, wire.request(steps)) for n in nodes}
        outcome, _ = self.messenger.exchange(
            requests,
            quorum=_majority(len(requests)),
            timeout=self.config.census_timeout,
            group="census",
            grace_factor=max(CENSUS_GRACE_FACTOR, self.config.straggler_factor),
        )
        keys: dict[int, tuple[bytes, bytes]] = {}
        for node, content in sorted(outcome.replies.items()):
            answer = wire.params(content, wire.CENSUS)
            domain = str(answer["domain"])
            if any(p.domain == domain for p in self.members.values()):
                self.refused[f"{domain} (node {node})"] = (
                    "the domain is served by another SuperNode"
                )
                continue
            self.members[node] = _member(node, answer)
            if wire.has_step(content, wire.KEYGEN):
                keys[node] = _public_keys(content)
        for node, reason in outcome.failures.items():
            self.refused[outcome.domains.get(node, f"node-{node}")] = reason
        served = {p.domain for p in self.members.values()}
        for domain in self.task.domains:
            if domain not in served and not any(k.startswith(domain) for k in self.refused):
                self.refused[domain] = "no SuperNode of this domain answered"
        emit(
            "census",
            ready={
                p.domain: {"train_examples": p.train_examples, "test_examples": p.test_examples}
                for p in self.members.values()
            },
            refused=self.refused,
        )
        if self.config.record_dp.enabled:
            emit(
                "dp_plan",
                unit="one training row of a domain",
                domains={
                    p.domain: self.config.record_plan(p.train_examples).describe(self.parameters)
                    for p in self.members.values()
                },
            )
        if len(self.members) < self.config.min_domains:
            raise NotEnoughParticipants(
                f"{len(self.members)} of the task's domains can train, min-domains is "
                f"{self.config.min_domains}: "
                + "; ".join(f"{d}: {r}" for d, r in sorted(self.refused.items()))
            )
        return public_keys_from(keys)

    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.config.node_wait_timeout
        wanted = len(self.task.domains)
        nodes = self.messenger.online()
        while len(nodes) < wanted and time.monotonic() < deadline:
            time.sleep(0.2)
            nodes = self.messenger.online()
        if len(nodes) < self.config.min_domains:
            raise NotEnoughParticipants(
                f"{len(nodes)} SuperNodes connected within {self.config.node_wait_timeout:.0f}s; "
                f"the task needs at least min-domains={self.config.min_domains}"
            )
        return sorted(nodes)

    # ------------------------------------------------------------------ secure rounds
    def _first_round(self) -> int:
        """Round 0 is the statistics round of a standardising secure run."""
        return 0 if self.config.secure_aggregation and self.config.standardises else 1

    def _secure_rounds(self, keys: dict[int, tuple[bytes, bytes]]) -> None:
        pending: tuple[SecAggRound, RoundLog, float, float] | None = None
        for r in range(self._first_round(), self.config.rounds + 1):
            if self.stopping.stop:
                break
            began = time.monotonic()
            record = RoundLog(r)
            current = self._open_round(r, keys, record)
            keys = {}
            self._exchange_a(r, current, pending, record)
            pending = None
            self._admit_newcomers()
            if current is None:
                self._lose(record, began)
                keys = self._keygen_only(r + 1)
                continue
            try:
                shared = current.close_sharing()
            except NotEnoughParticipants as exc:
                record.lost_reason = str(exc)
                self._lose(record, began)
                keys = self._keygen_only(r + 1)
                continue
            keys, scale, bound = self._exchange_b(r, current, shared, record)
            try:
                current.close_collect(self.config.min_domains)
            except NotEnoughParticipants as exc:
                record.lost_reason = str(exc)
                self._lose(record, began)
                continue
            record.seconds = time.monotonic() - began
            if r == 0:
                record.participants = sorted(self._domain(n) for n in current.masked)
            pending = (current, record, scale, bound)
        if pending is not None:
            self._exchange_a(self.config.rounds + 1, None, pending, None)

    def _open_round(
        self, r: int, keys: dict[int, tuple[bytes, bytes]], record: RoundLog
    ) -> SecAggRound | None:
        live = {n: k for n, k in keys.items() if n in self.members}
        if len(live) < max(self.config.min_domains, 2):
            record.lost_reason = (
                f"{len(live)} domains hold keys for round {r}; min-domains is "
                f"{self.config.min_domains}"
            )
            return None
        size = neighbourhood_size(self.config.num_shares, len(live))
        try:
            return SecAggRound(
                r,
                live,
                self.config.num_shares,
                self.config.threshold_for(size),
                seed=secrets.randbits(64),
            )
        except FederationError as exc:
            record.lost_reason = str(exc)
            return None

    def _exchange_a(
        self,
        r: int,
        current: SecAggRound | None,
        pending: tuple[SecAggRound, RoundLog, float, float] | None,
        record: RoundLog | None,
    ) -> None:
        """unmask(r-1) for the previous round's senders + share_keys(r) for this round's."""
        previous = pending[0] if pending is not None else None
        steps = _unmask_and_share_steps(r, previous, current)
        requests = {n: Request(MessageType.TRAIN, wire.request(s)) for n, s in steps.items()}
        outcome, _ = self.messenger.exchange(
            requests,
            quorum=_majority(len(requests)),
            timeout=self.config.stage_timeout,
            group=str(r),
        )
        for node, content in outcome.replies.items():
            try:
                if previous is not None and wire.UNMASK in steps[node]:
                    answer = wire.params(content, wire.UNMASK)
                    if pending is not None:
                        _note_compute(pending[1], wire.UNMASK, answer)
                    previous.record_reveal(
                        node, cast(list[int], answer["owners"]), cast(list[bytes], answer["shares"])
                    )
                if current is not None and wire.SHARE_KEYS in steps[node]:
                    answer = wire.params(content, wire.SHARE_KEYS)
                    if record is not None:
                        _note_compute(record, wire.SHARE_KEYS, answer)
                    current.record_shares(
                        node,
                        cast(list[int], answer["destinations"]),
                        cast(list[bytes], answer["ciphertexts"]),
                    )
            except (SecAggProtocolError, KeyError) as exc:
                outcome.failures[node] = f"malformed answer: {exc}"
        if record is not None:
            record.exchanges["share_keys"] = round(outcome.seconds, 3)
            for node in set(outcome.failures) & {n for n in steps if wire.SHARE_KEYS in steps[n]}:
                record.dropped[self._domain(node)] = outcome.failures[node]
        if pending is not None:
            pending[1].exchanges["unmask"] = round(outcome.seconds, 3)
            for node in set(outcome.failures) & {n for n in steps if wire.UNMASK in steps[n]}:
                pending[1].dropped[self._domain(node)] = (
                    f"while unmasking: {outcome.failures[node]}"
                )
            self._finish_secure(*pending)

    def _exchange_b(
        self, r: int, current: SecAggRound, shared: list[int], record: RoundLog
    ) -> tuple[dict[int, tuple[bytes, bytes]], float, float]:
        """collect(r) from the nodes that shared keys, with keygen(r+1)."""
        bound = MOMENTS_BOUND if r == 0 else self._prepare_noise(record, len(shared))
        scale = choose_scale(bound, len(shared))
        current.quantised_weight = sum(self._weight(n) for n in shared)
        sent = self.weights.copy()
        arrays = {} if r == 0 else self._model_arrays(sent)
        requests: dict[int, Request] = {}
        for node in shared:
            sources, ciphertexts = current.shares_for(node)
            steps: dict[str, dict[str, Any]] = {
                wire.COLLECT: {
                    "round": r,
                    "secure": True,
                    "sources": sources,
                    "ciphertexts": ciphertexts,
                    "scale": scale,
                    "bound": bound,
                    "weight_total": current.quantised_weight,
                    "evaluate": r > 0 and self.config.evaluates_before(r),
                    "statistics": r == 0,
                    **({} if r == 0 else self._collect_params(record)),
                },
                wire.KEYGEN: {"round": r + 1},
            }
            requests[node] = Request(MessageType.TRAIN, wire.request(steps, arrays))
        others = self._idle_online(set(shared))
        optional = {
            n: Request(MessageType.TRAIN, wire.request({wire.KEYGEN: {"round": r + 1}}))
            for n in others
        }
        outcome, extra = self.messenger.exchange(
            requests,
            quorum=_majority(len(requests)),
            timeout=self.config.stage_timeout,
            group=str(r),
            optional=optional,
        )
        record.participants = sorted(self._domain(n) for n in shared)
        record.exchanges["collect"] = round(outcome.seconds, 3)
        keys: dict[int, tuple[bytes, bytes]] = {}
        losses: list[tuple[float, int]] = []
        for node, content in outcome.replies.items():
            try:
                answer = wire.params(content, wire.COLLECT)
                weight = int(cast(int, answer["weight"]))
                if weight != self._weight(node):
                    raise SecAggProtocolError(
                        f"weight {weight}, the census said {self._weight(node)}"
                    )
                (vector,) = wire.arrays_of(content, wire.UPDATE_RECORD)
                current.record_masked(node, np.asarray(vector), weight)
            except (SecAggProtocolError, KeyError, ValueError) as exc:
                outcome.failures[node] = f"malformed update: {exc}"
                continue
            self._note_collect(node, answer, record, losses)
            keys[node] = _public_keys(content)
        for node, content in extra.replies.items():
            keys[node] = _public_keys(content)
        for node, reason in outcome.failures.items():
            record.dropped[self._domain(node)] = reason
        record.train_loss = _weighted_loss(losses)
        self.stopping.observe(self.released, sent, record.pooled_auc)
        return public_keys_from(keys), scale, bound

    def _finish_secure(
        self, current: SecAggRound, record: RoundLog, scale: float, bound: float
    ) -> None:
        began = time.perf_counter()
        try:
            total, weight = current.aggregate()
        except NotEnoughParticipants as exc:
            record.lost_reason = f"unmasking failed: {exc}"
            self._report(record)
            return
        mean = decode_sum(total, scale, weight / current.quantised_weight)
        record.compute["server_unmask"] = time.perf_counter() - began
        if record.round == 0:
            self._standardised(mean, record)
            return
        self._apply(mean, record, arrived=len(current.masked))

    def _keygen_only(self, r: int) -> dict[int, tuple[bytes, bytes]]:
        requests = {
            n: Request(MessageType.TRAIN, wire.request({wire.KEYGEN: {"round": r}}))
            for n in self._idle_online(set())
        }
        outcome, _ = self.messenger.exchange(
            requests,
            quorum=_majority(len(requests)),
            timeout=self.config.stage_timeout,
            group=str(r),
        )
        return public_keys_from({n: _public_keys(c) for n, c in outcome.replies.items()})

    def _admit_newcomers(self) -> None:
        """Census for SuperNodes that connected after the run began (answers are picked up
        by later exchanges; admitted domains join once they hold keys for a round)."""
        for node, reply in list(self.messenger.background_replies.items()):
            del self.messenger.background_replies[node]
            if reply.has_error() or wire.error_of(reply.content) is not None:
                continue
            answer = wire.params(reply.content, wire.CENSUS)
            domain = str(answer["domain"])
            if any(m.domain == domain for m in self.members.values()):
                continue
            self.members[node] = _member(node, answer)
            emit("joined", domain=domain, train_examples=self.members[node].train_examples)
        fresh = sorted(self.messenger.online() - set(self.members) - self._asked)
        if fresh:
            self._asked.update(fresh)
            self.messenger.push_background(
                {n: Request(MessageType.QUERY, wire.request(self._census_step())) for n in fresh},
                group="census",
            )

    def _census_step(self) -> dict[str, dict[str, Any]]:
        return {
            wire.CENSUS: {
                "task": self.task.model_dump_json(),
                "encoding": self.encoding.to_json(),
            }
        }

    def _idle_online(self, busy: set[int]) -> list[int]:
        online = self.messenger.online()
        return sorted(n for n in self.members if n in online and n not in busy)

    # ------------------------------------------------------------------ plain rounds
    def _plain_rounds(self) -> None:
        for r in range(1, self.config.rounds + 1):
            if self.stopping.stop:
                break
            began = time.monotonic()
            record = RoundLog(r)
            self._admit_newcomers()
            nodes = self._idle_online(set())
            sent = self.weights.copy()
            self._prepare_noise(record, len(nodes))
            content: dict[str, dict[str, Any]] = {
                wire.COLLECT: {
                    "round": r,
                    "secure": False,
                    "evaluate": self.config.evaluates_before(r),
                    **self._collect_params(record),
                },
            }
            requests = {
                n: Request(MessageType.TRAIN, wire.request(content, self._model_arrays(sent)))
                for n in nodes
            }
            outcome, _ = self.messenger.exchange(
                requests,
                quorum=_majority(len(requests)),
                timeout=self.config.stage_timeout,
                group=str(r),
            )
            record.participants = sorted(self._domain(n) for n in nodes)
            record.exchanges["collect"] = round(outcome.seconds, 3)
            updates: list[NDArray[np.float64]] = []
            weights: list[int] = []
            losses: list[tuple[float, int]] = []
            within: list[bool] = []
            for node, reply in outcome.replies.items():
                answer = wire.params(reply, wire.COLLECT)
                (vector,) = wire.arrays_of(reply, wire.UPDATE_RECORD)
                expected = len(self.weights) + int(self._bits)
                if len(vector) != expected or not np.isfinite(vector).all():
                    outcome.failures[node] = "malformed update"
                    continue
                updates.append(np.asarray(vector, dtype=np.float64))
                weights.append(self._weight(node))
                self._note_collect(node, answer, record, losses)
                within.append(not bool(answer["clipped"]))
            for node, reason in outcome.failures.items():
                record.dropped[self._domain(node)] = reason
            record.train_loss = _weighted_loss(losses)
            record.seconds = time.monotonic() - began
            self.stopping.observe(self.released, sent, record.pooled_auc)
            if len(updates) < self.config.min_domains:
                record.lost_reason = (
                    f"{len(updates)} updates arrived, min-domains is {self.config.min_domains}"
                )
                self._report(record)
                continue
            mean = combine(self.config, updates, weights, clipping_norm=record.clipping_norm)
            bit_sum = None
            if self.clipping is not None and self.config.dp.clipping == "server":
                # the domains clip before sending: their clipped flags are the bits' source
                bit_sum = self.clipping.noisy_bit_sum(within)
            self._apply(mean, record, arrived=len(updates), bit_sum=bit_sum)

    # ------------------------------------------------------------------ shared
    def _note_collect(
        self, node: int, answer: Any, record: RoundLog, losses: list[tuple[float, int]]
    ) -> None:
        _note_compute(record, wire.COLLECT, answer)
        losses.append((float(answer["train_loss"]), self.members[node].train_examples))
        record.clipped += int(bool(answer["clipped"]))
        if int(answer.get("eval_examples", 0)):
            record.evaluation[self._domain(node)] = _metrics(answer)
            record.add_histograms(answer)

    def _apply(
        self,
        mean: NDArray[np.float64],
        record: RoundLog,
        arrived: int,
        bit_sum: float | None = None,
    ) -> None:
        """Charge the round's privacy (its sum is now known), adapt the clipping norm
        from the noisy bits, and apply the mean update unless it is out of bounds."""
        if self._bits:  # the last element: the mean of the domains' noisy centred bits
            bit_sum, mean = float(mean[-1]) * arrived, mean[:-1]
        if self.accountant is not None:
            charge = (  # server-side noise is added to the sum itself: always z * C
                (1, 1)
                if self.config.dp.clipping == "server"
                else (min(arrived, record.sized_for), record.sized_for)
            )
            self.charges.append(charge)
            one = self.accountant.spent_rounds([charge])
            total = self.accountant.spent_rounds(self.charges)
            record.privacy = {
                "rho_round": one.rho,
                "epsilon_round": one.epsilon,
                "rho_total": total.rho,
                "epsilon_total": total.epsilon,
                "delta": total.delta,
            }
        if self.clipping is not None and bit_sum is not None and arrived:
            self.clipping.step(bit_sum, arrived)
        limit = self._update_limit(record)
        length = float(np.linalg.norm(mean))
        if not np.isfinite(length) or length > limit:
            record.lost_reason = (
                f"the aggregate update has norm {length:.4g}, beyond what clipped updates can "
                f"sum to ({limit:.4g}): a domain sent an unclipped update; round discarded"
            )
            self._report(record)
            return
        self.weights = self.optimizer.step(self.weights, mean)
        record.released = True
        self.released += 1
        self._report(record)

    def _update_limit(self, record: RoundLog) -> float:
        """The largest norm a mean of clipped updates can have: the round's clipping norm
        (a mean of vectors no longer than C is no longer than C), plus, with DP, a norm
        the noise in the mean exceeds with probability below 1e-21 (Gaussian norm tail,
        t = 10; the noise of a mean is largest with the fewest contributors)."""
        dp = self.config.dp
        limit = record.clipping_norm * (1 + 1e-9) + 1e-9
        if dp.enabled:
            fewest = max(1, min(dp.min_domains, record.sized_for))
            if dp.clipping == "client":
                sigma = record.noise_std / math.sqrt(fewest)
            else:
                sigma = record.noise_std / fewest
            limit += sigma * (math.sqrt(len(self.weights)) + 10.0)
        return limit

    def _lose(self, record: RoundLog, began: float) -> None:
        record.seconds = time.monotonic() - began
        log(WARNING, "round %s lost: %s", record.round, record.lost_reason)
        self._report(record)

    def _report(self, record: RoundLog) -> None:
        self.rounds.append(record)
        emit(
            "round",
            round=record.round,
            of=self.config.rounds,
            released=record.released,
            lost_reason=record.lost_reason,
            participants=record.participants,
            dropped=record.dropped,
            train_loss=record.train_loss,
            clipped=record.clipped,
            auc_before=record.pooled_auc,
            seconds=round(record.seconds, 3),
            exchanges=record.exchanges,
            compute={k: round(v, 3) for k, v in record.compute.items()},
            privacy=record.privacy,
            clipping_norm=record.clipping_norm,
            noise_std=record.noise_std,
        )

    def _final_evaluation(self) -> None:
        """Evaluate ``self.weights`` on every domain's held-out rows (the final metrics)."""
        arrays = self._model_arrays(self.weights)
        requests = {
            n: Request(MessageType.EVALUATE, wire.request({wire.EVALUATE: {}}, arrays))
            for n in self._idle_online(set())
        }
        outcome, _ = self.messenger.exchange(
            requests,
            quorum=_majority(len(requests)),
            timeout=self.config.stage_timeout,
            group="final",
        )
        totals = RoundLog(0)
        for node, content in outcome.replies.items():
            answer = wire.params(content, wire.EVALUATE)
            if not int(cast(int, answer.get("eval_examples", 0))):
                continue
            self.final[self._domain(node)] = _metrics(answer)
            totals.add_histograms(answer)
        self.final_auc = totals.pooled_auc
        self.stopping.observe(self.released, self.weights, self.final_auc)
        emit("evaluated", pooled_auc=self.final_auc, domains=self.final)

    def lineage(self) -> dict[str, Any]:
        """Everything the registry keeps about this model version (``federation.lineage``)."""
        from federation.lineage import lineage

        return lineage(self)


class Stopping:
    """Validation-based stopping: the best model by pooled held-out AUC so far, and
    whether ``patience`` evaluations in a row failed to beat it (0: never stop).

    A round's training request evaluates the model it carries (``released`` rounds
    applied so far), so a model's AUC is known one exchange after it was built."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: tuple[int, NDArray[np.float64]] | None = None
        self.best_auc: float | None = None
        self.stale = 0
        self.seen: set[int] = set()

    @property
    def stop(self) -> bool:
        """Whether training should end now."""
        return bool(self.patience) and self.stale >= self.patience

    def observe(self, released: int, weights: NDArray[np.float64], auc: float | None) -> None:
        """The pooled AUC of the model after ``released`` rounds (None: not evaluated)."""
        if auc is None or math.isnan(auc) or released in self.seen:
            return
        self.seen.add(released)
        if self.best_auc is None or auc > self.best_auc:
            self.best, self.best_auc, self.stale = (released, weights.copy()), auc, 0
        else:
            self.stale += 1


def _unmask_and_share_steps(
    r: int, previous: SecAggRound | None, current: SecAggRound | None
) -> dict[int, dict[str, dict[str, Any]]]:
    """Per node: unmask(r-1) if it sent a vector in the previous round, share_keys(r) if
    it takes part in this one."""
    steps: dict[int, dict[str, dict[str, Any]]] = {}
    if previous is not None:
        for node in sorted(previous.masked):
            active, dead = previous.unmask_lists(node)
            steps.setdefault(node, {})[wire.UNMASK] = {
                "round": previous.round,
                "active": active,
                "dead": dead,
            }
    if current is not None:
        for node in current.participants():
            neighbours = current.keys_for(node)
            ids = sorted(neighbours)
            steps.setdefault(node, {})[wire.SHARE_KEYS] = {
                "round": r,
                "threshold": current.threshold,
                "nodes": ids,
                "pk1": [neighbours[n][0] for n in ids],
                "pk2": [neighbours[n][1] for n in ids],
            }
    return steps


def _member(node: int, census: dict[str, Any]) -> Member:
    """A domain admitted from its census answer."""
    return Member(
        node,
        str(census["domain"]),
        int(census["train_examples"]),
        int(census["test_examples"]),
        int(census["without_label"]),
    )


def _public_keys(content: Any) -> tuple[bytes, bytes]:
    """The two public keys of a keygen answer."""
    pair = wire.params(content, wire.KEYGEN)
    return bytes(pair["pk1"]), bytes(pair["pk2"])


def _note_compute(record: RoundLog, step: str, answer: Any) -> None:
    seconds = float(answer.get("seconds", 0.0))
    record.compute[step] = max(record.compute.get(step, 0.0), seconds)


def _majority(count: int) -> int:
    return max(1, math.ceil(count / 2))


def _metrics(answer: Any) -> dict[str, float]:
    return {
        "auc": float(answer["eval_auc"]),
        "loss": float(answer["eval_loss"]),
        "examples": float(answer["eval_examples"]),
    }


def _weighted_loss(losses: list[tuple[float, int]]) -> float | None:
    losses = [(v, n) for v, n in losses if not math.isnan(v)]  # DP domains withhold theirs
    total = sum(n for _, n in losses)
    return sum(v * n for v, n in losses) / total if total else None
