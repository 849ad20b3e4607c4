"""Key versions per domain, and when each takes effect (key rotation).

A rotation never takes effect mid-window: the new version applies to events whose
*event time* is at or after ``effective_from``, which is the start of a window at
least one full window in the future. So within one window a subject has exactly one
token, and the per-window contribution bound the DP layer relies on still holds.
Every worker reads the same ring file and chooses the version by event time, so
workers that pick up the rotation a little late still agree.

The ring holds version numbers and times only, never key material: keys are derived
from the master secret (``streams.keys``). The ring lives under the data directory
(``secrets/keyring.json``); on a cluster, mount it from shared configuration.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from domains.contract import FieldType
from domains.runtime import RuntimeSettings
from streams.errors import StreamError
from streams.keys import derive_consent_key, derive_domain_key, resolve_master_key
from streams.pseudonymise import Tokeniser, TokenSource
from streams.settings import StreamSettings

log = logging.getLogger("privmesh.streams")


@dataclass(frozen=True, slots=True)
class KeyEpoch:
    """Key ``version`` applies to events at or after ``effective_from`` (epoch seconds)."""

    version: int
    effective_from: int


def keyring_path(data_dir: Path) -> Path:
    """Where the key ring of this data directory lives."""
    return data_dir / "secrets" / "keyring.json"


class KeyRing:
    """The epochs of every domain; domains never rotated use ``initial_version`` from 0."""

    def __init__(self, epochs: dict[str, list[KeyEpoch]], initial_version: int) -> None:
        self._epochs = {d: sorted(e, key=lambda x: x.effective_from) for d, e in epochs.items()}
        self.initial_version = initial_version

    @classmethod
    def load(cls, path: Path, initial_version: int) -> KeyRing:
        """The ring stored at ``path`` (an empty ring when the file does not exist)."""
        if not path.exists():
            return cls({}, initial_version)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            epochs = {
                domain: [KeyEpoch(int(e["version"]), int(e["effective_from"])) for e in items]
                for domain, items in raw["domains"].items()
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyRingInvalid(f"key ring {path} is unreadable: {exc}") from exc
        return cls(epochs, initial_version)

    def save(self, path: Path) -> None:
        """Write the ring atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "domains": {
                d: [{"version": e.version, "effective_from": e.effective_from} for e in epochs]
                for d, epochs in sorted(self._epochs.items())
            }
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def epochs(self, domain: str) -> list[KeyEpoch]:
        """Every epoch of ``domain``, oldest first."""
        return list(self._epochs.get(domain) or [KeyEpoch(self.initial_version, 0)])

    def version_at(self, domain: str, event_time: float) -> int:
        """The key version that applies to an event of ``domain`` at ``event_time``."""
        return self.span_at(domain, event_time)[0]

    def span_at(self, domain: str, event_time: float) -> tuple[int, float, float]:
        """``(version, from, until)``: the version at ``event_time`` and the times it spans."""
        epochs = self.epochs(domain)
        version, start, end = epochs[0].version, float("-inf"), float("inf")
        for epoch in epochs:
            if epoch.effective_from <= event_time:
                version, start = epoch.version, epoch.effective_from
            else:
                end = min(end, epoch.effective_from)
        return version, start, end

    def rotate(self, domain: str, now: float, window_seconds: int) -> KeyEpoch:
        """Schedule the next version from the start of the window after the next one."""
        epochs = self.epochs(domain)
        latest = epochs[-1]
        if latest.effective_from > now:
            raise KeyRingInvalid(
                f"domain {domain!r} already has version {latest.version} scheduled for "
                f"{datetime.fromtimestamp(latest.effective_from, tz=UTC).isoformat()}"
            )
        start = int(now) - int(now) % window_seconds + 2 * window_seconds
        new = KeyEpoch(latest.version + 1, start)
        self._epochs[domain] = [*epochs, new]
        return new


class KeyRingInvalid(StreamError):
    """The key ring file is unreadable or a rotation conflicts with a scheduled one."""

    code = "keyring_invalid"


class DomainTokens:
    """Tokenisers of one domain for every key version, chosen by event time."""

    def __init__(self, master: bytes, domain: str, ring: KeyRing) -> None:
        self.domain = domain
        self._master = master
        self._tokenisers: dict[int, Tokeniser] = {}
        # (ring, epoch start, next epoch start, tokeniser) of the last lookup: events
        # arrive in time order, so nearly every lookup hits the same epoch.
        self._last: tuple[KeyRing, float, float, Tokeniser] | None = None
        self.ring = ring

    def tokeniser(self, version: int) -> Tokeniser:
        """The tokeniser of key ``version`` (derived once)."""
        found = self._tokenisers.get(version)
        if found is None:
            found = Tokeniser(derive_domain_key(self._master, self.domain, version), version)
            self._tokenisers[version] = found
        return found

    def at(self, event_time: float) -> Tokeniser:
        """The tokeniser for an event at ``event_time``."""
        ring = self.ring
        cached = self._last
        if cached is not None and cached[0] is ring and cached[1] <= event_time < cached[2]:
            return cached[3]
        version, start, end = ring.span_at(self.domain, event_time)
        found = self.tokeniser(version)
        self._last = (ring, start, end, found)
        return found

    def consent_key(self) -> bytes:
        """The key of the domain's in-memory consent index (not rotated)."""
        return derive_consent_key(self._master, self.domain)

    def all_tokens(self, value: str, kind: FieldType) -> set[str]:
        """The tokens ``value`` has had under every key version (for erasure)."""
        return {self.tokeniser(e.version).token(value, kind) for e in self.ring.epochs(self.domain)}


def load_domain_tokens(
    domain: str, runtime: RuntimeSettings, streams: StreamSettings
) -> DomainTokens:
    """The domain's tokenisers: master key from settings, versions from the key ring."""
    master = resolve_master_key(
        streams.master_key.get_secret_value() if streams.master_key else None,
        runtime.data_dir,
        production=runtime.is_production,
    )
    ring = KeyRing.load(keyring_path(runtime.data_dir), streams.key_version)
    return DomainTokens(master, domain, ring)


class KeyRingWatcher:
    """Reloads a running processor's key ring when its file changes (no restart needed)."""

    def __init__(self, tokens: TokenSource, path: Path) -> None:
        self.tokens = tokens
        self.path = path
        self._mtime = path.stat().st_mtime if path.exists() else 0.0

    def poll(self) -> bool:
        """Reload the ring if the file changed since the last poll; True when it did."""
        if not isinstance(self.tokens, DomainTokens) or not self.path.exists():
            return False
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        self.tokens.ring = KeyRing.load(self.path, self.tokens.ring.initial_version)
        log.info("key ring reloaded from %s", self.path)
        return True
