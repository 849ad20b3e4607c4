"""Deployment manifests parse and name only settings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dashboards_api.settings import ApiSettings
from domains.runtime import RuntimeSettings
from feature_repo.settings import FeatureStoreSettings
from federation.settings import FederationSettings
from infra.settings import GeneratorSettings, StackSettings
from streams.settings import KafkaSettings, StreamSettings

MANIFESTS = Path(__file__).parents[2] / "infra" / "manifests"
CLASSES = [
    RuntimeSettings,
    KafkaSettings,
    StreamSettings,
    FeatureStoreSettings,
    ApiSettings,
    GeneratorSettings,
    StackSettings,
    FederationSettings,
]


def known_names() -> set[str]:
    return {
        f"{cls.model_config['env_prefix']}{name}".upper()
        for cls in CLASSES
        for name in cls.model_fields
    }


def test_every_manifest_parses() -> None:
    """Every YAML manifest is valid YAML (multi-document allowed)."""
    files = sorted(MANIFESTS.rglob("*.yaml"))
    assert files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        assert docs, path


def test_manifests_name_only_real_settings() -> None:
    """Every PRIVMESH_* name in the manifests is a field of a settings class."""
    known = known_names()
    used: set[str] = set()
    for path in MANIFESTS.rglob("*"):
        if path.is_file():
            used |= set(re.findall(r"PRIVMESH_[A-Z0-9_]+", path.read_text(encoding="utf-8")))
    unknown = sorted(used - known - {"PRIVMESH_REQUIRE_INTEGRATION"})
    assert not unknown, f"manifests use settings that do not exist: {unknown}"
    assert "PRIVMESH_KAFKA_BOOTSTRAP_SERVERS" in used and "PRIVMESH_API_LEDGER_URL" in used


def test_no_key_material_committed() -> None:
    """No manifest holds key material (a 32-byte hex secret or longer)."""
    for path in MANIFESTS.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"\b[0-9a-fA-F]{64,}\b", text), path
