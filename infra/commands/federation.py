"""``privmesh train`` and ``privmesh models``: federated training and the model registry."""

from __future__ import annotations

import json
import signal
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from domains.runtime import get_runtime_settings
from federation.errors import EngineError
from infra.console import console, err, print_json
from infra.imports import preload_feast
from infra.inputs import finite, one_of, text_option

models_app = typer.Typer(help="Trained model versions and their lineage.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _data_dir() -> Path:
    return get_runtime_settings().data_dir.resolve()


def _overrides(
    task: str,
    rounds: int | None,
    secagg: bool | None,
    dp_noise: float | None,
    sets: list[str],
    dp_epsilon: float | None = None,
) -> dict[str, Any]:
    values: dict[str, Any] = {"task": task}
    if rounds is not None:
        values["num-server-rounds"] = rounds
    if secagg is not None:
        values["secure-aggregation"] = secagg
    if dp_noise is not None:
        values["dp-noise-multiplier"] = dp_noise
    if dp_epsilon is not None:
        values["dp-epsilon"] = dp_epsilon
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set takes key=value, got {item!r}")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw  # a bare word is a string
    from federation.run_config import RunConfig

    RunConfig.from_flower(values)  # refuse bad keys and combinations before starting anything
    return values


def _dp_preflight(values: dict[str, Any], force: bool) -> None:
    """With DP on, print the expected noise-to-signal and epsilon; refuse a run whose
    noise would drown any signal (``federation.dp.refuse_useless``) unless ``force``."""
    from domains.registry import load_contracts
    from federation.dp import noise_floor, outlook, refuse_useless
    from federation.features import task_encoding
    from federation.model import build_model, parameter_count
    from federation.run_config import RunConfig
    from federation.secagg.protocol import neighbourhood_size
    from federation.task_specs import get_task

    config = RunConfig.from_flower(values)
    if config.record_dp.enabled:
        err.print(
            f"DP: record level (one training row of a domain), epsilon <= "
            f"{config.record_dp.epsilon:g} at delta {config.record_dp.delta:g} for every "
            f"domain over {config.rounds} rounds: each domain runs DP-SGD (per-row clipping "
            f"{config.record_dp.clipping_norm:g}) with the noise its row count needs; the "
            "census prints each domain's plan, and a domain whose target cannot be met "
            "refuses with the reason."
        )
        return
    if not config.dp.enabled:
        return
    spec = get_task(config.task)
    encoding = task_encoding(spec, load_contracts())
    model = build_model(spec.model.kind, encoding.width, spec.model.hidden)
    domains = len(spec.domains)
    threshold = 1
    if config.secure_aggregation:
        threshold = config.threshold_for(neighbourhood_size(config.num_shares, domains))
    expected = outlook(
        config.dp,
        participants=domains,
        floor=min(domains, noise_floor(threshold, config.dp.min_domains)),
        parameters=parameter_count(model),
        rounds=config.rounds,
    )
    err.print(expected.describe())
    refuse_useless(expected, force)


def train(
    task: Annotated[str, typer.Option("--task", "-t", help="Task name (federation/tasks).")],
    rounds: Annotated[int | None, typer.Option(help="Training rounds (num-server-rounds).")] = None,
    secagg: Annotated[
        bool | None, typer.Option("--secagg/--no-secagg", help="SecAgg+ (default on).")
    ] = None,
    dp_noise: Annotated[
        float | None,
        typer.Option(help="Domain-level DP-FedAvg noise multiplier (0: no DP).", min=0),
    ] = None,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(
            help="Record-level DP: DP-SGD in each domain, at most this epsilon per training "
            "row over the run (0: off).",
            min=0,
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any run-config key, e.g. --set local-epochs=2 (repeatable)."),
    ] = None,
    connect: Annotated[
        bool,
        typer.Option(
            "--connect",
            help="Submit to the SuperLink in PRIVMESH_FEDERATION_* settings instead of "
            "starting one (its SuperNodes run on the domains' hosts).",
        ),
    ] = False,
    chaos: Annotated[
        list[str] | None,
        typer.Option(
            help="DOMAIN=STEP:ROUND: kill that domain there (development only).", hidden=True
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Train even if the DP noise would leave the model useless.")
    ] = False,
) -> None:
    """Train one model across the task's domains (SecAgg+ on), then register it."""
    from federation.settings import get_federation_settings
    from federation.task_specs import get_task
    from infra.federation import LocalFederation, app_dir, code_version, run_job

    spec = get_task(task)
    values = _overrides(task, rounds, secagg, dp_noise, set_ or [], dp_epsilon)
    _dp_preflight(values, force)
    values["code-version"] = code_version(app_dir())
    settings = get_federation_settings()
    data_dir = _data_dir()
    kills = dict(item.split("=", 1) for item in chaos or [])
    federation = LocalFederation(spec.domains, data_dir, settings, err.print, kills)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    result: dict[str, Any] = {}
    try:
        if not connect:
            domains = ",".join(spec.domains)
            err.print(f"[bold]privmesh train[/] task={task} domains={domains} data={data_dir}")
            federation.start()
        with _RoundProgress(int(values.get("num-server-rounds", 10))) as (progress, show):
            if connect:
                result = run_job(app_dir(), federation.env(), federation.log_dir, values, show)
            else:
                result = federation.submit(values, show)
            progress.stop()
    except KeyboardInterrupt:
        err.print("interrupted: stopping the federation")
        raise typer.Exit(130) from None
    finally:
        federation.stop()
    if result.get("event") == "failed":
        raise EngineError(f"training failed: {result.get('reason')} [{result.get('code')}]")
    metrics = json.dumps(result["metrics"])
    console.print(f"registered [bold]{result['version']}[/] ({result['status']}): {metrics}")


class _RoundProgress:
    """A round progress bar fed by the job's events, with one line per notable event."""

    def __init__(self, rounds: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=err,
            transient=False,
        )
        self.bar = self.progress.add_task("rounds", total=rounds, status="waiting for domains")

    def __enter__(self) -> tuple[Progress, Any]:
        self.progress.start()
        return self.progress, self.show

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def show(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        say = self.progress.console.print
        if kind == "census":
            ready = ", ".join(
                f"{d} ({v['train_examples']:,} rows)" for d, v in event["ready"].items()
            )
            say(f"census: ready {ready}")
            for domain, reason in event.get("refused", {}).items():
                say(f"[yellow]census: {domain} left out: {reason}[/]")
            self.progress.update(self.bar, status="training")
        elif kind == "round":
            status = f"round {event['round']}: {len(event['participants'])} domains"
            if event.get("train_loss") is not None:
                status += f", loss {event['train_loss']:.4f}"
            if event.get("auc_before") is not None:
                status += f", AUC {event['auc_before']:.4f}"
            privacy = event.get("privacy") or {}
            if privacy:
                status += f", eps {privacy['epsilon_total']:.2f}"
            status += f", {event['seconds']:.1f}s"
            self.progress.update(self.bar, completed=event["round"], status=status)
            for domain, reason in event.get("dropped", {}).items():
                say(f"[yellow]round {event['round']}: {domain} dropped: {reason}[/]")
            if not event.get("released"):
                say(f"[red]round {event['round']} lost: {event.get('lost_reason')}[/]")
        elif kind == "joined":
            say(f"{event['domain']} joined the run")
        elif kind == "evaluated":
            auc = event.get("pooled_auc")
            say(
                f"final model: pooled AUC {auc:.4f}" if auc is not None else "final model evaluated"
            )
        elif kind == "failed":
            say(f"[red]failed: {event.get('reason')}[/]")


def superlink(
    insecure: Annotated[
        bool, typer.Option(help="No TLS (development only; refused in production).")
    ] = False,
) -> None:
    """Run this host's SuperLink, the federation's coordinator, until stopped.

    TLS material comes from PRIVMESH_FEDERATION_CA_CERTIFICATE, _SUPERLINK_CERTIFICATE and
    _SUPERLINK_KEY; with SuperNode authentication on, register each domain's public key
    with `flwr supernode register KEY.pub privmesh` before its SuperNode connects.
    """
    from federation.engine.pki import ServerPki
    from federation.settings import get_federation_settings
    from infra.federation import (
        Processes,
        flower_env,
        serve,
        superlink_command,
        write_flower_config,
    )

    settings = get_federation_settings()
    data_dir = _data_dir()
    pki = (
        None
        if _insecure(insecure, settings.tls)
        else ServerPki(
            _required(settings.ca_certificate, "CA_CERTIFICATE"),
            _required(settings.superlink_certificate, "SUPERLINK_CERTIFICATE"),
            _required(settings.superlink_key, "SUPERLINK_KEY"),
        )
    )
    home = data_dir / "federation" / "flwr-home"
    write_flower_config(home, settings, pki.ca_certificate if pki else None)
    processes = Processes(None, flower_env(data_dir, home))
    processes.spawn("superlink", superlink_command(settings, pki, host="0.0.0.0"))  # noqa: S104
    raise typer.Exit(serve(processes, ["superlink"], err.print))


def supernode(
    domain: Annotated[str, typer.Option("--domain", "-d", help="The domain this host serves.")],
    insecure: Annotated[
        bool, typer.Option(help="No TLS (development only; refused in production).")
    ] = False,
) -> None:
    """Run this domain's SuperNode and its warm ClientApp runner until stopped.

    It dials PRIVMESH_FEDERATION_SUPERLINK_ADDRESS, verifies the SuperLink with
    PRIVMESH_FEDERATION_CA_CERTIFICATE and authenticates with
    PRIVMESH_FEDERATION_SUPERNODE_KEY; training reads the domain's own Feast store.
    """
    from domains.registry import get_contract
    from federation.settings import get_federation_settings
    from infra.federation import Processes, flower_env, serve, start_domain

    get_contract(domain)  # an unknown domain fails here, listing the known ones
    settings = get_federation_settings()
    data_dir = _data_dir()
    secure = not _insecure(insecure, settings.tls)
    ca = _required(settings.ca_certificate, "CA_CERTIFICATE") if secure else None
    key = None
    if secure and settings.supernode_auth:
        key = _required(settings.supernode_key, "SUPERNODE_KEY")
    processes = Processes(None, flower_env(data_dir, data_dir / "federation" / "flwr-home"))
    start_domain(processes, settings, domain, settings.clientappio_base_port, ca, key)
    raise typer.Exit(serve(processes, [f"supernode-{domain}", f"runner-{domain}"], err.print))


def _insecure(requested: bool, tls_setting: bool) -> bool:
    if (requested or not tls_setting) and get_runtime_settings().is_production:
        raise EngineError("TLS is required when PRIVMESH_ENV=production")
    return requested or not tls_setting


def _required(path: Path | None, name: str) -> Path:
    if path is None:
        raise EngineError(f"set PRIVMESH_FEDERATION_{name} (or run with --insecure in development)")
    if not path.is_file():
        raise EngineError(f"PRIVMESH_FEDERATION_{name}={path} is not a readable file")
    return path


def _known_task(task: str) -> None:
    """Refuse a ``--task`` that no task file defines, with the closest names."""
    from federation.task_specs import load_tasks

    text_option("--task", task, 200)
    one_of("--task", task, sorted(load_tasks()))


@models_app.command("list")
def models_list(
    task: Annotated[str | None, typer.Option(help="Only this task's versions.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered model versions, newest first."""
    from federation.registry import open_registry

    if task is not None:
        _known_task(task)
    rows: list[dict[str, Any]] = []
    for v in open_registry().versions(task):
        lineage = v.lineage
        rows.append(
            {
                "version": v.version,
                "task": v.task,
                "status": v.status,
                "created_at": v.created_at,
                "domains": sorted(lineage["domains"]),
                "rounds_completed": lineage["rounds"]["completed"],
                "rounds_planned": lineage["rounds"]["planned"],
                "pooled_auc": lineage["metrics"]["global"].get("pooled_auc"),
                "dp_epsilon": lineage["dp"].get("epsilon_total"),
            }
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        which = f" of task {task!r}" if task else ""
        err.print(
            f"no models{which} yet: train one with `privmesh train --task flight_delay` "
            "(tasks are in the domain folders' tasks.yaml)"
        )
        return
    table = Table("version", "status", "created", "domains", "rounds", "pooled AUC", "DP epsilon")
    for r in rows:
        auc, eps = r["pooled_auc"], r["dp_epsilon"]
        table.add_row(
            r["version"], r["status"], r["created_at"], ", ".join(r["domains"]),
            f"{r['rounds_completed']}/{r['rounds_planned']}",
            f"{auc:.4f}" if auc is not None else "-", f"{eps:.3f}" if eps is not None else "-",
        )  # fmt: skip
    console.print(table)


@models_app.command("show")
def models_show(version: Annotated[str, typer.Argument(help="e.g. flight_delay-v1")]) -> None:
    """The full lineage of one version, as JSON."""
    from federation.registry import open_registry

    print_json(open_registry().get(version).lineage)


@models_app.command("audit")
def models_audit(
    version: Annotated[str, typer.Argument(help="e.g. flight_delay-v1")],
    max_rows: Annotated[
        int, typer.Option(min=10, max=1_000_000, help="Members (and non-members) per domain.")
    ] = 5_000,
    shadows: Annotated[
        int,
        typer.Option(
            min=0, max=64, help="Shadow models per half of the rows (0: loss threshold only)."
        ),
    ] = 4,
) -> None:
    """Membership-inference audit with the participating domains' training and held-out
    rows: the loss-threshold attack and, with shadow models replaying the version's
    training, the shadow-model and shadow-calibrated attacks. Kept in the registry."""
    from domains.registry import load_contracts
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from federation.audit import audit_version
    from federation.registry import open_registry
    from federation.shadow import check_shadow_count

    check_shadow_count(shadows)
    registry = open_registry()
    lineage = registry.get(version).lineage
    contracts = load_contracts()
    unknown = [d for d in lineage.get("domains", {}) if d not in contracts]
    if unknown:
        raise typer.BadParameter(
            f"{version} was trained on domains without a contract here: {unknown}"
        )
    stores = {
        d: DomainFeatureStore(contracts[d], _data_dir(), FeatureStoreSettings())
        for d in lineage.get("domains", {})
    }
    attacks = "loss threshold" + (f" and {2 * shadows} shadow models" if shadows else "")
    err.print(f"auditing {version}: {attacks}, up to {max_rows} rows per domain")
    result: Any = audit_version(registry, version, stores, max_rows, shadows=shadows)
    pooled = {name: attack["pooled"] for name, attack in result["attacks"].items()}
    title = f"membership inference against {version} (pooled over domains)"
    console.print(_attack_table(title, "attack", pooled))
    strongest = f"strongest attack ({result['attack']}) per domain"
    console.print(_attack_table(strongest, "domain", result["per_domain"]))
    console.print(
        "attack AUC 0.5 / advantage 0: the model's outputs say nothing about who trained it "
        "(docs/federation.md#membership-inference-audit)"
    )


def _attack_table(title: str, first: str, results: dict[str, Any]) -> Table:
    """One row per attack (or domain): attack AUC, advantage, TPR at 1% FPR, members."""
    table = Table(title=title)
    for column in (first, "attack AUC", "advantage", "TPR at 1% FPR", "members"):
        table.add_column(column)
    for name, r in results.items():
        table.add_row(
            name, f"{r['attack_auc']:.4f}", f"{r['advantage']:.4f}",
            f"{r['tpr_at_1pct_fpr']:.4f}", str(r["members"]),
        )  # fmt: skip
    return table


def _domain_store(domain: str) -> Any:
    """``domain``'s feature store: the domain is checked first (milliseconds), then Feast
    is imported the CLI's fast way (``infra.imports``)."""
    from domains.registry import get_contract

    contract = get_contract(domain)
    preload_feast()
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore

    return DomainFeatureStore(contract, _data_dir(), FeatureStoreSettings())


def _operator() -> str:
    import getpass

    return getpass.getuser()


def _print_change(change: Any) -> None:
    if change.action == "unchanged":
        console.print(f"{change.domain} is already served {change.version}: nothing changed")
        return
    was = f" (was {change.previous})" if change.previous else ""
    console.print(
        f"{change.domain} is now served {change.version}{was}; validation AUC "
        f"{change.metrics['auc']:.4f} on {change.metrics['examples']} held-out rows"
    )


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="e.g. flight_delay-v3")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="The domain (cohort) to serve.")],
    max_regression: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="AUC the domain may lose at most.")
    ] = 0.005,
    force: Annotated[bool, typer.Option(help="Promote even if the domain does worse.")] = False,
) -> None:
    """Serve VERSION to one domain after validating it on that domain's held-out rows."""
    from federation.registry import open_registry
    from federation.serving import promote

    finite("--max-regression", max_regression, 0.0, 1.0)
    registry = open_registry()
    registry.get(version)  # an unknown version is refused before the store loads
    change = promote(
        registry, version, domain, _domain_store(domain), _operator(), max_regression, force
    )
    _print_change(change)


@models_app.command("rollback")
def models_rollback(
    domain: Annotated[str, typer.Option("--domain", "-d", help="The domain (cohort).")],
    version: Annotated[
        str | None, typer.Argument(help="Version to return to (default: the previous one).")
    ] = None,
    task: Annotated[str, typer.Option(help="Task, when no VERSION is named.")] = "flight_delay",
) -> None:
    """Serve one domain its previous (or the named) version again; others keep theirs."""
    from federation.registry import open_registry
    from federation.serving import rollback

    registry = open_registry()
    task_name = registry.get(version).task if version else task
    change = rollback(registry, task_name, domain, _domain_store(domain), _operator(), version)
    _print_change(change)


@models_app.command("serving")
def models_serving(
    task: Annotated[str, typer.Option(help="Task.")] = "flight_delay",
    as_json: JsonOpt = False,
) -> None:
    """Which version each domain is served, and every change with its validation AUC."""
    from federation.registry import open_registry

    _known_task(task)
    history = open_registry().serving_history(task)
    current = {h["domain"]: h["version"] for h in history}
    if as_json:
        print_json({"task": task, "served": dict(sorted(current.items())), "changes": history})
        return
    table = Table(title=f"{task}: serving changes, oldest first")
    for column in ("domain", "at", "action", "version", "validation AUC", "by"):
        table.add_column(column)
    for h in history:
        auc = h["metrics"].get("validation", {}).get("auc")
        table.add_row(
            h["domain"], h["at"], h["action"], h["version"],
            f"{auc:.4f}" if auc is not None else "-", h["changed_by"],
        )  # fmt: skip
    console.print(table)
    console.print(
        "served now: " + (", ".join(f"{d} {v}" for d, v in sorted(current.items())) or "none")
    )
    if not history:
        err.print(f"nothing served yet: `privmesh models promote VERSION --domain D` ({task})")


@models_app.command("export")
def models_export(
    version: Annotated[str, typer.Argument(help="e.g. flight_delay-v1")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write to.")],
) -> None:
    """Write weights (.npz and a torch state_dict) and lineage.json to a folder."""
    import numpy as np
    import torch

    from federation.model import build_model, set_weights
    from federation.registry import open_registry

    registry = open_registry()
    model_version = registry.get(version)
    weights = registry.weights(version)
    lineage = model_version.lineage
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", *weights)
    model = build_model(
        lineage["model"]["kind"], lineage["model"]["features"], lineage["model"]["hidden"]
    )
    set_weights(model, weights)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "lineage.json").write_text(json.dumps(lineage, indent=2), encoding="utf-8")
    console.print(f"exported {version} to {out}: weights.npz, model.pt, lineage.json")
