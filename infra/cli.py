"""The ``privmesh`` command line: the composition root of every component."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import click
import typer
from typer.core import TyperGroup

from infra.console import console, err, print_json
from infra.errors import InfraError, InvalidCliValue, StackNotRunning

if TYPE_CHECKING:
    from domains.runtime import RuntimeSettings

# Sub-commands imported only when invoked (or listed by --help): a command's start pays for
# its own imports, not every other command's (docs/cli.md, "Performance").
LAZY_COMMANDS: dict[str, str] = {
    "domains": "infra.commands.domains:app",
    "produce": "infra.commands.data:produce",
    "tail": "infra.commands.data:tail",
    "erase": "infra.commands.privacy:erase",
    "keys": "infra.commands.privacy:keys_app",
    "train": "infra.commands.federation:train",
    "superlink": "infra.commands.federation:superlink",
    "supernode": "infra.commands.federation:supernode",
    "models": "infra.commands.federation:models_app",
    "catalog": "infra.commands.catalog:app",
    "classes": "infra.commands.classes:app",
    "dsr": "infra.commands.dsr:app",
    "retention": "infra.commands.retention:app",
    "consent": "infra.commands.consent:app",
    "deploy": "infra.commands.deploy:app",
}


def _lazy_command(name: str, target: str) -> click.Command:
    """The click command of ``target`` (``module:attribute``: a Typer app or a function)."""
    module, attribute = target.split(":")
    obj = getattr(importlib.import_module(module), attribute)
    if isinstance(obj, typer.Typer):  # a group even with one command, as add_typer makes it
        command: click.Command = typer.main.get_group(obj)
    else:
        single = typer.Typer()
        single.command(name)(obj)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """The root group: ``LAZY_COMMANDS`` are imported the first time they are looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_COMMANDS if n not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            self.commands[cmd_name] = _lazy_command(cmd_name, LAZY_COMMANDS[cmd_name])
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="privmesh",
    help="Streaming data-mesh analytics whose every output is private.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=LazyGroup,
)
features_app = typer.Typer(help="Per-domain Feast stores.", no_args_is_help=True)
app.add_typer(features_app, name="features")

