"""Lint the configured domain folders as a whole, before anything starts.

``domains.lint`` checks one contract; this checks every file of every domain folder
(contracts, owners, query classes, tasks) and the references between them: a class or a
task naming a product or a field that does not exist, a contract naming an owner no
``owners.yaml`` lists, a class or task filed under another domain, a name declared twice.
Each finding carries the file and line, and a "did you mean" for a misspelt key or name.

Query classes and tasks are validated by models of packages ``domains`` must not import;
the composition root passes them in (:class:`LintModels`), so a class that lints clean is
one the API loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from domains.contract import DomainContract
from domains.errors import ContractError
from domains.folders import DomainFolder, DomainSet, scan
from domains.lint import (
    Finding,
    Severity,
    did_you_mean,
    known_keys,
    lint_contract,
    read_yaml,
    schema_finding,
)
from domains.owners import Owner, OwnersDirectory
from domains.yaml_files import Location, line_of

CLASS_FILE_KEYS = ("domain", "products", "classes")


# A component's own start-up check of a parsed class or task against the loaded contracts;
# it raises one of ``LintModels.refusals`` (with a ``code``) for what the component refuses.
Check = Callable[[Any, dict[str, DomainContract]], None]


@dataclass(frozen=True, slots=True)
class LintModels:
    """The models a class file's classes and product totals, and a task, must validate
    as (None: only the cross-references of the raw YAML are checked), and the checks the
    API and training run on them at start, so that what lints clean also starts."""

    query_class: type[BaseModel] | None = None
    product_budget: type[BaseModel] | None = None
    task: type[BaseModel] | None = None
    check_class: Check | None = None
    check_task: Check | None = None
    refusals: tuple[type[Exception], ...] = ()


@dataclass(slots=True)
class _Linter:
    window_seconds: int | None
    models: LintModels
    findings: list[Finding] = field(default_factory=list)
    contracts: dict[str, DomainContract] = field(default_factory=dict)
    contract_lines: dict[str, tuple[Path, dict[Location, int]]] = field(default_factory=dict)
    owners: dict[str, tuple[Owner, Path]] = field(default_factory=dict)
    class_ids: dict[str, str] = field(default_factory=dict)
    task_names: dict[str, str] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # domains whose contract has errors

    def error(
        self, code: str, path: Path, lines: Mapping[Location, int], where: Location, message: str
    ) -> None:
        self.findings.append(
            Finding(
                Severity.ERROR,
                code,
                str(path),
                ".".join(str(p) for p in where),
                message,
                line_of(dict(lines), where),
            )
        )

    def read(
        self, path: Path, skip_empty: bool = False
    ) -> tuple[object, dict[Location, int]] | None:
        """``path`` parsed with its key lines, or None after an ``unreadable`` finding (or,
        with ``skip_empty``, for a file of comments only: a commented-out template)."""
        read = read_yaml(path)
        if isinstance(read, Finding):
            self.findings.append(read)
            return None
        return None if skip_empty and read[0] is None else read

    def run_check(
        self,
        check: Check | None,
        model: type[BaseModel] | None,
        raw: object,
        place: tuple[Path, dict[Location, int], Location],
    ) -> None:
        """A component's own check of ``raw`` (valid as ``model``); a refusal is a finding
        with the refusal's code at ``place`` (file, lines, key path)."""
        if check is None or model is None:
            return
        try:
            check(model.model_validate(raw), self.contracts)
        except self.models.refusals as exc:
            self.error(getattr(exc, "code", "refused"), *place, str(exc))

    def validate(
        self,
        model: type[BaseModel] | None,
        raw: object,
        path: Path,
        lines: dict[Location, int],
        prefix: Location,
    ) -> bool:
        """True if ``raw`` is valid as ``model`` (or no model is given); else findings."""
        if model is None:
            return True
        try:
            model.model_validate(raw)
        except ValidationError as exc:
            keys = known_keys(model)
            self.findings.extend(
                schema_finding(error, str(path), lines, prefix, keys) for error in exc.errors()
            )
            return False
        return True


def lint_domains(
    folders: Iterable[Path],
    flat_contracts: Path | None = None,
    window_seconds: int | None = None,
    models: LintModels | None = None,
) -> list[Finding]:
    """Every finding of the domains under ``folders`` (and the deprecated flat contracts
    folder): each file's own problems, then the references between files."""
    try:
        found = scan(tuple(folders), flat_contracts)
    except ContractError as exc:
        return [Finding(Severity.ERROR, exc.code, "", "", str(exc))]
    return lint_domain_set(found, window_seconds, models)


