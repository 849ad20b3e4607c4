"""``domains init``'s scaffold: a commented domain folder that lints clean as generated."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboards_api.query_classes import ProductBudget, QueryClass
from domains.errors import InvalidDomainFolder
from domains.lint_folders import LintModels, lint_domains
from domains.scaffold import scaffold_domain
from federation.task_specs import TaskSpec, load_tasks
from streams.settings import get_stream_settings

MODELS = LintModels(query_class=QueryClass, product_budget=ProductBudget, task=TaskSpec)


def test_a_scaffold_lints_clean_and_is_commented(tmp_path: Path) -> None:
    """Every file of a new domain is commented and the folder lints without any finding,
    under the stream processor's default window."""
    files = scaffold_domain(tmp_path, "clinic")
    assert {p.relative_to(tmp_path / "clinic").as_posix() for p in files} == {
        "contract.yaml",
        "query_classes.yaml",
        "owners.yaml",
        "tasks/clinic_long_visits.yaml",
    }
    assert all(p.read_text().startswith("#") for p in files)
    window = get_stream_settings().window_seconds
    assert lint_domains([tmp_path], window_seconds=window, models=MODELS) == []


def test_a_second_domain_trains_with_the_first(tmp_path: Path) -> None:
    """With --train-with the task is live, names both domains and lints clean."""
    scaffold_domain(tmp_path, "north")
    scaffold_domain(tmp_path, "south", ("north",))
    assert lint_domains([tmp_path], window_seconds=10, models=MODELS) == []
    live = load_tasks(tmp_path / "south" / "tasks")
    assert live["south_long_visits"].domains == ["south", "north"]
    assert load_tasks(tmp_path / "north" / "tasks") == {}  # commented out


def test_a_scaffold_refuses_bad_names_and_existing_folders(tmp_path: Path) -> None:
    """An invalid domain name or an existing folder is refused before writing anything."""
    with pytest.raises(InvalidDomainFolder, match="lower-case"):
        scaffold_domain(tmp_path, "Clinic-A")
    scaffold_domain(tmp_path, "clinic")
    with pytest.raises(InvalidDomainFolder, match="already exists") as info:
        scaffold_domain(tmp_path, "clinic")
    assert info.value.code == "invalid_domain_folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clinic"]