DomainOpt = Annotated[str, typer.Option("--domain", "-d", help="Name of a loaded domain.")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (stable keys, no markup) instead of a table.")
]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:  # as federation.registry.privmesh_version (the model lineage's), without numpy
            installed = version("privmesh")
        except PackageNotFoundError:
            installed = "unknown"
        console.out(f"privmesh {installed}", highlight=False)
        raise typer.Exit


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Streaming data-mesh analytics whose every output is private."""


def _runtime() -> RuntimeSettings:
    from domains.runtime import get_runtime_settings

    runtime = get_runtime_settings()
    return runtime.model_copy(update={"data_dir": runtime.data_dir.resolve()})


DomainsOpt = Annotated[
    list[str] | None,
    typer.Option("--domain", "-d", help="Domain to run (repeatable; default: every contract)."),
]


@app.command()
def up(domain: DomainsOpt = None) -> None:
    """Start broker, stream processors, API and generator; Ctrl-C stops everything.

    The configured domains are linted first: with errors nothing starts."""
    from dashboards_api.settings import ApiSettings
    from domains.lint import Severity
    from infra.commands import domains as domains_commands
    from infra.settings import StackSettings
    from infra.stack import RestartPolicy, Stack, build_components
    from streams.settings import KafkaSettings, StreamSettings, connect_host

    lint_errors = [f for f in domains_commands.lint_configured() if f.severity is Severity.ERROR]
    if domains_commands.print_findings(lint_errors):
        err.print(
            f"[red]privmesh up: {len(lint_errors)} error(s) in the domains; nothing started.[/] "
            "Fix them (`privmesh domains lint` rechecks)."
        )
        raise typer.Exit(1)

    runtime, kafka, streams = _runtime(), KafkaSettings(), StreamSettings()
    api, stack_settings = ApiSettings(), StackSettings()
    domains = _chosen_domains(domain or stack_settings.domains)
    web_ports = {d: streams.worker_web_port + i for i, d in enumerate(domains)}
    components = build_components(
        domains=web_ports,
        generated=[d for d in domains if stack_settings.generator and _has_demo_events(d)],
        embedded_broker=kafka.embedded,
        broker_port=kafka.embedded_port,
        bootstrap=kafka.bootstrap,
        topics=_topics_of(domains),
        partitions=kafka.partitions,
        replication=kafka.replication_factor,
        api_port=api.port,
        start_timeout=stack_settings.start_timeout_seconds,
        retention_every=stack_settings.retention_every_seconds,
        web_host=streams.worker_web_host,
        api_host=connect_host(api.host),
    )
    names = [c.name for c in components]
    for comp in components:
        comp.env = dict(stack_settings.component_env.get(comp.name, {}))
    unknown = sorted(set(stack_settings.component_env) - set(names))
    if unknown:
        raise InfraError(
            f"PRIVMESH_STACK_COMPONENT_ENV names no component of this stack: {unknown}; "
            f"the components are {names}"
        )
    env = {**os.environ, "PRIVMESH_DATA_DIR": str(runtime.data_dir), "PYTHONUNBUFFERED": "1"}
    policy = RestartPolicy(
        max_restarts=stack_settings.max_restarts,
        window=stack_settings.restart_window_seconds,
        initial=stack_settings.backoff_initial_seconds,
        cap=stack_settings.backoff_max_seconds,
    )
    stack = Stack(
        runtime.data_dir,
        components,
        env,
        stack_settings.stop_timeout_seconds,
        policy,
        console.print,
        fast_restarts=stack_settings.fast_restarts,
    )
    ports = {
        port: (f"{d} worker health page", "PRIVMESH_STREAMS_WORKER_WEB_PORT")
        for d, port in web_ports.items()
    }
    ports[api.port] = ("dashboards API", "PRIVMESH_API_PORT")
    if kafka.embedded:
        ports[kafka.embedded_port] = ("embedded broker", "PRIVMESH_KAFKA_EMBEDDED_PORT")
    stack.preflight(ports)

    def on_signal(signum: int, _frame: object) -> None:
        stack.stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    began = time.monotonic()
    broker_where = "embedded Tansu" if kafka.embedded else "external Kafka"
    console.print(
        f"[bold]privmesh up[/] domains={','.join(domains)} broker={broker_where} "
        f"({kafka.bootstrap}) data={runtime.data_dir}"
    )
    try:
        stack.start()
        base = f"http://{connect_host(api.host)}:{api.port}"
        console.print(
            f"\n[bold green]privmesh is running[/] (ready in "
            f"{time.monotonic() - began:.1f}s). Look at:"
        )
        down = [n for n, s in stack.states().items() if s != "running"]
        if down:
            console.print(f"  [yellow]not running yet[/] {', '.join(down)} (`privmesh status`)")
        for cid in _query_class_ids(domains):
            console.print(f"  DP answer     curl {base}/v1/queries/{cid}")
        console.print(f"  query classes curl {base}/v1/queries")
        console.print(f"  ledger        curl {base}/v1/ledger")
        console.print(f"  dashboard     {base}/dashboard")
        console.print(f"  catalog       {base}/catalog   (governance: products, tags, lineage)")
        console.print(f"  API docs      {base}/docs")
        for d, port in web_ports.items():
            label = f"{d} stream"
            console.print(
                f"  {label:<13} curl http://{streams.worker_web_host}:{port}/privmesh/health"
            )
        console.print(f"  logs          {runtime.data_dir / 'logs'}")
        console.print(
            f"The first DP answer appears once a {streams.window_seconds}s window "
            "closes. Stop with Ctrl-C or `privmesh down`.\n"
        )
        last_report = 0.0
        while not stack.stop_requested:
            stack.supervise_once()
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                console.print(_progress_line(web_ports))
            time.sleep(0.25)
    finally:
        console.print("stopping privmesh ...")
        stack.stop()
        console.print("[bold]stopped[/]: all components exited, ports released")


def _chosen_domains(requested: list[str]) -> list[str]:
    from domains.registry import get_contract, load_contracts

    if not requested:
        return sorted(load_contracts())
    for name in requested:
        get_contract(name)  # unknown domain: a clear error listing the known ones
    return list(dict.fromkeys(requested))


def _topics_of(domains: list[str]) -> list[str]:
    from domains.registry import get_contract
    from streams.topics import domain_topics

    return [topic for d in domains for topic in domain_topics(get_contract(d))]


def _has_demo_events(domain: str) -> bool:
    from domains.registry import get_contract
    from streams.generator import has_generator

    return any(has_generator(domain, p.name) for p in get_contract(domain).products)


def _query_class_ids(domains: list[str]) -> list[str]:
    from dashboards_api.query_classes import load_query_classes

    return [qc.id for qc in load_query_classes().values() if qc.domain in domains]


def _progress_line(web_ports: dict[str, int]) -> str:
    import httpx

    parts = []
    for domain, port in web_ports.items():
        try:
            body = httpx.get(f"http://127.0.0.1:{port}/privmesh/health", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            parts.append(f"[yellow]{domain} worker not answering[/]")
            continue
        for name, c in body.get("products", {}).items():
            parts.append(
                f"{domain}.{name}: {c.get('accepted', 0)} pseudonymised, "
                f"{c.get('rejected', 0)} to DLQ, {c.get('windows_closed', 0)} windows"
            )
    return time.strftime("%H:%M:%S ") + "; ".join(parts)


@app.command()
def down() -> None:
    """Stop the stack started by `privmesh up` from the same data directory."""
    from infra.settings import StackSettings
    from infra.stack import stop_running_stack

    runtime = _runtime()
    try:
        names = stop_running_stack(runtime.data_dir, StackSettings().stop_timeout_seconds)
    except StackNotRunning as exc:
        console.print(f"nothing to stop: {exc}")
        return
    console.print(f"stopped: {', '.join(names)}")


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Health of each component of the running stack.

    Exit status: 0 every component healthy, 1 one is not (or no launcher, or, with
    ``--json``, no stack), 2 no stack is running."""
    from rich.table import Table

    from infra.stack import component_health, orphaned_state, read_state

    runtime = _runtime()
    state = read_state(runtime.data_dir)
    orphaned = state is None  # no launcher: the components a killed one left may still serve
    if orphaned:
        state = orphaned_state(runtime.data_dir)
    rows = component_health(state) if state is not None else []
    running = not (state is None or (orphaned and not any(r["alive"] for r in rows)))
    if as_json:
        print_json(
            {
                "data_dir": str(runtime.data_dir),
                "running": running,
                "launcher": running and not orphaned,
                "healthy": running and all(r["healthy"] for r in rows),
                "components": rows,
            }
        )
        if not running or orphaned or not all(r["healthy"] for r in rows):
            raise typer.Exit(1)
        return
    if not running:
        raise StackNotRunning(
            f"no stack is running from {runtime.data_dir}; start one with `privmesh up`"
        )
    table = Table("component", "state", "pid", "alive", "healthy", "restarts", "endpoint")
    for r in rows:
        exit_code = "" if r["last_exit_code"] is None else f" (last exit {r['last_exit_code']})"
        table.add_row(
            r["name"],
            _state_mark(r["state"]) + exit_code,
            str(r["pid"]),
            _mark(r["alive"]),
            _mark(r["healthy"]),
            str(r["restarts"]),
            str(r["endpoint"] or ""),
        )
    console.print(table)
    failed = [r["name"] for r in rows if r["state"] == "failed"]
    if failed:
        console.print(
            f"[red]failed[/] (past the restart limit, left down): {', '.join(failed)}; "
            "see their logs, fix, then restart the stack"
        )
    if orphaned:
        console.print(
            "[yellow]no launcher[/]: these components outlived it and nothing restarts them; "
            "`privmesh up` adopts them, `privmesh down` stops them"
        )
        raise typer.Exit(1)
    if not all(r["healthy"] for r in rows):
        raise typer.Exit(1)