def lint_domain_set(
    found: DomainSet, window_seconds: int | None = None, models: LintModels | None = None
) -> list[Finding]:
    """Every finding of the domains ``found`` (see :func:`lint_domains`)."""
    linter = _Linter(window_seconds, models or LintModels())
    for name, folder in sorted(found.domains.items()):
        _lint_contract(linter, name, folder)
    for path in found.owners_files:
        _lint_owners(linter, path)
    for name in sorted(linter.contracts):
        _check_owners(linter, name)
    for name, folder in sorted(found.domains.items()):
        for path in folder.class_files:
            _lint_class_file(linter, name, folder, path)
        for path in folder.task_files:
            _lint_task_file(linter, name, folder, path)
    return linter.findings


def _lint_contract(linter: _Linter, name: str, folder: DomainFolder) -> None:
    path = folder.contract_file
    read = linter.read(path)
    if read is None:
        linter.broken.add(name)
        return
    raw, lines = read
    findings = lint_contract(raw, str(path), linter.window_seconds, lines)
    linter.findings.extend(findings)
    if any(f.severity is Severity.ERROR for f in findings):
        linter.broken.add(name)
        return
    contract = DomainContract.model_validate(raw)
    if not folder.flat and contract.domain != name:
        linter.error(
            "domain_folder_mismatch",
            path,
            lines,
            ("domain",),
            f"the folder is named {name!r} but the contract declares domain "
            f"{contract.domain!r}; a domain folder is named after its domain",
        )
        return
    if contract.domain in linter.contracts:
        linter.error(
            "duplicate_domain",
            path,
            lines,
            ("domain",),
            f"domain {contract.domain!r} is already declared in "
            f"{linter.contract_lines[contract.domain][0]}",
        )
        return
    linter.contracts[contract.domain] = contract
    linter.contract_lines[contract.domain] = (path, lines)


def _lint_owners(linter: _Linter, path: Path) -> None:
    read = linter.read(path)
    if read is None:
        return
    raw, lines = read
    if not linter.validate(OwnersDirectory, raw, path, lines, ()):
        return
    for index, owner in enumerate(OwnersDirectory.model_validate(raw).owners):
        seen = linter.owners.setdefault(owner.email, (owner, path))
        if seen[0] != owner:
            linter.error(
                "owner_conflict",
                path,
                lines,
                ("owners", index),
                f"owner {owner.email!r} is listed differently in {seen[1]}; list a team the "
                "same way everywhere",
            )


def _check_owners(linter: _Linter, name: str) -> None:
    contract = linter.contracts[name]
    path, lines = linter.contract_lines[name]
    named: list[tuple[Location, str]] = [(("owner",), contract.owner)]
    named += [(("products", i, "owner"), p.owner) for i, p in enumerate(contract.products)]
    for where, email in named:
        if email not in linter.owners:
            linter.error(
                "unknown_owner",
                path,
                lines,
                where,
                f"owner {email!r} is listed in no owners.yaml of the loaded domain folders"
                f"{did_you_mean(email, linter.owners)}; add the team to "
                f"{path.parent / 'owners.yaml'}",
            )


def _lint_class_file(linter: _Linter, name: str, folder: DomainFolder, path: Path) -> None:
    read = linter.read(path, skip_empty=True)
    if read is None:
        return
    raw, lines = read
    if not isinstance(raw, dict):
        linter.error("invalid_type", path, lines, (), "expected a mapping with 'classes'")
        return
    for key in raw:
        if key not in CLASS_FILE_KEYS:
            linter.error(
                "unknown_key",
                path,
                lines,
                (str(key),),
                f"unknown key {key!r}{did_you_mean(str(key), CLASS_FILE_KEYS)} (a class file "
                f"holds {', '.join(CLASS_FILE_KEYS)})",
            )
    domain = raw.get("domain")
    if domain is not None and not folder.flat and domain != name:
        linter.error(
            "class_domain_mismatch",
            path,
            lines,
            ("domain",),
            f"the file is in the folder of domain {name!r} but declares domain {domain!r}",
        )
    _lint_budgets(linter, path, lines, raw.get("products") or {}, domain)
    items = raw.get("classes") or []
    if not isinstance(items, list):
        linter.error("invalid_type", path, lines, ("classes",), "expected a list of classes")
        return
    for index, item in enumerate(items):
        where = ("classes", index)
        if not linter.validate(linter.models.query_class, item, path, lines, where):
            continue
        if isinstance(item, dict):
            _check_class(linter, name, folder, path, lines, where, item)


def _lint_budgets(
    linter: _Linter, path: Path, lines: dict[Location, int], products: object, domain: object
) -> None:
    """A class file's per-product totals: valid, of a known product of its domain."""
    if not isinstance(products, dict):
        linter.error("invalid_type", path, lines, ("products",), "expected a mapping")
        return
    if products and domain is None:
        linter.error(
            "missing_key", path, lines, ("products",), "'products' needs a top-level 'domain'"
        )
        return
    for product, budget in products.items():
        where: Location = ("products", str(product))
        if linter.validate(linter.models.product_budget, budget, path, lines, where):
            _check_product(linter, path, lines, where, str(domain), str(product))


