"""``privmesh classes plan FILE``: a daily class's cost and expected precision, before it runs.

The same planner as ``POST /v1/classes/plan`` (``dashboards_api/planner.py``), read from the
shipped classes and product totals, the governance policy in force and the released values
in the ledger (noisy values only, never raw counts). Nothing is drawn, stored or spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from infra.console import console

app = typer.Typer(help="Query classes: plan one before registering it.", no_args_is_help=True)


def _read(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    """The class definitions of ``path`` (one class, or a query-class file with
    ``classes:``), its ``products:`` totals and its ``domain``."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a class (a mapping) or a file with 'classes:'")
    if "classes" in raw:
        items = raw.get("classes") or []
        return list(items), dict(raw.get("products") or {}), raw.get("domain")
    return [raw], {}, None


@app.command("plan")
def plan(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Class YAML file.")],
    volume_per_day: Annotated[
        float | None,
        typer.Option(
            "--volume-per-day",
            min=0,
            help=(
                "Typical value of the statistic per day (records, cents, subjects), used "
                "only when the ledger holds no released value of it yet."
            ),
        ),
    ] = None,
) -> None:
    """Print each daily class's cost per day and expected 95% interval per resolution."""
    from dashboards_api.budget import to_micro
    from dashboards_api.errors import ApiError
    from dashboards_api.ledger import open_ledger
    from dashboards_api.planner import plan_in_context
    from dashboards_api.policy import GovernancePolicy
    from dashboards_api.query_classes import (
        ProductBudget,
        QueryClass,
        load_product_budgets,
        load_query_classes,
    )
    from dashboards_api.settings import ApiSettings
    from domains.registry import load_contracts
    from domains.runtime import RuntimeSettings
    from streams.settings import StreamSettings

    items, products, domain = _read(file)
    planned = [QueryClass.model_validate(item) for item in items]
    classes = dict(load_query_classes())
    classes.update({qc.id: qc for qc in planned})
    totals = {key: b.budget_micro for key, b in load_product_budgets().items()}
    for name, item in products.items():
        totals[f"{domain}.{name}"] = ProductBudget.model_validate(item).budget_micro
    runtime = RuntimeSettings()
    book = open_ledger(ApiSettings().ledger_url, runtime.data_dir.resolve())
    try:
        versions = book.policy_versions()
        policy = (
            GovernancePolicy.model_validate_json(versions[-1].definition)
            if versions
            else GovernancePolicy()
        )
        for qc in planned:
            if qc.release != "daily" or qc.derived_mean:
                console.print(f"{qc.id}: not a paid daily class; the planner plans those")
                continue
            key = f"{qc.domain}.{qc.product}"
            total = totals.get(key)
            if total is None and policy.default_product_budget_per_day is not None:
                total = to_micro(policy.default_product_budget_per_day)
            if total is not None:
                total = min(total, policy.max_product_micro)
            try:
                result = plan_in_context(
                    qc,
                    load_contracts(),
                    classes,
                    total,
                    book.entries(limit=1_000, product=key),
                    StreamSettings().window_seconds,
                    volume_per_day,
                )
            except ApiError as exc:
                raise ValueError(exc.detail) from exc
            _show(result.to_dict())
    finally:
        book.close()


def _show(plan: dict[str, Any]) -> None:
    """One class's plan as a table and a few lines."""
    room = plan["product_room"]
    console.print(
        f"[bold]{plan['class_id']}[/] ({plan['product']}): epsilon {plan['epsilon_per_day']} "
        f"per subject per UTC day, paid once for every resolution; product total "
        f"{plan['product_total'] or 'none'}"
        + ("" if room is None else f", {room} not allocated to its other classes")
    )
    volume = plan["volume_per_day"]
    console.print(
        "typical volume: "
        + ("unknown" if volume is None else f"{volume:,.0f} per day, from {plan['volume_source']}")
    )
    accuracy = plan["accuracy"]
    table = Table("resolution", "95% ± (worst time of day)", "typical value", "relative", "meets")
    for row in plan["rows"]:
        promised = accuracy is not None and accuracy["resolution"] == row["resolution"]
        table.add_row(
            row["resolution"] + (" (declared)" if promised else ""),
            f"{row['half_width']:,}",
            "-" if row["typical_value"] is None else f"{row['typical_value']:,.1f}",
            "-" if row["relative"] is None else f"{row['relative']:.1%}",
            {True: "yes", False: "no", None: "-"}[row["meets"]],
        )
    console.print(table)
    if accuracy is not None:
        verdict = {True: "met", False: "NOT met", None: "not checked"}[plan["meets"]]
        console.print(
            f"declared accuracy {accuracy['relative']:.1%} at {accuracy['resolution']}: {verdict}"
        )
    if plan["suggestion"] is not None:
        console.print(f"to meet it: {plan['suggestion']['text']}")
    for note in plan["notes"]:
        console.print(f"note: {note}")
