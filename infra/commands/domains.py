"""``privmesh domains``: list, show, lint, scaffold and export the schema of the domains."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from domains.contract import contract_json_schema
from domains.folders import CONTRACT_FILE, configured_folders, domain_set
from domains.lint import Finding, Severity
from domains.registry import get_contract, load_contracts
from infra.commands.odcs import export_domain, import_contract
from infra.console import console, err, print_json
from streams.settings import get_stream_settings

if TYPE_CHECKING:
    from domains.contract import DataProduct, DomainContract
    from domains.lint_folders import LintModels
    from federation.task_specs import TaskSpec


def _check_task(task: TaskSpec, contracts: dict[str, DomainContract]) -> None:
    from federation.features import task_encoding  # pandas: only when a task is linted

    task_encoding(task, contracts)  # every domain encodes the task's features the same way


@cache
def lint_models() -> LintModels:
    """The models and checks the folder linter validates query classes and tasks with
    (imported on first use: they pull in the API's and federation's modules)."""
    from dashboards_api.errors import InvalidQueryClasses
    from dashboards_api.query_classes import ProductBudget, QueryClass
    from dashboards_api.sensitivity import check_class
    from domains.errors import ContractError
    from domains.lint_folders import LintModels
    from federation.errors import FederationError
    from federation.task_specs import TaskSpec

    return LintModels(
        query_class=QueryClass,
        product_budget=ProductBudget,
        task=TaskSpec,
        check_class=check_class,
        check_task=_check_task,
        refusals=(InvalidQueryClasses, FederationError, ContractError),
    )


def lint_configured() -> list[Finding]:
    """Every finding of the configured domains (``PRIVMESH_DOMAIN_DIRS``): contracts,
    owners, query classes, tasks, the references between them, and (when those are clean)
    the API's start-up checks of the product totals against the governance policy."""
    from dashboards_api.errors import InvalidQueryClasses
    from dashboards_api.policy import check_at_start
    from dashboards_api.query_classes import load_product_budgets, load_query_classes
    from dashboards_api.settings import ApiSettings
    from domains.lint_folders import lint_domains

    folders, flat = configured_folders()
    findings = lint_domains(folders, flat, get_stream_settings().window_seconds, lint_models())
    if any(f.severity is Severity.ERROR for f in findings):
        return findings
    contracts = load_contracts()
    products = [f"{d}.{p.name}" for d, c in contracts.items() for p in c.products]
    budgets = load_product_budgets()
    totals = {k: b.budget_micro for k, b in budgets.items()}
    reserves = {k: b.reserve_micro for k, b in budgets.items()}
    try:
        check_at_start(ApiSettings().policy, load_query_classes(), totals, products, reserves)
    except InvalidQueryClasses as exc:
        where = domain_set_description()
        findings.append(Finding(Severity.ERROR, exc.code, where, "", str(exc)))
    return findings


def print_findings(findings: list[Finding], as_json: bool = False) -> int:
    """Print ``findings`` (red errors, yellow warnings); returns the number of errors."""
    for finding in findings:
        if as_json:
            console.print_json(json.dumps(finding.as_dict()), indent=None)
        else:
            colour = "red" if finding.severity is Severity.ERROR else "yellow"
            console.print(Text(str(finding), style=colour), soft_wrap=True)
    return sum(f.severity is Severity.ERROR for f in findings)


app = typer.Typer(help="Data-product contracts of the domains.", no_args_is_help=True)
app.command("import")(import_contract)
app.command("export")(export_domain)


