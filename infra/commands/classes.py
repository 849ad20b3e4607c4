"""``privmesh classes plan FILE``: a daily class's cost and expected precision, before it runs;
``privmesh classes bounds DOMAIN.PRODUCT``: contribution bounds chosen from data, privately.

``plan`` is the same planner as ``POST /v1/classes/plan`` (``dashboards_api/planner.py``), read
from the shipped classes and product totals, the governance policy in force and the released
values in the ledger (noisy values only, never raw counts). Nothing is drawn, stored or spent.

``bounds`` runs the bound advisor (``dashboards_api/bounds.py``) on one UTC day of the
product's offline event files: it SPENDS its epsilon from the product's daily total (committed
to the ledger before anything is printed) and shows DP quantiles of records per subject-day and
of each measure, the share of records each candidate bound would drop, and per daily class of
the product the noise at each candidate (``planner.bound_options``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from infra.console import console

if TYPE_CHECKING:
    from dashboards_api.ledger import Ledger
    from dashboards_api.policy import GovernancePolicy

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
    from dashboards_api.errors import ApiError
    from dashboards_api.ledger import open_ledger
    from dashboards_api.planner import plan_in_context
    from dashboards_api.policy import reserve_micro
    from dashboards_api.query_classes import (
        ProductBudget,
        QueryClass,
        load_product_budgets,
        load_query_classes,
    )
    from dashboards_api.settings import ApiSettings
    from domains.registry import load_contracts
    from domains.runtime import get_runtime_settings
    from streams.settings import StreamSettings

    items, products, domain = _read(file)
    planned = [QueryClass.model_validate(item) for item in items]
    classes = dict(load_query_classes())
    classes.update({qc.id: qc for qc in planned})
    budgets = dict(load_product_budgets())
    for name, item in products.items():
        budgets[f"{domain}.{name}"] = ProductBudget.model_validate(item)
    runtime = get_runtime_settings()
    book = open_ledger(ApiSettings().ledger_url, runtime.data_dir.resolve())
    try:
        policy = _policy(book)
        for qc in planned:
            if qc.release != "daily" or qc.derived_mean:
                console.print(f"{qc.id}: not a paid daily class; the planner plans those")
                continue
            key = f"{qc.domain}.{qc.product}"
            declared = budgets.get(key)
            total = policy.product_total_micro(None if declared is None else declared.budget_micro)
            try:
                result = plan_in_context(
                    qc,
                    load_contracts(),
                    classes,
                    total,
                    book.entries(limit=1_000, product=key),
                    StreamSettings().window_seconds,
                    volume_per_day,
                    reserve_micro(policy, declared, total),
                )
            except ApiError as exc:
                raise ValueError(exc.detail) from exc
            _show(result.to_dict())
    finally:
        book.close()


def _policy(book: Ledger) -> GovernancePolicy:
    """The governance policy in force: the ledger's newest version, else the default."""
    from dashboards_api.policy import GovernancePolicy

    versions = book.policy_versions()
    if versions:
        return GovernancePolicy.model_validate_json(versions[-1].definition)
    return GovernancePolicy()


@app.command("bounds")
def bounds(
    product_key: Annotated[str, typer.Argument(metavar="DOMAIN.PRODUCT", help="Data product.")],
    day: Annotated[
        str | None,
        typer.Option(help="UTC day of the events to read, YYYY-MM-DD (default: yesterday)."),
    ] = None,
    epsilon: Annotated[
        str | None,
        typer.Option(
            help="Epsilon per subject-day this advice costs, from the product's planning room "
            "(its total less its classes' allocations; default: 1, or the room when smaller)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the advice as JSON.")] = False,
) -> None:
    """Suggest max_records_per_period, clamps and max_sum_per_period from DP quantiles of the
    product's events (SPENDS epsilon from the product's planning reserve; the ledger entry
    comes first)."""
    import json
    import sys

    from dashboards_api.bounds import advise
    from dashboards_api.errors import ApiError
    from dashboards_api.event_aggregates import scan_events
    from dashboards_api.ledger import open_ledger
    from dashboards_api.planner import bound_options
    from dashboards_api.policy import allocated_micro
    from dashboards_api.query_classes import load_product_budgets, load_query_classes
    from dashboards_api.registry import current_classes
    from dashboards_api.settings import ApiSettings
    from domains.registry import load_contracts
    from domains.runtime import get_runtime_settings
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from streams.settings import StreamSettings

    domain, _, name = product_key.partition(".")
    contracts = load_contracts()
    contract = contracts.get(domain)
    product = None if contract is None else contract.product(name)
    if contract is None or product is None:
        raise ValueError(f"no data product {product_key!r}; name it as DOMAIN.PRODUCT")
    when = (
        date.fromisoformat(day)
        if day is not None
        else (datetime.now(UTC) - timedelta(days=1)).date()
    )
    spend = None if epsilon is None else _epsilon(epsilon)
    runtime = get_runtime_settings()
    store = DomainFeatureStore(contract, runtime.data_dir, FeatureStoreSettings())
    declared = load_product_budgets().get(product_key)
    book = open_ledger(ApiSettings().ledger_url, runtime.data_dir.resolve())
    try:
        events = scan_events(store.events_folder(product))
        policy = _policy(book)
        total = policy.product_total_micro(None if declared is None else declared.budget_micro)
        served = current_classes(book, load_query_classes(), contracts)
        allocated = allocated_micro(policy, served, product_key)
        advice = advise(
            events,
            domain,
            product,
            when,
            book,
            product_budget_micro=total,
            epsilon=spend,
            planning_budget_micro=None if total is None else total - allocated,
        )
    except ApiError as exc:  # budget exhausted, no total, no events yet: said, not a trace
        raise ValueError(f"{exc.code}: {exc.detail}") from exc
    finally:
        book.close()
    classes = [
        qc
        for qc in load_query_classes().values()
        if (qc.domain, qc.product) == (domain, name)
        and qc.release == "daily"
        and not qc.derived_mean
    ]
    window = StreamSettings().window_seconds
    options = {qc.id: bound_options(advice, qc, product, window) for qc in classes}
    if as_json:
        body = advice.to_dict()
        body["noise_by_class"] = {k: [o.__dict__ for o in v] for k, v in options.items()}
        sys.stdout.write(json.dumps(body, indent=2, default=str) + "\n")
        return
    _show_bounds(advice.to_dict(), options)


