"""Whole SecAgg+ rounds in process: exactness, dropouts at every step, refusals."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from federation.errors import NotEnoughParticipants, SecAggProtocolError
from federation.secagg.client import RoundSecrets, SecAggClient
from federation.secagg.protocol import choose_scale, decode_sum, quantise, weight_share
from federation.secagg.server import SecAggRound

NODES = [101, 202, 303, 404, 505]
DIMENSION = 5_000


@dataclass
class Federation:
    """Five clients with private updates and weights, and one server round."""

    updates: dict[int, np.ndarray]
    weights: dict[int, int]
    clients: dict[int, SecAggClient] = field(default_factory=dict)

    @classmethod
    def make(cls, seed: int = 0) -> Federation:
        rng = np.random.default_rng(seed)
        return cls(
            {n: rng.normal(0, 0.05, DIMENSION) for n in NODES},
            {n: int(rng.integers(1_000, 120_000)) for n in NODES},
            {n: SecAggClient(n, {}) for n in NODES},
        )

    def run(
        self, die: dict[str, set[int]], num_shares: int = 5, threshold: int = 3
    ) -> tuple[np.ndarray, set[int]]:
        """One round where ``die[step]`` nodes disappear at that step; the mean and senders."""
        bound = 1.0
        alive = [n for n in NODES if n not in die.get("keygen", set())]
        keys = {n: self.clients[n].keygen(1) for n in alive}
        rnd = SecAggRound(1, keys, num_shares, threshold, seed=11)
        for n in rnd.participants():
            if n in die.get("share_keys", set()):
                continue
            rnd.record_shares(n, *self.clients[n].share_keys(1, rnd.threshold, rnd.keys_for(n)))
        shared = rnd.close_sharing()
        scale = choose_scale(bound, len(shared))
        rnd.quantised_weight = sum(self.weights[n] for n in shared)
        for n in shared:
            if n in die.get("collect", set()):
                continue
            self.clients[n].receive_shares(1, *rnd.shares_for(n))
            share = weight_share(self.weights[n], rnd.quantised_weight)
            q = quantise(self.updates[n], scale, bound, share)
            rnd.record_masked(n, self.clients[n].mask(1, q), self.weights[n])
        for n in rnd.close_collect(2):
            if n in die.get("unmask", set()):
                continue
            rnd.record_reveal(n, *self.clients[n].reveal(1, *rnd.unmask_lists(n)))
        total, weight = rnd.aggregate()
        return decode_sum(total, scale, weight / rnd.quantised_weight), rnd.masked

    def plain(self, senders: set[int]) -> np.ndarray:
        """Plaintext FedAvg of the senders' updates."""
        total = sum(self.weights[n] for n in senders)
        return np.sum([self.updates[n] * (self.weights[n] / total) for n in senders], axis=0)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
    "die",
    [
        {},
        {"keygen": {202}},
        {"share_keys": {303}},
        {"collect": {404}},
        {"unmask": {505}},
        {"share_keys": {101}, "collect": {202}},
        {"collect": {202, 303}, "unmask": set()},
    ],
    ids=[
        "none",
        "before-keys",
        "while-sharing",
        "after-sharing",
        "while-unmasking",
        "two-steps",
        "two-after",
    ],
)
def test_a_round_survives_dropouts_and_equals_plain_fedavg(die: dict[str, set[int]]) -> None:
    """Whoever dies at whichever step, the survivors' secure mean equals plain FedAvg of
    the vectors that arrived to within 1e-5 relative error (it is ~1e-8 in the 32-bit ring)."""
    federation = Federation.make()
    mean, senders = federation.run(die)
    expected_senders = set(NODES) - set().union(
        *[die.get(s, set()) for s in ("keygen", "share_keys", "collect")]
    )
    assert senders == expected_senders
    assert relative_error(mean, federation.plain(senders)) < 1e-5


def test_sparse_graph_round_with_a_dropout() -> None:
    """SecAgg+'s ring graph (3 of 5 neighbours), threshold 2, survives a dropout after sharing."""
    federation = Federation.make(seed=4)
    mean, senders = federation.run({"collect": {303}}, num_shares=3, threshold=2)
    assert relative_error(mean, federation.plain(senders)) < 1e-5


def test_too_many_dropouts_lose_the_round_and_say_why() -> None:
    """Three of five dead after sharing keys leave two: below the threshold of three."""
    with pytest.raises(NotEnoughParticipants, match="threshold"):
        Federation.make().run({"collect": {101, 202, 303}})


def test_one_masked_vector_reveals_nothing_alone() -> None:
    """A node's masked vector is uncorrelated with its update (|r| < 0.06: 4.2 sigma at n=5000)."""
    federation = Federation.make()
    keys = {n: federation.clients[n].keygen(1) for n in NODES}
    rnd = SecAggRound(1, keys, 5, 3, seed=1)
    for n in NODES:
        rnd.record_shares(n, *federation.clients[n].share_keys(1, 3, rnd.keys_for(n)))
    n = NODES[0]
    federation.clients[n].receive_shares(1, *rnd.shares_for(n))
    scale = choose_scale(1.0, 1)
    masked = federation.clients[n].mask(1, quantise(federation.updates[n], scale, 1.0))
    as_float = masked.view(np.int32).astype(np.float64)
    assert abs(np.corrcoef(as_float, federation.updates[n])[0, 1]) < 0.06