@app.command("list")
def list_domains(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """One line per data product: domain, product, version, owner, privacy unit."""
    rows: list[dict[str, Any]] = [
        {
            "domain": domain,
            "product": product.name,
            "version": product.version,
            "owner": product.owner,
            "privacy_unit": product.privacy_unit,
            "fields": len(product.fields),
            "retention_days": product.retention_days,
        }
        for domain, contract in sorted(load_contracts().items())
        for product in contract.products
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("domain", "product", "version", "owner", "privacy unit", "fields", "retention")
    for r in rows:
        table.add_row(
            r["domain"], r["product"], f"v{r['version']}", r["owner"], r["privacy_unit"],
            str(r["fields"]), f"{r['retention_days']} d",
        )  # fmt: skip
    console.print(table)
    err.print(f"domains from {domain_set().describe()}")
    if not rows:
        err.print("no domains yet: scaffold one with `privmesh domains init NAME`")


@app.command()
def show(
    domain: Annotated[str, typer.Argument(help="Domain name.")],
    product: Annotated[str | None, typer.Option(help="Only this product.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the contract as JSON.")] = False,
) -> None:
    """The fields of a domain's products with their privacy tags and protections."""
    contract = get_contract(domain)
    products = [p for p in contract.products if product in (None, p.name)]
    if not products:
        known = ", ".join(p.name for p in contract.products)
        raise typer.BadParameter(f"domain {domain!r} has no product {product!r} (known: {known})")
    if as_json:
        console.print_json(
            json.dumps(
                {
                    **contract.model_dump(mode="json", exclude={"products"}),
                    "products": [p.model_dump(mode="json") for p in products],
                }
            )
        )
        return
    console.print(f"[bold]{contract.domain}[/]: {contract.description} (owner {contract.owner})")
    for p in products:
        console.print(_product_table(p))


def _product_table(product: DataProduct) -> Table:
    table = Table(
        "field", "type", "tag", "protection", "constraint", "required",
        title=(
            f"{product.name} v{product.version}: {product.description}\n"
            f"purpose {product.purpose}, retention {product.retention_days} d, "
            f"privacy unit {product.privacy_unit}, event time {product.event_time}"
        ),
        title_justify="left",
    )  # fmt: skip
    for f in product.fields:
        if f.bounds is not None:
            constraint = f"[{f.bounds.min:g}, {f.bounds.max:g}]"
        elif f.allowed_values is not None:
            constraint = "{" + ", ".join(f.allowed_values) + "}"
        elif f.generalise is not None:
            g = f.generalise
            constraint = {
                "ipv4_prefix": f"IPv4 /{g.bits}",
                "prefix": f"first {g.length} chars",
                "age_band": f"age band {g.width} y",
                "truncate_time": f"floor to {g.seconds} s",
            }[g.method]
        else:
            constraint = ""
        unit = " (privacy unit)" if f.name == product.privacy_unit else ""
        table.add_row(
            f.name + unit, f.type.value, f.tag.value, f.protection.value, constraint,
            "yes" if f.required else "no",
        )  # fmt: skip
    return table


@app.command()
def lint(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Folders of domain folders, single domain folders, or (deprecated) contract "
            "files and flat folders of them (default: the configured domains)."
        ),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail on warnings too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Findings as JSON lines.")] = False,
) -> None:
    """Check contracts, owners, query classes and tasks, and the references between them.

    Exit status: 0 clean (or warnings only), 1 errors (or warnings with --strict).
    """
    if not paths:
        findings = lint_configured()
        what = f"the domains in {domain_set_description()}"
    else:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise typer.BadParameter(f"no such file or folder: {', '.join(missing)}")
        findings = _lint_targets(paths)
        what = ", ".join(str(p) for p in paths)
    errors = print_findings(findings, as_json)
    warnings = len(findings) - errors
    err.print(f"linted {what}: {errors} error(s), {warnings} warning(s)")
    if errors or (strict and warnings):
        raise typer.Exit(1)


def domain_set_description() -> str:
    """The configured folders, for messages."""
    folders, flat = configured_folders()
    return ", ".join(str(p) for p in (*folders, *([flat] if flat else []))) or "no folder"


def _lint_targets(paths: list[Path]) -> list[Finding]:
    """Folders of domain folders are linted together; a single domain folder alone;
    anything else as contract files (the deprecated flat layout)."""
    from domains.folders import DomainSet, read_domain_folder
    from domains.lint import lint_paths
    from domains.lint_folders import lint_domain_set, lint_domains

    window = get_stream_settings().window_seconds
    models = lint_models()
    folders = [p for p in paths if p.is_dir() and any(p.glob(f"*/{CONTRACT_FILE}"))]
    singles = [p for p in paths if (p / CONTRACT_FILE).is_file()]
    flat = [p for p in paths if p not in folders and p not in singles]
    findings = lint_domains(folders, None, window, models) if folders else []
    for single in singles:
        found = read_domain_folder(single)
        findings += lint_domain_set(DomainSet({found.domain: found}, (single,)), window, models)
    return findings + (lint_paths(flat, window) if flat else [])


@app.command()
def init(
    name: Annotated[str, typer.Argument(help="The new domain's name (lower case, digits, _).")],
    folder: Annotated[
        Path, typer.Option("--dir", help="Folder of domain folders to create it in.")
    ] = Path(),
    train_with: Annotated[
        list[str] | None,
        typer.Option(
            "--train-with",
            help="Another domain publishing the same product: the scaffolded federated task "
            "trains across both (repeatable; without it the task is commented out).",
        ),
    ] = None,
) -> None:
    """Scaffold a commented domain folder: contract, query class, task and owners entry."""
    from domains.scaffold import scaffold_domain

    files = scaffold_domain(folder, name, tuple(train_with or ()))
    for path in files:
        console.print(str(path), highlight=False)
    err.print(
        f"created domain {name!r}; edit the files, then: PRIVMESH_DOMAIN_DIRS={folder.resolve()} "
        "privmesh domains lint"
    )


@app.command()
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """Print (or write) the JSON Schema of contract files."""
    text = json.dumps(contract_json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        console.out(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")
