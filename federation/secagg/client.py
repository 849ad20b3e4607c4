"""A domain's side of SecAgg+: per-round keys, secret shares, masking and revealing.

The state of each round lives in a :class:`RoundSecrets`, which serialises to the flat
values a Flower ``ConfigRecord`` holds, so it survives between messages in the
ClientApp's ``context.state`` exactly as Flower's own mod keeps its state.

The rules a node enforces whatever the server asks:

* it shares its secrets only with the neighbours whose keys it was given, at least
  ``threshold`` of them, and checks that its own keys were passed on unchanged;
* it decrypts shares only from nodes it shared keys with, addressed to itself;
* it reveals once per round, and for each neighbour either the share of its private
  mask seed (the neighbour's vector was received) or of its mask key (it dropped),
  never both: with a threshold above half of the shares, no two disjoint groups can
  hand the server both secrets of one node;
* after revealing, the round's secrets are deleted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.fernet import InvalidToken
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)
from numpy.typing import NDArray

from federation.errors import SecAggProtocolError
from federation.secagg.protocol import (
    RING,
    apply_mask,
    mask_stream,
    pairwise_key,
    pairwise_sign,
)

KEYED = "keyed"
SHARED = "shared"
RECEIVED = "received"
MASKED = "masked"

ConfigValue = int | float | str | bytes | bool | list[int] | list[bytes] | list[str]


@dataclass
class RoundSecrets:
    """One node's secrets and received shares for one SecAgg+ round."""

    round: int
    sk1: bytes
    pk1: bytes
    sk2: bytes
    pk2: bytes
    stage: str = KEYED
    threshold: int = 0
    seed: bytes = b""
    neighbours: list[int] = field(default_factory=list)
    pk1_of: dict[int, bytes] = field(default_factory=dict)
    enc_key_of: dict[int, bytes] = field(default_factory=dict)
    seed_shares: dict[int, bytes] = field(default_factory=dict)
    sk1_shares: dict[int, bytes] = field(default_factory=dict)

    _MAPS = ("pk1_of", "enc_key_of", "seed_shares", "sk1_shares")

    def to_record(self) -> dict[str, ConfigValue]:
        """Flat values for a ``ConfigRecord``."""
        record: dict[str, ConfigValue] = {
            "round": self.round,
            "sk1": self.sk1,
            "pk1": self.pk1,
            "sk2": self.sk2,
            "pk2": self.pk2,
            "stage": self.stage,
            "threshold": self.threshold,
            "seed": self.seed,
            "neighbours": list(self.neighbours),
        }
        for name in self._MAPS:
            mapping: dict[int, bytes] = getattr(self, name)
            record[f"{name}:k"] = list(mapping)
            record[f"{name}:v"] = list(mapping.values())
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RoundSecrets:
        """The inverse of :meth:`to_record`."""

        def ints(key: str) -> list[int]:
            return [int(v) for v in record[key]]

        def blobs(key: str) -> list[bytes]:
            return [bytes(v) for v in record[key]]

        maps = {
            name: dict(zip(ints(f"{name}:k"), blobs(f"{name}:v"), strict=True))
            for name in cls._MAPS
        }
        return cls(
            round=int(record["round"]),
            sk1=bytes(record["sk1"]),
            pk1=bytes(record["pk1"]),
            sk2=bytes(record["sk2"]),
            pk2=bytes(record["pk2"]),
            stage=str(record["stage"]),
            threshold=int(record["threshold"]),
            seed=bytes(record["seed"]),
            neighbours=ints("neighbours"),
            **maps,
        )


