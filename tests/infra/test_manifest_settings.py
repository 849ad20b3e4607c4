"""Deployment manifests parse, name only settings that exist, and set values they accept."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from domains.folders import scan
from domains.scaffold import scaffold_domain
from infra.deploy import render

MANIFESTS = Path(__file__).parents[2] / "infra" / "manifests"
# Every package's settings module: the classes are found in them, so a new one is checked
# without editing this test.
SETTINGS_MODULES = [
    "domains.runtime",
    "streams.settings",
    "feature_repo.settings",
    "federation.settings",
    "dashboards_api.settings",
    "catalog.settings",
    "governance.settings",
    "infra.settings",
]
# Values a Secret supplies, for checking the settings a container is started with (only
# those whose absence the settings refuse; the rest stay unset).
SECRET_STAND_INS = {"PRIVMESH_KAFKA_SASL_USERNAME": "user", "PRIVMESH_KAFKA_SASL_PASSWORD": "pw"}


def settings_classes() -> list[type[BaseSettings]]:
    found: list[type[BaseSettings]] = []
    for name in SETTINGS_MODULES:
        module = importlib.import_module(name)
        found += [
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and issubclass(v, BaseSettings)
            and v is not BaseSettings
            and v.__module__ == name
        ]
    return found


def known_names() -> set[str]:
    return {
        f"{cls.model_config['env_prefix']}{name}".upper()
        for cls in settings_classes()
        for name in cls.model_fields
    }


@pytest.fixture(scope="module")
def team_render(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The manifests of a folder holding only two new scaffolded domains."""
    folder = tmp_path_factory.mktemp("team") / "mesh"
    scaffold_domain(folder, "north", ("south",))
    scaffold_domain(folder, "south", ("north",))
    return render(scan((folder,)))


def test_settings_classes_are_found() -> None:
    """The discovery sees every component's settings class (a broken import would hide
    some and let unknown names through)."""
    names = {cls.__name__ for cls in settings_classes()}
    assert names >= {
        "RuntimeSettings",
        "KafkaSettings",
        "StreamSettings",
        "FeatureStoreSettings",
        "FederationSettings",
        "ApiSettings",
        "CatalogSettings",
        "GeneratorSettings",
        "StackSettings",
        "PostureSettings",
    }


def test_every_manifest_parses() -> None:
    """Every YAML manifest is valid YAML (multi-document allowed)."""
    files = sorted(MANIFESTS.rglob("*.yaml"))
    assert files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        assert docs, path


def test_manifests_name_only_real_settings(team_render: dict[str, str]) -> None:
    """Every PRIVMESH_* name in the committed manifests and in a new team's rendered ones
    is a field of a settings class."""
    known = known_names()
    used: set[str] = set()
    texts = [p.read_text(encoding="utf-8") for p in MANIFESTS.rglob("*") if p.is_file()]
    for text in [*texts, *team_render.values()]:
        used |= set(re.findall(r"PRIVMESH_[A-Z0-9_]+", text))
    unknown = sorted(used - known - {"PRIVMESH_REQUIRE_INTEGRATION"})
    assert not unknown, f"manifests use settings that do not exist: {unknown}"
    for needed in (
        "PRIVMESH_KAFKA_BOOTSTRAP_SERVERS",
        "PRIVMESH_API_LEDGER_URL",
        "PRIVMESH_API_HOST",
        "PRIVMESH_STREAMS_WORKER_WEB_BIND",
        "PRIVMESH_KAFKA_SASL_PASSWORD",
    ):
        assert needed in used, needed


def _containers(text: str) -> list[dict[str, Any]]:
    """The containers of every workload in a rendered file."""
    found = []
    for doc in yaml.safe_load_all(text):
        if doc is None or doc["kind"] not in ("Deployment", "CronJob"):
            continue
        spec = doc["spec"]
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        found += spec["template"]["spec"]["containers"]
    return found


def test_every_container_starts_with_settings_it_accepts(
    team_render: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each container's environment (the shared ConfigMap plus its own values; the Kafka
    credentials standing in for their Secret) is accepted by every settings class: the
    bind addresses, the posture's worker URLs, the Kafka security choices all parse."""
    config = yaml.safe_load(team_render["config.yaml"])["data"]
    containers = [c for text in team_render.values() for c in _containers(text)]
    assert len(containers) >= 6
    for container in containers:
        for name in [n for n in os.environ if n.startswith("PRIVMESH_")]:
            monkeypatch.delenv(name)
        env = dict(config)
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            elif entry["name"] in SECRET_STAND_INS:
                env[entry["name"]] = SECRET_STAND_INS[entry["name"]]
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for cls in settings_classes():
            cls()  # raises ValidationError for a value the setting refuses


def test_no_key_material_committed() -> None:
    """No manifest holds key material (a 32-byte hex secret or longer)."""
    for path in MANIFESTS.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"\b[0-9a-fA-F]{64,}\b", text), path