def _check_class(
    linter: _Linter,
    name: str,
    folder: DomainFolder,
    path: Path,
    lines: dict[Location, int],
    where: Location,
    item: dict[str, Any],
) -> None:
    class_id, domain, product = item.get("id"), item.get("domain"), item.get("product")
    if class_id in linter.class_ids:
        linter.error(
            "duplicate_class",
            path,
            lines,
            (*where, "id"),
            f"class {class_id!r} is already declared in {linter.class_ids[class_id]}",
        )
        return
    linter.class_ids[str(class_id)] = str(path)
    if not folder.flat and domain != name:
        linter.error(
            "class_domain_mismatch",
            path,
            lines,
            (*where, "domain"),
            f"class {class_id!r} is filed under domain {name!r} but queries domain {domain!r}; "
            "move it to that domain's folder",
        )
        return
    spec = _check_product(linter, path, lines, (*where, "product"), str(domain), str(product))
    if spec is None:
        return
    before = len(linter.findings)
    for role in ("measure", "group_by"):
        value = item.get(role)
        if value is not None:
            _check_field(linter, path, lines, (*where, role), str(domain), spec, str(value))
    if len(linter.findings) == before:
        models = linter.models
        linter.run_check(models.check_class, models.query_class, item, (path, lines, where))


def _check_product(
    linter: _Linter,
    path: Path,
    lines: dict[Location, int],
    where: Location,
    domain: str,
    product: str,
) -> Any:
    """The product ``domain``.``product``, or None after an ``unknown_domain`` or
    ``unknown_product`` finding."""
    contract = linter.contracts.get(domain)
    if contract is None and domain in linter.broken:
        return None  # its contract's own errors are reported
    if contract is None:
        linter.error(
            "unknown_domain",
            path,
            lines,
            where,
            f"no loaded domain is called {domain!r}{did_you_mean(domain, linter.contracts)}",
        )
        return None
    found = contract.product(product)
    if found is None:
        names = [p.name for p in contract.products]
        linter.error(
            "unknown_product",
            path,
            lines,
            where,
            f"domain {domain!r} has no product {product!r}{did_you_mean(product, names)} "
            f"(its products: {', '.join(names)})",
        )
    return found


def _check_field(
    linter: _Linter,
    path: Path,
    lines: dict[Location, int],
    where: Location,
    domain: str,
    product: Any,
    name: str,
) -> None:
    if product.field(name) is None:
        names = [f.name for f in product.fields]
        linter.error(
            "unknown_field",
            path,
            lines,
            where,
            f"product {domain}.{product.name} has no field {name!r}{did_you_mean(name, names)}",
        )


def _lint_task_file(linter: _Linter, name: str, folder: DomainFolder, path: Path) -> None:
    read = linter.read(path, skip_empty=True)
    if read is None:
        return
    raw, lines = read
    if not linter.validate(linter.models.task, raw, path, lines, ()):
        return
    if not isinstance(raw, dict):
        linter.error("invalid_type", path, lines, (), "expected a task mapping")
        return
    task = str(raw.get("name"))
    if task in linter.task_names:
        linter.error(
            "duplicate_task",
            path,
            lines,
            ("name",),
            f"task {task!r} is already declared in {linter.task_names[task]}",
        )
        return
    linter.task_names[task] = str(path)
    domains = [str(d) for d in raw.get("domains") or []]
    if not folder.flat and name not in domains:
        linter.error(
            "task_domain_mismatch",
            path,
            lines,
            ("domains",),
            f"task {task!r} is filed under domain {name!r}, which it does not train on; "
            "move it to the folder of one of its domains",
        )
    fields = [("label", "field")] + [
        ("features", i, "field") for i in range(len(raw.get("features") or []))
    ]
    reported: set[Location] = set()  # a field missing in several domains is one finding
    before = len(linter.findings)
    for index, domain in enumerate(domains):
        product = _check_product(
            linter, path, lines, ("domains", index), domain, str(raw.get("product"))
        )
        if product is None:
            continue
        for where in fields:
            value: Any = raw
            for part in where:
                value = value[part]
            if where not in reported and product.field(str(value)) is None:
                reported.add(where)
                _check_field(linter, path, lines, where, domain, product, str(value))
    if len(linter.findings) == before and all(d in linter.contracts for d in domains):
        models = linter.models
        linter.run_check(models.check_task, models.task, raw, (path, lines, ()))