class SecAggClient:
    """Node ``node_id``'s protocol steps over a store of per-round secrets.

    The store may hand out copies (a context record): every step writes its round back.
    """

    def __init__(self, node_id: int, store: MutableMapping[int, RoundSecrets]) -> None:
        self.node_id = node_id
        self.store = store

    def _round(self, round_: int, *expected: str) -> RoundSecrets:
        secrets = self.store.get(round_)
        if secrets is None:
            raise SecAggProtocolError(
                f"node {self.node_id} holds no keys for round {round_} (it joined later or "
                "restarted); the server must exclude it from this round"
            )
        if secrets.stage not in expected:
            raise SecAggProtocolError(
                f"round {round_}: step needs stage {'/'.join(expected)}, node {self.node_id} "
                f"is at {secrets.stage!r}"
            )
        return secrets

    def keygen(self, round_: int) -> tuple[bytes, bytes]:
        """Fresh key pairs for ``round_`` (mask agreement, share encryption); the public keys."""
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        secrets = RoundSecrets(
            round_,
            private_key_to_bytes(sk1),
            public_key_to_bytes(pk1),
            private_key_to_bytes(sk2),
            public_key_to_bytes(pk2),
        )
        self.store[round_] = secrets
        for old in [r for r in self.store if r < round_ - 1]:
            del self.store[old]  # secrets of rounds the server can no longer finish
        return secrets.pk1, secrets.pk2

    def share_keys(
        self, round_: int, threshold: int, keys: Mapping[int, tuple[bytes, bytes]]
    ) -> tuple[list[int], list[bytes]]:
        """Secret-share this round's mask seed and mask key among the neighbours ``keys``.

        ``keys`` maps each neighbour (this node included) to its two public keys. Returns
        the destinations and the ciphertexts of their shares, for the server to forward.
        """
        secrets = self._round(round_, KEYED)
        own = keys.get(self.node_id)
        if own != (secrets.pk1, secrets.pk2):
            raise SecAggProtocolError(
                f"round {round_}: the server did not pass node {self.node_id}'s own public "
                "keys on unchanged"
            )
        if len(keys) < threshold:
            raise SecAggProtocolError(
                f"round {round_}: {len(keys)} neighbours, fewer than the threshold {threshold}"
            )
        every_key = [k for pair in keys.values() for k in pair]
        if len(set(every_key)) != len(every_key):
            raise SecAggProtocolError(f"round {round_}: two neighbours share a public key")
        secrets.threshold = threshold
        secrets.neighbours = sorted(keys)
        secrets.pk1_of = {nid: pair[0] for nid, pair in keys.items()}
        secrets.seed = os.urandom(32)
        seed_shares = create_shares(secrets.seed, threshold, len(keys))
        sk1_shares = create_shares(secrets.sk1, threshold, len(keys))
        sk2 = bytes_to_private_key(secrets.sk2)
        destinations: list[int] = []
        ciphertexts: list[bytes] = []
        for index, nid in enumerate(secrets.neighbours):
            if nid == self.node_id:
                secrets.seed_shares[nid] = seed_shares[index]
                secrets.sk1_shares[nid] = sk1_shares[index]
                continue
            key = generate_shared_key(sk2, bytes_to_public_key(keys[nid][1]))
            secrets.enc_key_of[nid] = key
            plaintext = share_keys_plaintext_concat(
                self.node_id, nid, seed_shares[index], sk1_shares[index]
            )
            destinations.append(nid)
            ciphertexts.append(encrypt(key, plaintext))
        secrets.stage = SHARED
        self.store[round_] = secrets
        return destinations, ciphertexts

    def receive_shares(self, round_: int, sources: list[int], ciphertexts: list[bytes]) -> None:
        """Decrypt and keep the shares the neighbours ``sources`` sent to this node."""
        secrets = self._round(round_, SHARED)
        if len(sources) != len(ciphertexts):
            raise SecAggProtocolError(
                f"round {round_}: {len(sources)} sources but {len(ciphertexts)} ciphertexts"
            )
        if len(set(sources)) + 1 < secrets.threshold:
            raise SecAggProtocolError(
                f"round {round_}: shares from {len(set(sources))} neighbours; with this node "
                f"fewer than the threshold {secrets.threshold}"
            )
        for src, ciphertext in zip(sources, ciphertexts, strict=True):
            key = secrets.enc_key_of.get(src)
            if key is None:
                raise SecAggProtocolError(
                    f"round {round_}: a share from node {src}, which is not a neighbour"
                )
            try:
                plaintext = decrypt(key, ciphertext)
            except InvalidToken as exc:
                raise SecAggProtocolError(
                    f"round {round_}: the share forwarded as from node {src} cannot be "
                    "decrypted with the key agreed with it"
                ) from exc
            actual_src, dst, seed_share, sk1_share = share_keys_plaintext_separate(plaintext)
            if actual_src != src or dst != self.node_id:
                raise SecAggProtocolError(
                    f"round {round_}: a share from {actual_src} to {dst} was forwarded as "
                    f"from {src} to {self.node_id}"
                )
            secrets.seed_shares[src] = seed_share
            secrets.sk1_shares[src] = sk1_share
        secrets.stage = RECEIVED
        self.store[round_] = secrets

    def mask(self, round_: int, vector: NDArray[np.uint32]) -> NDArray[np.uint32]:
        """``vector`` plus the private mask and the pairwise masks of this round (a new
        array; ``vector`` is left as it was)."""
        secrets = self._round(round_, RECEIVED)
        if vector.dtype != RING:
            raise SecAggProtocolError(f"round {round_}: ring elements are {RING.__name__}")
        masked = apply_mask(vector.copy(), mask_stream(secrets.seed, len(vector)), +1)
        sk1 = bytes_to_private_key(secrets.sk1)
        for nid in sorted(secrets.seed_shares):
            if nid == self.node_id:
                continue
            shared = generate_shared_key(sk1, bytes_to_public_key(secrets.pk1_of[nid]))
            stream = mask_stream(pairwise_key(shared), len(vector))
            apply_mask(masked, stream, pairwise_sign(self.node_id, nid))
        secrets.stage = MASKED
        self.store[round_] = secrets
        return masked

    def reveal(
        self, round_: int, active: list[int], dead: list[int]
    ) -> tuple[list[int], list[bytes]]:
        """The shares that let the server remove this round's masks, then forget the round.

        ``active``: neighbours whose masked vectors arrived (their mask-seed shares are
        revealed); ``dead``: neighbours that shared keys but sent no vector (their mask-key
        shares are revealed, to cancel their pairwise masks).
        """
        secrets = self._round(round_, RECEIVED, MASKED)
        overlap = set(active) & set(dead)
        if overlap:
            raise SecAggProtocolError(
                f"round {round_}: nodes {sorted(overlap)} listed as both active and dead; "
                "revealing both secrets of a node would expose its update"
            )
        if len(set(active)) < secrets.threshold:
            raise SecAggProtocolError(
                f"round {round_}: {len(set(active))} active neighbours, fewer than the "
                f"threshold {secrets.threshold}"
            )
        unknown = [n for n in [*active, *dead] if n not in secrets.seed_shares]
        if unknown:
            raise SecAggProtocolError(f"round {round_}: no shares held for nodes {sorted(unknown)}")
        masked = secrets.stage == MASKED
        if masked and self.node_id in dead:
            raise SecAggProtocolError(
                f"round {round_}: node {self.node_id} sent its vector but is listed as dead"
            )
        if not masked and self.node_id in active:
            raise SecAggProtocolError(
                f"round {round_}: node {self.node_id} sent no vector but is listed as active"
            )
        nids = [*active, *dead]
        shares = [secrets.seed_shares[n] for n in active] + [secrets.sk1_shares[n] for n in dead]
        del self.store[round_]
        return nids, shares
