"""Key rotation by event time: one token per subject per window, old tokens still erasable."""

from __future__ import annotations

from pathlib import Path

import pytest

from domains.contract import FieldType
from streams.keyring import DomainTokens, KeyRing, KeyRingInvalid

MASTER = b"m" * 32


def test_unrotated_domain_uses_the_initial_version_everywhere() -> None:
    ring = KeyRing({}, initial_version=3)
    assert ring.version_at("shop", 0) == 3 and ring.version_at("shop", 2e9) == 3
    assert DomainTokens(MASTER, "shop", ring).at(1.0).token("a@b.co").startswith("k3.")


def test_rotation_starts_at_a_window_boundary_at_least_one_window_ahead() -> None:
    ring = KeyRing({}, 1)
    epoch = ring.rotate("shop", now=1_000_007.5, window_seconds=10)
    assert epoch.version == 2 and epoch.effective_from == 1_000_020
    assert ring.version_at("shop", 1_000_019.9) == 1
    assert ring.version_at("shop", 1_000_020) == 2
    assert ring.version_at("web", 1_000_020) == 1  # other domains untouched


def test_a_second_rotation_waits_for_the_scheduled_one() -> None:
    ring = KeyRing({}, 1)
    ring.rotate("shop", now=100, window_seconds=10)
    with pytest.raises(KeyRingInvalid, match="already has version 2 scheduled"):
        ring.rotate("shop", now=105, window_seconds=10)
    assert ring.rotate("shop", now=125, window_seconds=10).version == 3


def test_tokens_change_with_the_version_and_all_versions_are_known(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = KeyRing({}, 1)
    ring.rotate("shop", now=100, window_seconds=10)
    ring.save(path)
    tokens = DomainTokens(MASTER, "shop", KeyRing.load(path, 1))
    before = tokens.at(119).token("Ada@Example.org", FieldType.EMAIL)
    after = tokens.at(120).token("ada@example.org", FieldType.EMAIL)
    assert before.startswith("k1.") and after.startswith("k2.")
    assert before[3:] != after[3:]
    assert tokens.all_tokens(" ADA@example.org", FieldType.EMAIL) == {before, after}


def test_broken_ring_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(KeyRingInvalid, match="unreadable"):
        KeyRing.load(path, 1)
