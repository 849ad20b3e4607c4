"""``privmesh deploy render``: the Kubernetes manifests of the configured domain folders.

The domains are read and linted exactly as ``privmesh up`` does (``PRIVMESH_DOMAIN_DIRS``),
so a folder holding only a new team's domains renders that team's slice of the mesh.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.console import console, err

app = typer.Typer(
    help="Deployment manifests generated from the domain folders.", no_args_is_help=True
)


@app.command("render")
def render(
    out: Annotated[Path, typer.Option(help="Folder to write the kustomize base into.")] = Path(
        "privmesh-k8s"
    ),
    namespace: Annotated[str, typer.Option(help="Namespace of every object.")] = "privmesh",
    image: Annotated[
        str | None, typer.Option(help="privmesh image (default privmesh:<version>).")
    ] = None,
    api_replicas: Annotated[int, typer.Option(help="API replicas (share the ledger).")] = 2,
    worker_replicas: Annotated[
        int, typer.Option(help="Workers per domain (<= PRIVMESH_KAFKA_PARTITIONS useful).")
    ] = 1,
    storage_class: Annotated[
        str | None, typer.Option(help="StorageClass of the domains' state claims.")
    ] = None,
    storage_size: Annotated[str, typer.Option(help="Size of each domain's claim.")] = "10Gi",
    access_mode: Annotated[
        str, typer.Option(help="Claims' access mode (ReadWriteMany: pods on any node).")
    ] = "ReadWriteMany",
    host: Annotated[str, typer.Option(help="Host name the Ingress serves.")] = (
        "privmesh.example.com"
    ),
    tls_secret: Annotated[
        str, typer.Option(help="Secret with the Ingress's TLS pair.")
    ] = "privmesh-tls",  # noqa: S107 - the name of a Secret, not a value
    ingress_class: Annotated[str, typer.Option(help="IngressClass of the Ingress.")] = "nginx",
    ingress_namespace: Annotated[
        str, typer.Option(help="Namespace of the ingress controller (may reach the API).")
    ] = "ingress-nginx",
    monitoring_namespace: Annotated[
        str, typer.Option(help="Namespace of Prometheus (may scrape /metrics).")
    ] = "monitoring",
    kafka_bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers, host:port[,host:port].")
    ] = None,
    kafka_partitions: Annotated[
        int, typer.Option(help="Partitions of the topics privmesh creates.")
    ] = 6,
    kafka_replication: Annotated[
        int, typer.Option(help="Replication factor of the topics privmesh creates.")
    ] = 3,
    kafka_security: Annotated[
        str, typer.Option(help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    ] = "SASL_SSL",
    kafka_sasl_mechanism: Annotated[
        str, typer.Option(help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    ] = "SCRAM-SHA-512",
    kafka_ca_secret: Annotated[
        str | None,
        typer.Option(help="Secret whose ca.pem signs the brokers (default: system CAs)."),
    ] = None,
    egress_cidr: Annotated[
        str, typer.Option(help="Where Kafka, Redis and Postgres are (egress allowed there).")
    ] = "0.0.0.0/0",
    store_port: Annotated[
        list[int] | None,
        typer.Option(help="Port of Redis/Postgres to allow egress to (repeatable)."),
    ] = None,
    retention_schedule: Annotated[
        str, typer.Option(help="Cron schedule of each domain's retention job (UTC).")
    ] = "17 * * * *",
    demo_generator: Annotated[
        bool, typer.Option(help="Add the synthetic event generator (demos only).")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(help="Write nothing; exit 1 if OUT differs from what would be written."),
    ] = False,
) -> None:
    """Render the kustomize base (`kubectl apply -k OUT`) of the configured domains."""
    from domains.folders import domain_set
    from domains.lint import Severity
    from infra.commands.domains import lint_configured, print_findings
    from infra.deploy import DeployOptions, write
    from infra.deploy import render as render_files

    values: dict[str, Any] = {
        "namespace": namespace,
        "api_replicas": api_replicas,
        "worker_replicas": worker_replicas,
        "storage_class": storage_class,
        "storage_size": storage_size,
        "access_mode": access_mode,
        "host": host,
        "tls_secret": tls_secret,
        "ingress_class": ingress_class,
        "ingress_namespace": ingress_namespace,
        "monitoring_namespace": monitoring_namespace,
        "egress_cidr": egress_cidr,
        "kafka_partitions": kafka_partitions,
        "kafka_replication": kafka_replication,
        "kafka_security": kafka_security,
        "kafka_sasl_mechanism": kafka_sasl_mechanism,
        "kafka_ca_secret": kafka_ca_secret,
        "retention_schedule": retention_schedule,
        "demo_generator": demo_generator,
    }
    if image is not None:
        values["image"] = image
    if kafka_bootstrap is not None:
        values["kafka_bootstrap"] = kafka_bootstrap
    if store_port:
        values["store_ports"] = tuple(store_port)
    options = DeployOptions(**values)  # refuses bad values before the domains are read

    errors = [f for f in lint_configured() if f.severity is Severity.ERROR]
    if print_findings(errors):
        err.print(
            f"[red]privmesh deploy render: {len(errors)} error(s) in the domains; nothing "
            "rendered.[/] Fix them (`privmesh domains lint` rechecks)."
        )
        raise typer.Exit(1)
    files = render_files(domain_set(), options)
    if check:
        raise typer.Exit(_check(files, out))
    for path in write(files, out):
        console.print(str(path), highlight=False)
    err.print(
        f"rendered {len(files)} files; create the Secrets of {out / 'secrets.template.yaml'}, "
        f"then: kubectl apply -k {out}"
    )


def _check(files: dict[str, str], out: Path) -> int:
    """0 when ``out`` holds exactly ``files`` (generated YAML), else 1 with a diff."""
    from infra.deploy import GENERATED

    present = {
        p.name: p.read_text(encoding="utf-8", errors="replace")
        for p in sorted(out.glob("*.yaml"))
        if p.read_text(encoding="utf-8", errors="replace").startswith(GENERATED)
    }
    stale = 0
    for name in sorted(set(files) | set(present)):
        old, new = present.get(name, ""), files.get(name, "")
        if old != new:
            stale += 1
            diff = difflib.unified_diff(
                old.splitlines(), new.splitlines(), f"{out / name}", "rendered", lineterm="", n=1
            )
            console.print("\n".join(list(diff)[:40]), highlight=False, markup=False)
    if stale:
        err.print(f"{stale} file(s) in {out} differ from the render; rerun without --check")
        return 1
    err.print(f"{out} is up to date ({len(files)} files)")
    return 0
