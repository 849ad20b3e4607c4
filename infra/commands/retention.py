"""``privmesh retention run``: purge data past each contract's retention, and record it."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

import typer

from infra.console import console, err

app = typer.Typer(
    help="Retention: purge what contracts no longer allow keeping.", no_args_is_help=True
)


@app.command("run")
def run(
    domain: Annotated[
        list[str] | None, typer.Option("--domain", "-d", help="Only these domains (default: all).")
    ] = None,
    every: Annotated[
        float | None,
        typer.Option(min=1.0, help="Repeat every this many seconds (a scheduled job)."),
    ] = None,
    now: Annotated[
        str | None, typer.Option(help="Purge as of this ISO time (default: now; for drills).")
    ] = None,
) -> None:
    """One retention pass over the domains' stores and profiles topics (or one every
    ``--every`` seconds until stopped)."""
    from domains.registry import get_contract, load_contracts
    from domains.runtime import get_runtime_settings
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from governance.retention import run_retention
    from streams.errors import BrokerUnavailable
    from streams.producing import RawProducer
    from streams.settings import KafkaSettings

    moment = None
    if now is not None:
        try:
            moment = datetime.fromisoformat(now)
        except ValueError as exc:
            raise typer.BadParameter(f"--now is not an ISO time: {now!r}") from exc
        if moment.tzinfo is None:
            raise typer.BadParameter("--now needs a UTC offset, e.g. 2026-12-01T00:00:00+00:00")
    runtime = get_runtime_settings()
    data_dir = runtime.data_dir.resolve()
    contracts = {d: get_contract(d) for d in domain} if domain else load_contracts()
    stores = {
        d: DomainFeatureStore(c, data_dir, FeatureStoreSettings()) for d, c in contracts.items()
    }
    while True:
        try:
            with RawProducer(KafkaSettings(), client_id="privmesh-retention") as producer:
                record = run_retention(contracts, stores, producer, data_dir / "retention", moment)
        except BrokerUnavailable as exc:
            err.print(f"retention: broker unreachable ({exc}); purging stores only")
            record = run_retention(contracts, stores, None, data_dir / "retention", moment)
        removed = sum(
            p["events"] + p["subject_history"] + p["window_stats"] + p["online"]
            for d in record["domains"].values()
            for p in d["products"]
        )
        console.print(
            f"retention {record['run_id']}: removed {removed} rows over "
            f"{len(record['domains'])} domains in {record['seconds']:.2f}s"
        )
        if every is None:
            return
        time.sleep(every)