def test_a_node_never_reveals_both_secrets_of_a_neighbour() -> None:
    """Active and dead lists that overlap are refused; a node reveals one time per round."""
    federation = Federation.make()
    clients = federation.clients
    keys = {n: clients[n].keygen(1) for n in NODES}
    rnd = SecAggRound(1, keys, 5, 3, seed=2)
    for n in NODES:
        rnd.record_shares(n, *clients[n].share_keys(1, 3, rnd.keys_for(n)))
    n = NODES[0]
    clients[n].receive_shares(1, *rnd.shares_for(n))
    clients[n].mask(1, np.zeros(3, dtype=np.uint32))
    with pytest.raises(SecAggProtocolError, match="both active and dead"):
        clients[n].reveal(1, [101, 202, 303], [202])
    clients[n].reveal(1, [101, 202, 303], [404])
    with pytest.raises(SecAggProtocolError, match="no keys for round 1"):
        clients[n].reveal(1, [101, 202, 303], [])


def test_tampered_keys_and_forged_shares_are_refused() -> None:
    """A node checks its own keys came back unchanged and that shares are addressed to it."""
    clients = {n: SecAggClient(n, {}) for n in NODES}
    keys = {n: clients[n].keygen(1) for n in NODES}
    tampered = dict(keys)
    tampered[101] = keys[202]
    with pytest.raises(SecAggProtocolError, match="own public"):
        clients[101].share_keys(1, 3, tampered)
    rnd = SecAggRound(1, keys, 5, 3, seed=3)
    for n in NODES:
        rnd.record_shares(n, *clients[n].share_keys(1, 3, rnd.keys_for(n)))
    sources, ciphertexts = rnd.shares_for(101)
    stolen = sources.index(303)
    with pytest.raises(SecAggProtocolError, match="cannot be decrypted"):
        clients[202].receive_shares(1, [303, 404, 505], [ciphertexts[stolen], b"x", b"y"])


def test_round_secrets_survive_a_config_record() -> None:
    """Serialised and read back, a node's round state is unchanged (Flower context state)."""
    client = SecAggClient(7, {})
    client.keygen(3)
    state = client.store[3]
    state.seed_shares = {7: b"a", 9: b"b"}
    assert RoundSecrets.from_record(state.to_record()) == state


def test_the_server_refuses_out_of_protocol_messages() -> None:
    """Vectors from nodes that did not share keys, or twice, and stray reveals are refused."""
    clients = {n: SecAggClient(n, {}) for n in NODES}
    keys = {n: clients[n].keygen(1) for n in NODES}
    rnd = SecAggRound(1, keys, 5, 3, seed=5)
    for n in NODES[:4]:
        rnd.record_shares(n, *clients[n].share_keys(1, 3, rnd.keys_for(n)))
    rnd.close_sharing()
    with pytest.raises(SecAggProtocolError, match="did not share keys"):
        rnd.record_masked(505, np.zeros(3, dtype=np.uint32), 1)
    rnd.record_masked(101, np.zeros(3, dtype=np.uint32), 1)
    with pytest.raises(SecAggProtocolError, match="second vector"):
        rnd.record_masked(101, np.zeros(3, dtype=np.uint32), 1)
    with pytest.raises(SecAggProtocolError, match="unexpected reveal"):
        rnd.record_reveal(202, [], [])


def test_a_vector_outside_the_ring_is_refused() -> None:
    """A node refuses to mask, and the server to add, anything but uint32 ring elements."""
    clients = {n: SecAggClient(n, {}) for n in NODES}
    keys = {n: clients[n].keygen(1) for n in NODES}
    rnd = SecAggRound(1, keys, 5, 3, seed=6)
    for n in NODES:
        rnd.record_shares(n, *clients[n].share_keys(1, 3, rnd.keys_for(n)))
    rnd.close_sharing()
    clients[101].receive_shares(1, *rnd.shares_for(101))
    with pytest.raises(SecAggProtocolError, match="ring elements"):
        clients[101].mask(1, np.zeros(3, dtype=np.uint64))
    bad_vectors: list[np.ndarray] = [np.zeros(3, dtype=np.uint64), np.zeros((1, 3), np.uint32)]
    for bad in bad_vectors:
        with pytest.raises(SecAggProtocolError, match="malformed"):
            rnd.record_masked(101, bad, 1)


def test_the_secure_mean_of_large_weights_keeps_its_precision() -> None:
    """Example counts in the millions do not cost precision (weights enter as fractions):
    the 5-node secure mean equals plain FedAvg within 1e-5 relative error."""
    federation = Federation.make(seed=9)
    federation.weights = {n: 3_000_000 + 7 * n for n in NODES}
    mean, senders = federation.run({"collect": {202}})
    assert relative_error(mean, federation.plain(senders)) < 1e-5
