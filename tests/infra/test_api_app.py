"""The production app factory serves a mesh of new domains only (no demo domain loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from domains.scaffold import scaffold_domain
from infra.api_app import app_from_settings


def test_the_app_builds_from_a_folder_of_new_domains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PRIVMESH_DOMAIN_DIRS naming only a new folder, the real app builds, registers
    the new domain's classes and no demo class, and the catalog lists the new product."""
    folder = tmp_path / "mesh"
    scaffold_domain(folder, "north")
    scaffold_domain(folder, "south", ("north",))
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", str(folder))
    with TestClient(app_from_settings()) as client:
        classes = client.get("/v1/queries")
        assert classes.status_code == 200, classes.text
        ids = {c["id"] for c in classes.json()["classes"]}
        assert ids == {"north.visits.visit_count", "south.visits.visit_count"}
        catalog = client.get("/v1/catalog/entities", params={"kind": "product"})
        assert catalog.status_code == 200, catalog.text
        text = catalog.text
        assert "north.visits" in text and "south.visits" in text and "shop" not in text
