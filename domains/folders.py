"""Domain folders: where a domain's contract, query classes, tasks and owners live.

A domain team ships one folder; the mesh loads the folders named by
``PRIVMESH_DOMAIN_DIRS`` (the packaged demo domains by default). The layout::

    <folder>/<domain>/contract.yaml          the domain's contract (domain: <domain>)
    <folder>/<domain>/query_classes.yaml     its DP query classes (or query_classes/*.yaml)
    <folder>/<domain>/tasks/*.yaml           federated training tasks it takes part in
    <folder>/<domain>/owners.yaml            the teams its contract names as owners

Only ``contract.yaml`` is required. This module finds the files and checks that no domain
is declared twice; parsing classes and tasks is their packages' business (nothing in
``domains/`` imports them), contracts and owners are parsed by ``domains.registry`` and
``domains.owners``. ``PRIVMESH_CONTRACTS_DIR`` (deprecated) adds a flat folder of contract
files, each borrowing the other files of the packaged demo domain of its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from domains.errors import DuplicateDomain, InvalidDomainFolder
from domains.runtime import DEMO_DOMAINS_DIR, RuntimeSettings, get_runtime_settings

CONTRACT_FILE = "contract.yaml"
CLASSES_FILE = "query_classes.yaml"
CLASSES_DIR = "query_classes"
TASKS_DIR = "tasks"
OWNERS_FILE = "owners.yaml"


@dataclass(frozen=True, slots=True)
class DomainFolder:
    """The files of one domain (paths only; absent optional files are empty tuples)."""

    domain: str
    contract_file: Path
    class_files: tuple[Path, ...] = ()
    task_files: tuple[Path, ...] = ()
    owners_files: tuple[Path, ...] = ()
    flat: bool = False  # a contract of the deprecated flat folder (named by its file)


@dataclass(frozen=True, slots=True, eq=False)
class DomainSet:
    """Every configured domain by name, and where they were found (for messages)."""

    domains: dict[str, DomainFolder]
    sources: tuple[Path, ...]

    @property
    def class_files(self) -> tuple[Path, ...]:
        """Every query-class file, in domain order."""
        return tuple(p for d in self._ordered() for p in d.class_files)

    @property
    def task_files(self) -> tuple[Path, ...]:
        """Every task file, in domain order."""
        return tuple(p for d in self._ordered() for p in d.task_files)

    @property
    def owners_files(self) -> tuple[Path, ...]:
        """Every owners file, each once, in domain order."""
        return tuple(dict.fromkeys(p for d in self._ordered() for p in d.owners_files))

    def describe(self) -> str:
        """The folders, for messages: ``domains from A, B``."""
        return ", ".join(str(p) for p in self.sources) or "no folder"

    def _ordered(self) -> list[DomainFolder]:
        return [self.domains[name] for name in sorted(self.domains)]


def read_domain_folder(path: Path) -> DomainFolder:
    """The files of the domain folder ``path`` (its name is the domain's)."""
    contract = path / CONTRACT_FILE
    if not contract.is_file():
        raise InvalidDomainFolder(
            f"{path}: a domain folder needs {CONTRACT_FILE} (run `privmesh domains init "
            f"{path.name} --dir {path.parent}` for a template, or move the folder out)"
        )
    classes = sorted((path / CLASSES_DIR).glob("*.yaml"))
    if (path / CLASSES_FILE).is_file():
        classes.insert(0, path / CLASSES_FILE)
    owners = path / OWNERS_FILE
    return DomainFolder(
        domain=path.name,
        contract_file=contract,
        class_files=tuple(classes),
        task_files=tuple(sorted((path / TASKS_DIR).glob("*.yaml"))),
        owners_files=(owners,) if owners.is_file() else (),
    )


def scan(folders: tuple[Path, ...], flat_contracts: Path | None = None) -> DomainSet:
    """The domains under ``folders`` (each a folder of domain folders), plus the contract
    files of the deprecated flat folder ``flat_contracts``; a domain found twice raises
    DuplicateDomain naming both places."""
    domains: dict[str, DomainFolder] = {}
    where: dict[str, Path] = {}

    def add(found: DomainFolder, place: Path) -> None:
        if found.domain in domains:
            raise DuplicateDomain(
                f"domain {found.domain!r} is declared twice: in {where[found.domain]} and in "
                f"{place}; remove one, or load only one of their folders (PRIVMESH_DOMAIN_DIRS)"
            )
        domains[found.domain] = found
        where[found.domain] = place

    for folder in folders:
        if not folder.is_dir():
            raise InvalidDomainFolder(
                f"domain folder {folder} (PRIVMESH_DOMAIN_DIRS) does not exist or is not a folder"
            )
        for path in sorted(folder.iterdir()):
            if path.is_dir() and not path.name.startswith((".", "_")):
                add(read_domain_folder(path), path)
    sources = list(folders)
    if flat_contracts is not None:
        for found in _flat(flat_contracts):
            add(found, found.contract_file)
        sources.append(flat_contracts)
    return DomainSet(domains, tuple(sources))


def _flat(directory: Path) -> list[DomainFolder]:
    """Contracts of a flat folder (``<domain>.yaml``); owners from ``../owners.yaml`` if it
    exists, else the demo domains'; classes and tasks those of the same-named demo domain."""
    if not directory.is_dir():
        raise InvalidDomainFolder(
            f"contracts folder {directory} (PRIVMESH_CONTRACTS_DIR) does not exist"
        )
    beside = directory.parent / OWNERS_FILE
    owners = (
        (beside,) if beside.is_file() else tuple(sorted(DEMO_DOMAINS_DIR.glob(f"*/{OWNERS_FILE}")))
    )
    found = []
    for path in sorted(directory.glob("*.yaml")):
        demo = DEMO_DOMAINS_DIR / path.stem
        borrowed = read_domain_folder(demo) if (demo / CONTRACT_FILE).is_file() else None
        found.append(
            DomainFolder(
                domain=path.stem,
                contract_file=path,
                class_files=borrowed.class_files if borrowed else (),
                task_files=borrowed.task_files if borrowed else (),
                owners_files=owners,
                flat=True,
            )
        )
    return found


def configured_folders(
    runtime: RuntimeSettings | None = None,
) -> tuple[tuple[Path, ...], Path | None]:
    """The folders to load and the deprecated flat contracts folder (or None)."""
    runtime = runtime or get_runtime_settings()
    flat = runtime.contracts_dir
    if flat is not None and "domain_dirs" not in runtime.model_fields_set:
        return (), flat.resolve()
    return tuple(p.resolve() for p in runtime.domain_dirs), flat.resolve() if flat else None


def domain_set(runtime: RuntimeSettings | None = None) -> DomainSet:
    """The configured domains (cached per configuration)."""
    folders, flat = configured_folders(runtime)
    return _scan(folders, flat)


@cache
def _scan(folders: tuple[Path, ...], flat: Path | None) -> DomainSet:
    return scan(folders, flat)