def _state_mark(state: str) -> str:
    colour = {"running": "green", "failed": "red"}.get(state, "yellow")
    return f"[{colour}]{state}[/]"


def _mark(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


@app.command()
def worker(
    domain: DomainOpt,
    web_port: Annotated[
        int | None,
        typer.Option(help="Health page port (default PRIVMESH_STREAMS_WORKER_WEB_PORT)."),
    ] = None,
) -> None:
    """Run a domain's Faust stream processor (what `up` starts, one per domain)."""
    from infra.logs import configure_logging
    from streams.settings import KafkaSettings, StreamSettings

    # First: feast's import turns every DeprecationWarning back on ("once"), and kafka's
    # import then warns; with the JSON handler in place those are log lines too.
    logs = configure_logging(f"worker-{domain}")
    from feature_repo.settings import FeatureStoreSettings
    from streams.worker import run_worker

    streams = StreamSettings()
    if web_port is not None:
        streams = StreamSettings.model_validate(
            {**streams.model_dump(), "worker_web_port": web_port}
        )
    run_worker(domain, _runtime(), KafkaSettings(), streams, FeatureStoreSettings(), logs)


@app.command()
def generate(
    domain: DomainsOpt = None,
    rate: Annotated[
        float | None, typer.Option(help="Events per second, all products together (0: max).")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    people: Annotated[int | None, typer.Option(help="Size of the fake people pool.")] = None,
    bad_ratio: Annotated[float | None, typer.Option(help="Share of malformed events.")] = None,
) -> None:
    """Produce synthetic raw events (fake people) to the domains' ingest topics."""
    from domains.errors import ContractError
    from domains.registry import get_contract
    from infra.commands.data import send_demo_consent
    from infra.settings import GeneratorSettings
    from streams.generator import EventGenerator, has_generator, make_people, mixed, paced
    from streams.producing import RawProducer
    from streams.settings import KafkaSettings
    from streams.topics import ProductTopics

    settings = GeneratorSettings()
    overrides: dict[str, Any] = {"rate": rate, "people": people, "bad_ratio": bad_ratio}
    settings = GeneratorSettings.model_validate(
        {**settings.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    )
    pool = make_people(settings.people, settings.seed, settings.activity_sigma)
    generators: list[tuple[str, EventGenerator]] = []
    for index, name in enumerate(_chosen_domains(domain or [])):
        for product in get_contract(name).products:
            if has_generator(name, product.name):
                gen = EventGenerator(name, product, pool, settings.bad_ratio, settings.seed + index)
                generators.append((ProductTopics.of(name, product).ingest, gen))
    if not generators:
        raise ContractError("none of the chosen domains has a synthetic event generator")

    def interleaved() -> Any:
        # Products in proportion to their traffic shares (page views often, orders rarely).
        for produced, (topic, gen) in enumerate(
            mixed(generators, settings.seed, settings.shares())
        ):
            if count is not None and produced >= count:
                return
            yield topic, gen.next_event()

    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sent = 0
    with RawProducer(KafkaSettings(), client_id="privmesh-generator") as producer:
        domains = sorted({gen.domain for _, gen in generators})
        decisions = send_demo_consent(producer, domains, pool, settings)
        if decisions:
            err.print(f"generator: sent {decisions} consent records")
        for topic, (key, value) in paced(settings.rate, interleaved()):
            producer.send(topic, value, key=key)
            sent += 1
            if stop:
                break
    err.print(f"generator: sent {sent} events to {', '.join(t for t, _ in generators)}")


@app.command()
def api() -> None:
    """Serve the DP dashboards API (what `up` starts)."""
    from infra.logs import configure_logging

    logs = configure_logging("api", "WARNING")  # before the imports, as for the workers
    import uvicorn

    from dashboards_api.settings import ApiSettings

    settings = ApiSettings()
    uvicorn.run(
        "infra.api_app:app_from_settings",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=logs,
        log_level="warning",
        access_log=False,
    )


@features_app.command("apply")
def features_apply(domain: DomainOpt) -> None:
    """Register the domain's feature views in its Feast store (idempotent)."""
    from domains.errors import ContractError
    from domains.registry import load_contracts
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore

    contract = load_contracts().get(domain)
    if contract is None:
        raise ContractError(f"unknown domain {domain!r}")
    store = DomainFeatureStore(contract, _runtime().data_dir, FeatureStoreSettings())
    store.apply()
    console.print(
        f"applied feature views of {domain}: "
        + ", ".join(
            sorted(
                v
                for f in store.features.values()
                for v in (f.subject_view.name, f.window_view.name)
            )
        )
    )


@app.command()
def ledger(
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Show the most recent privacy-ledger entries, newest first."""
    from rich.table import Table

    from dashboards_api.budget import from_micro
    from dashboards_api.ledger import open_ledger
    from dashboards_api.settings import ApiSettings

    settings = ApiSettings()
    book = open_ledger(settings.ledger_url, _runtime().data_dir)
    try:
        entries = book.entries(limit=limit)
    finally:
        book.close()
    rows: list[dict[str, Any]] = [
        {
            "id": e.id,
            "class_id": e.class_id,
            "product": e.product,
            "period": e.period,
            "data_version": e.data_version,
            "epsilon": str(from_micro(e.cost_micro)),
            "released_value": e.answer.get("value"),
            "created_at": e.created_at,
        }
        for e in entries
    ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        err.print(
            "no releases in the ledger yet: start the stack (`privmesh up`) and ask a query "
            f"class (`curl http://{settings.host}:{settings.port}/v1/queries`); each answer is "
            "recorded here"
        )
        return
    table = Table("id", "class", "period", "data version", "epsilon", "released value", "created")
    for r in rows:
        table.add_row(
            str(r["id"]), r["class_id"], r["period"], r["data_version"], r["epsilon"],
            str(r["released_value"]), r["created_at"],
        )  # fmt: skip
    console.print(table)


MAX_ERROR_CHARS = 400  # an error line quotes at most this much (a pasted megabyte is cut)
MAX_WORD_CHARS = 80  # a longer word in a usage error (a huge value) is shown as its ends
# Expected failures: one coded line, no traceback. Named by module, so that ``main`` imports
# none of them: an exception of a module never imported cannot have been raised.
EXPECTED: dict[str, tuple[str, ...]] = {
    "builtins": ("ValueError", "OSError"),
    "infra.errors": ("InfraError",),
    "domains.errors": ("ContractError",),
    "streams.errors": ("StreamError",),
    "feature_repo.errors": ("FeatureStoreError",),
    "federation.errors": ("FederationError",),
    "catalog.errors": ("CatalogError",),
    "pydantic_core": ("ValidationError",),
}


def _expected(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the ``EXPECTED`` failures (of a module already loaded)."""
    classes = tuple(
        getattr(sys.modules[module], name)
        for module, names in EXPECTED.items()
        if module in sys.modules
        for name in names
    )
    return isinstance(exc, classes)


def main() -> None:
    """Entry point: expected failures print one line and exit 2, without a traceback."""
    try:
        # not standalone: click's usage errors come here, to be one coded line as well
        code = app(prog_name="privmesh", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(2)  # the help was printed
    except click.UsageError as exc:
        _fail(_usage_line(exc))
    except click.Abort:
        sys.exit(130)  # Ctrl-C at a prompt
    except Exception as exc:
        if not _expected(exc):
            raise
        _fail(_one_line(exc))
    if isinstance(code, int):  # typer.Exit(n) and --help (0)
        sys.exit(code)


def _fail(line: str) -> NoReturn:
    from rich.markup import escape

    # escaped: the message's "[code]" and any [..] in it are text, not rich markup
    err.print(f"[red]privmesh: error:[/] {escape(line)}")
    sys.exit(2)


def _usage_line(exc: click.UsageError) -> str:
    """A wrong option, value or command as one line: what is wrong (a huge value cut
    short), where the help is, and the ``invalid_cli_value`` code."""
    words = exc.format_message().split()
    text = " ".join(w if len(w) <= MAX_WORD_CHARS else f"{w[:40]}…{w[-8:]}" for w in words)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    ctx = exc.ctx  # click suggests the closest command or option itself
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"{text}{where} [{InvalidCliValue.code}]"


def _one_line(exc: Exception) -> str:
    validation_error = getattr(sys.modules.get("pydantic_core"), "ValidationError", None)
    if validation_error is not None and isinstance(exc, validation_error):
        from domains.yaml_files import validation_problems

        problems = validation_problems(exc)
        return f"invalid setting: {problems} (check the PRIVMESH_* environment variables)"
    code = getattr(exc, "code", None)
    text = " ".join(str(exc).split())
    return f"{text} [{code}]" if code else text


if __name__ == "__main__":
    main()
