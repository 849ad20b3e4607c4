"""``privmesh domains``: list, show, lint and export the schema of data-product contracts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from domains.contract import DataProduct, contract_json_schema
from domains.lint import Severity, lint_paths
from domains.registry import contracts_dir, get_contract, load_contracts
from infra.console import console, err
from streams.settings import get_stream_settings

app = typer.Typer(help="Data-product contracts of the domains.", no_args_is_help=True)


@app.command("list")
def list_domains() -> None:
    """One line per data product: domain, product, version, owner, privacy unit."""
    table = Table("domain", "product", "version", "owner", "privacy unit", "fields", "retention")
    for domain, contract in sorted(load_contracts().items()):
        for product in contract.products:
            table.add_row(
                domain,
                product.name,
                f"v{product.version}",
                product.owner,
                product.privacy_unit,
                str(len(product.fields)),
                f"{product.retention_days} d",
            )
    console.print(table)
    err.print(f"contracts from {contracts_dir()}")


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
        typer.Argument(help="Contract files or folders (default: the configured contracts)."),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail on warnings too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Findings as JSON lines.")] = False,
) -> None:
    """Refuse contradictions in contracts and warn on likely mistakes.

    Exit status: 0 clean (or warnings only), 1 errors (or warnings with --strict).
    """
    targets = paths or [contracts_dir()]
    missing = [str(p) for p in targets if not p.exists()]
    if missing:
        raise typer.BadParameter(f"no such file or folder: {', '.join(missing)}")
    findings = lint_paths(targets, get_stream_settings().window_seconds)
    for finding in findings:
        if as_json:
            console.print_json(json.dumps(finding.as_dict()), indent=None)
        else:
            colour = "red" if finding.severity is Severity.ERROR else "yellow"
            console.print(f"[{colour}]{finding}[/]")
    errors = sum(f.severity is Severity.ERROR for f in findings)
    warnings = len(findings) - errors
    files = sum(len(list(p.glob("*.yaml"))) if p.is_dir() else 1 for p in targets)
    err.print(f"linted {files} contract file(s): {errors} error(s), {warnings} warning(s)")
    if errors or (strict and warnings):
        raise typer.Exit(1)


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
