"""Per-domain pseudonymisation keys derived (HKDF-SHA256) from one master secret.

The master secret never appears in code or in the repository: it comes from
``PRIVMESH_STREAMS_MASTER_KEY`` or, in development only, from a random file
generated once under the data directory (mode 0600).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from streams.errors import KeyUnavailable

MIN_MASTER_BYTES = 32
_SALT = b"privmesh/pseudonymisation/v1"


def derive_domain_key(master: bytes, domain: str, version: int) -> bytes:
    """The 256-bit key of ``domain`` at key ``version``; unrelated across domains."""
    if len(master) < MIN_MASTER_BYTES:
        raise KeyUnavailable(
            f"master key is {len(master)} bytes; at least {MIN_MASTER_BYTES} are required"
        )
    info = f"domain={domain};key-version={version}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(master)


def derive_consent_key(master: bytes, domain: str) -> bytes:
    """The 256-bit key indexing ``domain``'s consent records in memory.

    Independent of the pseudonymisation key versions: a key rotation changes the tokens
    but must not forget who consented.
    """
    if len(master) < MIN_MASTER_BYTES:
        raise KeyUnavailable(
            f"master key is {len(master)} bytes; at least {MIN_MASTER_BYTES} are required"
        )
    info = f"domain={domain};consent-index".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(master)


def parse_master_key(text: str) -> bytes:
    """Bytes of a configured master key: hex if it parses as hex, else UTF-8 text."""
    stripped = text.strip()
    try:
        raw = bytes.fromhex(stripped)
    except ValueError:
        raw = stripped.encode()
    if len(raw) < MIN_MASTER_BYTES:
        raise KeyUnavailable(
            f"PRIVMESH_STREAMS_MASTER_KEY is {len(raw)} bytes; use at least {MIN_MASTER_BYTES} "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return raw


def development_master_key(data_dir: Path) -> bytes:
    """Load, or create once, the random development master key under ``data_dir``."""
    path = data_dir / "secrets" / "master.key"
    if path.exists():
        return parse_master_key(path.read_text(encoding="ascii"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    # Several workers start at once on a fresh data directory: each writes a complete
    # candidate, and an atomic link names the first one the key; the others read it.
    candidate = path.with_name(f".master.key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32))
    try:
        os.link(candidate, path)
    except FileExistsError:
        pass
    finally:
        candidate.unlink()
    return parse_master_key(path.read_text(encoding="ascii"))


def resolve_master_key(configured: str | None, data_dir: Path, *, production: bool) -> bytes:
    """The master key to use, refusing a missing key in production."""
    if configured:
        return parse_master_key(configured)
    if production:
        raise KeyUnavailable(
            "PRIVMESH_STREAMS_MASTER_KEY is required when PRIVMESH_ENV=production "
            "(generated development keys are refused)"
        )
    return development_master_key(data_dir)
