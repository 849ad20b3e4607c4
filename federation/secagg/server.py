"""The coordinator's side of one SecAgg+ round, tolerant of a dropout at any step.

A round moves through three exchanges with the nodes (the orchestration in
``federation.workflow`` may carry them in messages that also serve other rounds):

1. *share keys*: each participant gets its neighbours' public keys and returns
   encrypted shares of its secrets. Only the nodes that answer (``shared``) go on; a
   node that died before or during this step is simply out of the round: nobody holds
   its shares, so nobody masks with it.
2. *collect*: each shared node gets the shares addressed to it and returns its masked,
   quantised update, scaled by its share of the weight (``masked``). A shared node whose
   vector never arrives is ``dead``: its neighbours did mask with it.
3. *unmask*: each masked node that is still alive reveals, for its neighbours, the
   share of the mask seed (masked ones) or of the mask key (dead ones). With at least
   ``threshold`` shares per secret, the server removes every mask and is left with the
   sum of the masked nodes' updates, nothing else.

Flower 1.32's ``SecAggPlusWorkflow`` kept nodes that died before sharing keys in its
sampled set (the round then halted for want of their shares) and, for a dead node,
removed pairwise masks with every neighbour, also those that never masked with it;
both are handled here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key
from numpy.typing import NDArray

from federation.errors import NotEnoughParticipants, SecAggProtocolError
from federation.secagg.protocol import (
    RING,
    apply_mask,
    check_threshold,
    mask_stream,
    neighbourhoods,
    pairwise_key,
    pairwise_sign,
)


@dataclass
class SecAggRound:
    """Server state of one round: graph, forwarded shares, masked vectors, reveals."""

    round: int
    public_keys: dict[int, tuple[bytes, bytes]]
    num_shares: int
    threshold: int
    seed: int = 0
    graph: dict[int, list[int]] = field(init=False)
    shared: set[int] = field(default_factory=set)
    _mailbox: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    weights: dict[int, int] = field(default_factory=dict)
    quantised_weight: int = 0
    """The total weight of the nodes that shared keys, which they quantised their shares
    of (set by the coordinator when it asks for the vectors)."""
    _total: NDArray[np.uint32] | None = None
    _reveals: dict[int, dict[int, bytes]] = field(default_factory=dict)
    revealers: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        check_threshold(self.num_shares, self.threshold, len(self.public_keys))
        if len(self.public_keys) < self.threshold:
            raise NotEnoughParticipants(
                f"round {self.round}: {len(self.public_keys)} nodes hold keys, the "
                f"reconstruction threshold is {self.threshold}"
            )
        self.graph = neighbourhoods(
            sorted(self.public_keys),
            self.num_shares,
            random.Random(self.seed),  # noqa: S311 - the coordinator picks the graph; no secret
        )

    # ---------------------------------------------------------------- share keys
    def participants(self) -> list[int]:
        """Nodes that take part in the share-keys step."""
        return sorted(self.public_keys)

    def keys_for(self, nid: int) -> dict[int, tuple[bytes, bytes]]:
        """The public keys ``nid`` shares its secrets with (its neighbourhood)."""
        return {n: self.public_keys[n] for n in self.graph[nid]}

    def record_shares(self, nid: int, destinations: list[int], ciphertexts: list[bytes]) -> None:
        """``nid`` shared its secrets: keep the ciphertexts for their destinations."""
        if nid not in self.graph:
            raise SecAggProtocolError(f"round {self.round}: shares from non-participant {nid}")
        allowed = set(self.graph[nid]) - {nid}
        if set(destinations) - allowed or len(destinations) != len(ciphertexts):
            raise SecAggProtocolError(
                f"round {self.round}: node {nid} sent shares to nodes outside its neighbourhood"
            )
        for dst, ciphertext in zip(destinations, ciphertexts, strict=True):
            self._mailbox.setdefault(dst, []).append((nid, ciphertext))
        self.shared.add(nid)

    def close_sharing(self) -> list[int]:
        """End the share-keys step; the nodes that go on to the collect step."""
        self._check_neighbourhoods(self.shared, self.shared, "after sharing keys")
        return sorted(self.shared)

    # ---------------------------------------------------------------- collect
    def shares_for(self, nid: int) -> tuple[list[int], list[bytes]]:
        """The shares addressed to ``nid`` by nodes that completed the share-keys step."""
        inbox = [(src, c) for src, c in self._mailbox.get(nid, []) if src in self.shared]
        return [src for src, _ in inbox], [c for _, c in inbox]

    def record_masked(self, nid: int, vector: NDArray[np.uint32], weight: int) -> None:
        """Add ``nid``'s masked vector (its weight is public, from the census)."""
        if nid not in self.shared:
            raise SecAggProtocolError(
                f"round {self.round}: a vector from node {nid}, which did not share keys"
            )
        if nid in self.weights:
            raise SecAggProtocolError(f"round {self.round}: a second vector from node {nid}")
        wrong_length = self._total is not None and len(vector) != len(self._total)
        if vector.dtype != RING or vector.ndim != 1 or wrong_length:
            raise SecAggProtocolError(f"round {self.round}: node {nid} sent a malformed vector")
        if self._total is None:
            self._total = vector.copy()
        else:
            np.add(self._total, vector, out=self._total)
        self.weights[nid] = weight

    @property
    def masked(self) -> set[int]:
        """Nodes whose masked vectors arrived."""
        return set(self.weights)

    @property
    def dead(self) -> set[int]:
        """Nodes that shared keys but whose vectors never arrived."""
        return self.shared - self.masked

    def close_collect(self, min_vectors: int) -> list[int]:
        """End the collect step; the nodes asked to unmask."""
        if len(self.masked) < max(min_vectors, 1):
            raise NotEnoughParticipants(
                f"round {self.round}: {len(self.masked)} masked vectors arrived, the round "
                f"needs {max(min_vectors, 1)}"
            )
        self._check_neighbourhoods(self.shared, self.masked, "after collecting vectors")
        return sorted(self.masked)

    # ---------------------------------------------------------------- unmask
    def unmask_lists(self, nid: int) -> tuple[list[int], list[int]]:
        """Which neighbours of ``nid`` are masked (active) and which are dead."""
        neighbours = set(self.graph[nid])
        return sorted(neighbours & self.masked), sorted(neighbours & self.dead)

    def record_reveal(self, nid: int, owners: list[int], shares: list[bytes]) -> None:
        """``nid`` revealed ``shares`` of the secrets of ``owners``."""
        if nid not in self.masked or nid in self.revealers:
            raise SecAggProtocolError(f"round {self.round}: unexpected reveal from node {nid}")
        active, dead = self.unmask_lists(nid)
        if sorted(owners) != sorted(active + dead) or len(owners) != len(shares):
            raise SecAggProtocolError(
                f"round {self.round}: node {nid} revealed shares of other nodes than asked"
            )
        for owner, share in zip(owners, shares, strict=True):
            self._reveals.setdefault(owner, {})[nid] = share
        self.revealers.add(nid)

    def aggregate(self) -> tuple[NDArray[np.uint32], int]:
        """The unmasked sum of the masked nodes' vectors, and their total weight."""
        if self._total is None:
            raise NotEnoughParticipants(f"round {self.round}: no vector to unmask")
        total = self._total.copy()
        length = len(total)
        for owner in sorted(self.masked | self.dead):
            shares = list(self._reveals.get(owner, {}).values())
            if len(shares) < self.threshold:
                raise NotEnoughParticipants(
                    f"round {self.round}: {len(shares)} shares of node {owner}'s secret "
                    f"reached the server, {self.threshold} are needed to unmask"
                )
            secret = combine_shares(shares[: self.threshold])
            if owner in self.masked:
                apply_mask(total, mask_stream(secret, length), -1)
                continue
            sk1 = bytes_to_private_key(secret)
            for nid in self.graph[owner]:
                if nid == owner or nid not in self.masked:
                    continue  # only masked neighbours carry a pairwise mask with ``owner``
                key = generate_shared_key(sk1, bytes_to_public_key(self.public_keys[nid][0]))
                stream = mask_stream(pairwise_key(key), length)
                apply_mask(total, stream, -pairwise_sign(nid, owner))
        return total, sum(self.weights.values())

    # ---------------------------------------------------------------- checks
    def _check_neighbourhoods(self, owners: set[int], alive: set[int], when: str) -> None:
        """Every node in ``owners`` keeps ``threshold`` neighbours in ``alive``: enough to
        pass its shares on, or to reveal its secret."""
        for nid in sorted(owners):
            live = set(self.graph[nid]) & alive
            if len(live) < self.threshold:
                raise NotEnoughParticipants(
                    f"round {self.round} {when}: node {nid} has {len(live)} live neighbours, "
                    f"the reconstruction threshold is {self.threshold}"
                )


def public_keys_from(replies: Mapping[int, tuple[bytes, bytes]]) -> dict[int, tuple[bytes, bytes]]:
    """Public keys of the nodes that answered a key-generation request (duplicates refused)."""
    seen: set[bytes] = set()
    for nid, pair in replies.items():
        if pair[0] in seen or pair[1] in seen or pair[0] == pair[1]:
            raise SecAggProtocolError(f"node {nid} sent a public key another node uses")
        seen.update(pair)
    return dict(replies)
