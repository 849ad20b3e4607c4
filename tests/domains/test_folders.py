"""Domain folders: the configured folders alone decide which domains, classes, tasks and
owners the mesh loads; the demo domains are one such folder; a domain declared twice fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dashboards_api.query_classes import load_product_budgets, load_query_classes
from domains.errors import DuplicateDomain, InvalidContract, InvalidDomainFolder
from domains.folders import domain_set
from domains.owners import load_owners
from domains.registry import load_contracts
from domains.runtime import DEMO_DOMAINS_DIR
from domains.scaffold import scaffold_domain
from federation.task_specs import load_tasks

DEMO = {"ewr", "jfk", "lga", "shop", "support", "web"}


def two_domains(folder: Path) -> Path:
    """Domains ``a`` and ``b`` (``b`` trains with ``a``) scaffolded in ``folder``."""
    scaffold_domain(folder, "a")
    scaffold_domain(folder, "b", ("a",))
    return folder


def test_the_demo_domains_load_by_default() -> None:
    """Without settings the packaged demo folder supplies every domain, class and task."""
    assert set(load_contracts()) == DEMO
    assert domain_set().sources == (DEMO_DOMAINS_DIR.resolve(),)
    assert {qc.domain for qc in load_query_classes().values()} == {"shop", "support", "web"}
    assert set(load_tasks()) == {"flight_delay"}
    assert {o.name for o in load_owners().owners} >= {"shop-data", "ewr-ops"}


def test_a_folder_of_new_domains_loads_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PRIVMESH_DOMAIN_DIRS naming only a new folder: no demo contract, class, task or owner."""
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", str(two_domains(tmp_path)))
    assert set(load_contracts()) == {"a", "b"}
    assert set(load_query_classes()) == {"a.visits.visit_count", "b.visits.visit_count"}
    assert set(load_product_budgets()) == {"a.visits", "b.visits"}
    assert set(load_tasks()) == {"b_long_visits"}  # a's task is a commented-out template
    assert {o.email for o in load_owners().owners} == {
        "a-team@example.com",
        "b-team@example.com",
    }


@pytest.mark.parametrize("separator", [os.pathsep, ",", " , "])
def test_several_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, separator: str) -> None:
    """Folders are separated by os.pathsep or commas; the demo folder can be one of them."""
    two_domains(tmp_path / "mine")
    value = separator.join([str(tmp_path / "mine"), str(DEMO_DOMAINS_DIR)])
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", value)
    assert set(load_contracts()) == DEMO | {"a", "b"}
    assert {"a.visits.visit_count", "shop.orders.order_count"} <= set(load_query_classes())


def test_an_empty_setting_loads_no_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty PRIVMESH_DOMAIN_DIRS is no folder at all, not the demo."""
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", "")
    assert load_contracts() == {} and load_query_classes() == {}


def test_a_domain_declared_twice_names_both_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two folders declaring the same domain: DuplicateDomain with its code and both paths."""
    scaffold_domain(tmp_path / "one", "a")
    scaffold_domain(tmp_path / "two", "a")
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", f"{tmp_path / 'one'},{tmp_path / 'two'}")
    with pytest.raises(DuplicateDomain) as info:
        load_contracts()
    assert info.value.code == "duplicate_domain"
    assert str(tmp_path / "one" / "a") in str(info.value)
    assert str(tmp_path / "two" / "a") in str(info.value)


def test_a_folder_without_a_contract_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subfolder with no contract.yaml, or a missing configured folder, is named."""
    (tmp_path / "notes").mkdir()
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", str(tmp_path))
    with pytest.raises(InvalidDomainFolder, match=r"contract\.yaml") as info:
        load_contracts()
    assert info.value.code == "invalid_domain_folder"
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", str(tmp_path / "absent"))
    with pytest.raises(InvalidDomainFolder, match="does not exist"):
        load_contracts()


def test_a_contract_in_another_domains_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder's name is the domain's: a contract declaring another domain is refused."""
    scaffold_domain(tmp_path, "a")
    (tmp_path / "a").rename(tmp_path / "z")
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", str(tmp_path))
    with pytest.raises(InvalidContract, match="folder of domain 'z'"):
        load_contracts()


def test_query_classes_may_be_a_folder_of_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``<domain>/query_classes/*.yaml`` is read like one ``query_classes.yaml``."""
    scaffold_domain(tmp_path, "a")
    (tmp_path / "a" / "query_classes").mkdir()
    shutil.move(tmp_path / "a" / "query_classes.yaml", tmp_path / "a" / "query_classes" / "x.yaml")
    monkeypatch.setenv("PRIVMESH_DOMAIN_DIRS", str(tmp_path))
    assert set(load_query_classes()) == {"a.visits.visit_count"}


def test_the_deprecated_flat_contracts_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PRIVMESH_CONTRACTS_DIR alone: its contracts replace the demo, each with the classes and
    owners of the demo domain of its name; a new domain there gets no demo class."""
    flat = tmp_path / "contracts"
    flat.mkdir()
    shutil.copy(DEMO_DOMAINS_DIR / "web" / "contract.yaml", flat / "web.yaml")
    monkeypatch.setenv("PRIVMESH_CONTRACTS_DIR", str(flat))
    assert set(load_contracts()) == {"web"}
    assert {qc.domain for qc in load_query_classes().values()} == {"web"}
    assert load_owners().get("web-analytics@example.com") is not None
