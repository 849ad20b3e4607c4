"""``privmesh catalog``: browse, search, trace, lint, export and push the governance catalog."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table
from rich.tree import Tree

from infra.console import console, err, print_json, progress
from infra.inputs import entity_ref, finite, one_of, text_option

if TYPE_CHECKING:
    from catalog.graph import Catalog

app = typer.Typer(
    help="The governance catalog: products, fields, tags, lineage, budget use.",
    no_args_is_help=True,
)
MAX_BUDGET_FRACTION = 1.0  # --budget-above, as the catalog API: the ledger never spends more
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _catalog(*, piped: bool = False) -> Catalog:
    """The configured deployment's catalog, assembled from the contracts (the feature views
    from their Feast-free specs, ``feature_repo.specs``), the ledger and the registries:
    neither Feast nor OpenDP is imported. A progress line shows on a terminal's stderr
    (when piped, only if ``piped``)."""
    with progress("catalog: assembling from the contracts and the ledger", piped=piped):
        from catalog.sources import system_catalog

        return system_catalog()


def _tag_and_protection(tag: str | None, protection: str | None) -> None:
    """Refuse a tag or protection that is not one of the contract's closed sets."""
    from domains.contract import PrivacyTag, Protection

    if tag is not None:
        one_of("--tag", tag, [t.value for t in PrivacyTag])
    if protection is not None:
        one_of("--protection", protection, [p.value for p in Protection])