def _epsilon(text: str) -> Decimal:
    """``--epsilon`` as a Decimal (a malformed one is a one-line error)."""
    from decimal import InvalidOperation

    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"--epsilon {text!r} is not a number; use e.g. --epsilon 0.5") from None


def _show_bounds(advice: dict[str, Any], options: dict[str, Any]) -> None:
    """The advice as a few lines and tables."""
    paid = "reused, nothing spent" if advice["reused"] else "spent"
    console.print(
        f"[bold]{advice['product']}[/] on {advice['day']}: epsilon {advice['epsilon']} per "
        f"subject-day ({paid}; ledger entry {advice['ledger_entry']})"
    )
    quantiles = ", ".join(
        f"q{a} = {v}" + ("" if advice["reliable"][a] else " (not reliable)")
        for a, v in advice["record_quantiles"].items()
    )
    console.print(
        f"records per subject-day: {quantiles}, over {advice['subject_days']:,} subject-days "
        "(noisy)"
    )
    table = Table("max_records_per_period", "from", "records dropped", "95% ±")
    for c in advice["candidates"]:
        table.add_row(str(c["bound"]), c["source"], f"{c['dropped_share']:.1%}", f"{c['ci95']:.1%}")
    console.print(table)
    for m in advice["measures"]:
        console.print(
            f"{m['measure']}: q{m['alpha']} = {m['value']}"
            + ("" if m["reliable"] else " (not reliable)")
            + f" (clamp now {m['current_clamp']}; first {m['records_per_subject_day']} records "
            "per subject-day)"
        )
    for c in advice.get("sum_caps", []):
        totals = ", ".join(
            f"q{a} = {v:,}" + ("" if c["reliable"][a] else " (not reliable)")
            for a, v in c["values"].items()
        )
        console.print(
            f"{c['measure']} per subject-day: {totals} (first {c['records_per_subject_day']} "
            f"records, each clamped to {c['clamp']})"
        )
    for class_id, rows in options.items():
        widths = Table("bound", *rows[0].half_widths, title=f"{class_id}: 95% ± per resolution")
        for o in rows:
            widths.add_row(str(o.bound), *(f"{w:,}" for w in o.half_widths.values()))
        console.print(widths)
    suggestion = advice["suggestion"]
    console.print(
        f"suggested: max_records_per_period {suggestion['max_records_per_period']}"
        + "".join(f", clamp {k} {v}" for k, v in suggestion["clamp"].items())
        + "".join(
            f", max_sum_per_period {k} {v}"
            for k, v in suggestion.get("max_sum_per_period", {}).items()
        )
        + f" (contract now: {advice['current']['max_records_per_period']})"
    )
    for note in advice["notes"]:
        console.print(f"note: {note}")


def _show(plan: dict[str, Any]) -> None:
    """One class's plan as a table and a few lines."""
    room = plan["product_room"]
    console.print(
        f"[bold]{plan['class_id']}[/] ({plan['product']}): epsilon {plan['epsilon_per_day']} "
        f"per subject per UTC day, paid once for every resolution; product total "
        f"{plan['product_total'] or 'none'}"
        + (
            ""
            if room is None
            else f", {room} not allocated to its other classes or its planning reserve"
        )
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