@app.command("show")
def show(
    entity: Annotated[
        str | None, typer.Argument(help="An entity id, e.g. product:shop.orders (default: all).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The catalog's overview (products, tags, budget), or one entity in full."""
    from catalog.model import KINDS

    if entity is not None:
        entity_ref("ENTITY", entity, KINDS)
    catalog = _catalog()
    if entity is not None:
        found = catalog.get(entity)
        body = {"kind": found.kind, **found.model_dump(mode="json")}
        if as_json:
            print_json(body)
            return
        table = Table(title=found.id, show_header=False)
        for key, value in body.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            table.add_row(key, text)
        console.print(table)
        return
    if as_json:
        print_json({
            "summary": catalog.summary(),
            "products": [e.model_dump(mode="json") for e in catalog.of_kind("product")],
        })  # fmt: skip
        return
    products = Table(title="Data products")
    for column in ("product", "owner", "purpose", "retention", "DI", "QI", "S", "NP", "budget"):
        products.add_column(column)
    for product in catalog.of_kind("product"):
        body = product.model_dump(mode="json")
        counts, budget = body["tag_counts"], body["budget"]
        products.add_row(
            product.name,
            body["owner"].removeprefix("owner:"),
            body["purpose"],
            f"{body['retention_days']} d",
            str(counts["direct_identifier"]),
            str(counts["quasi_identifier"]),
            str(counts["sensitive"]),
            str(counts["non_personal"]),
            f"{budget['spent']}/{budget['per_day']} ε" if budget else "-",
        )
    console.print(products)
    summary = catalog.summary()
    console.print(
        f"{summary['entities']['field']} fields "
        + ", ".join(f"{n} {t}" for t, n in summary["fields_by_tag"].items())
        + f"; {summary['lineage_edges']} lineage edges; classes above 80% of budget: "
        + (", ".join(summary["classes_above_80_percent"]) or "none")
    )


@app.command("search")
def search(
    kind: Annotated[str | None, typer.Option(help="Entity kind (field, product, ...).")] = None,
    tag: Annotated[str | None, typer.Option(help="Privacy tag, e.g. quasi_identifier.")] = None,
    protection: Annotated[str | None, typer.Option(help="keep|drop|tokenise|generalise")] = None,
    text: Annotated[str | None, typer.Option(help="Substring of id, name or description.")] = None,
    domain: Annotated[str | None, typer.Option(help="Only this domain's entities.")] = None,
    budget_above: Annotated[
        float | None, typer.Option(help="Products/classes above this fraction of budget.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Entities matching every filter (e.g. --tag quasi_identifier, --budget-above 0.8)."""
    from catalog.model import KINDS
    from domains.registry import load_contracts

    if kind is not None:
        one_of("--kind", kind, KINDS)
    _tag_and_protection(tag, protection)
    if budget_above is not None:
        finite("--budget-above", budget_above, 0.0, MAX_BUDGET_FRACTION)
    if text is not None:
        text_option("--text", text)
    if domain is not None:
        one_of("--domain", domain, sorted(load_contracts()))
    found = _catalog().search(
        kind=kind,  # type: ignore[arg-type]
        tag=tag, protection=protection, text=text, domain=domain, budget_above=budget_above,
    )  # fmt: skip
    if as_json:
        print_json([{"kind": e.kind, **e.model_dump(mode="json")} for e in found])
        return
    if not found:
        err.print("no entity matches every filter: drop one, or list the kinds with --help")
        return
    table = Table(title=f"{len(found)} entities")
    for column in ("id", "tag / protection / budget", "description"):
        table.add_column(column)
    for entity in found:
        body = entity.model_dump(mode="json")
        facts = " / ".join(str(body[k]) for k in ("tag", "protection") if k in body)
        if body.get("budget"):
            facts = f"{body['budget']['spent']} of {body['budget']['per_day']} ε today"
        table.add_row(entity.id, facts, entity.description[:80])
    console.print(table)


@app.command("lineage")
def lineage(
    entity: Annotated[str, typer.Argument(help="An entity id or column node (id#column).")],
    direction: Annotated[str, typer.Option(help="upstream | downstream | both")] = "downstream",
    depth: Annotated[int | None, typer.Option(min=1, max=50, help="Hops at most.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Where ``entity``'s data comes from and flows to, down to columns."""
    from catalog.model import KINDS

    entity_ref("ENTITY", entity, KINDS)
    one_of("--direction", direction, ("upstream", "downstream", "both"))
    way: Literal["upstream", "downstream", "both"] = direction  # type: ignore[assignment]
    graph = _catalog().lineage(entity, way, depth)
    if as_json:
        print_json(graph)
        return
    forward = way != "upstream"
    nexts: dict[str, list[tuple[str, str | None]]] = {}
    for edge in graph["edges"]:
        a, b = (edge["source"], edge["target"]) if forward else (edge["target"], edge["source"])
        nexts.setdefault(a, []).append((b, edge["transform"]))
    targets = {b for items in nexts.values() for b, _ in items}
    roots = [n["id"] for n in graph["nodes"] if n["id"] not in targets and n["id"] in nexts]
    tree = Tree(f"[bold]{entity}[/] ({way})")

    def grow(branch: Tree, node: str, seen: set[str]) -> None:
        for child, transform in sorted(nexts.get(node, []), key=lambda x: x[0]):
            label = f"{child}" + (f" [dim]({transform})[/]" if transform else "")
            sub = branch.add(label)
            if child not in seen:
                grow(sub, child, seen | {child})

    for root in roots or [entity]:
        grow(tree.add(root), root, {root})
    console.print(tree)


@app.command("lint")
def lint(
    sample: Annotated[
        int, typer.Option(min=0, max=100_000, help="Product-topic events to scan per product.")
    ] = 200,
    as_json: JsonOpt = False,
) -> None:
    """PII lint: fields that look personal but are tagged non_personal, and direct
    identifiers reaching a product topic in clear (scans recent product events)."""
    from catalog.pii_lint import lint_catalog, scan_product_topics

    catalog = _catalog()
    findings = lint_catalog(catalog)
    if sample:
        findings += scan_product_topics(sample)
    if as_json:
        print_json([f.as_dict() for f in findings])
    else:
        for finding in findings:
            console.print(str(finding))
        console.print(f"{len(findings)} findings")
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


@app.command("export")
def export(directory: Annotated[Path, typer.Argument(help="Folder to write into.")]) -> None:
    """Write the catalog as OpenMetadata create-requests (validated by the SDK's models)."""
    start = time.monotonic()
    catalog = _catalog(piped=True)
    with progress(
        f"catalog export: {len(catalog.entities)} entities to OpenMetadata requests "
        "(importing the OpenMetadata SDK takes ~20 s)",
        piped=True,
    ):
        from catalog.openmetadata import build_requests, write_export

        requests = build_requests(catalog)
    with progress(f"catalog export: writing {len(requests)} requests", piped=True):
        counts = write_export(requests, directory)
    console.print(
        f"wrote {sum(counts.values())} requests to {directory} in "
        f"{time.monotonic() - start:.1f} s: " + ", ".join(f"{n} {k}" for k, n in counts.items())
    )


@app.command("push")
def push_(
    server: Annotated[
        str | None, typer.Option(help="OpenMetadata base URL (default: settings).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="A bot's JWT (default: PRIVMESH_CATALOG_OPENMETADATA_TOKEN)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or update every catalog entity on an OpenMetadata server (safe to re-run)."""
    from catalog.openmetadata import build_requests
    from catalog.push import connect, push
    from catalog.settings import CatalogSettings

    settings = CatalogSettings()
    url = server or settings.openmetadata_url
    secret = token or (
        settings.openmetadata_token.get_secret_value() if settings.openmetadata_token else None
    )
    if not secret:
        raise typer.BadParameter(
            "no token: pass --token or set PRIVMESH_CATALOG_OPENMETADATA_TOKEN",
            param_hint="--token",
        )
    catalog = _catalog()
    err.print(f"connecting to OpenMetadata at {url} ...")
    client = connect(url, secret, settings.push_timeout_seconds)
    with progress("catalog push: building the requests with the OpenMetadata SDK", piped=False):
        requests = build_requests(catalog, settings)
    report = push(requests, client, url)
    if as_json:
        print_json(
            {
                "server": url,
                "counts": report.counts(),
                "results": [r.__dict__ for r in report.results],
            }
        )
    else:
        for result in report.failed:
            console.print(f"[red]failed[/] {result.entity_type} {result.fqn}: {result.error}")
        counts = report.counts()
        console.print(
            f"pushed to {url}: {counts['created']} created, {counts['updated']} updated, "
            f"{counts['failed']} failed"
            + (" (re-run after fixing: it is idempotent)" if counts["failed"] else "")
        )
    if report.failed:
        raise typer.Exit(1)
