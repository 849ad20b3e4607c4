"""``privmesh erase`` and ``privmesh keys``: subject erasure and key rotation."""

from __future__ import annotations

import getpass
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from domains.registry import get_contract
from domains.runtime import RuntimeSettings, get_runtime_settings
from infra.console import console, err, print_json
from infra.imports import preload_feast
from infra.inputs import subject_option
from streams.settings import StreamSettings

keys_app = typer.Typer(help="Pseudonymisation key versions and rotation.", no_args_is_help=True)


def _data_dir() -> RuntimeSettings:
    runtime = get_runtime_settings()
    return runtime.model_copy(update={"data_dir": runtime.data_dir.resolve()})


def erase(
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain name.")],
    subject: Annotated[
        str,
        typer.Option(
            "--subject",
            "-s",
            help="The subject's raw privacy-unit value (e.g. the e-mail); used only to "
            "derive its tokens, never stored.",
        ),
    ],
    requested_by: Annotated[
        str | None, typer.Option(help="Who asked (recorded; default: the OS user).")
    ] = None,
) -> None:
    """Erase a subject from the domain's stores and compacted topics, and record it."""
    subject_option("--subject", subject)  # before Feast loads (seconds)
    contract = get_contract(domain)
    preload_feast()
    from feature_repo.settings import FeatureStoreSettings
    from feature_repo.store import DomainFeatureStore
    from streams.erasure import erase_subject
    from streams.keyring import load_domain_tokens
    from streams.producing import RawProducer
    from streams.settings import KafkaSettings

    runtime, streams = _data_dir(), StreamSettings()
    tokens = load_domain_tokens(domain, runtime, streams)
    store = DomainFeatureStore(contract, runtime.data_dir, FeatureStoreSettings())
    with RawProducer(KafkaSettings(), client_id=f"privmesh-erase-{domain}") as producer:
        record = erase_subject(
            contract,
            tokens,
            store,
            producer,
            runtime.data_dir / "erasures",
            subject,
            requested_by or getpass.getuser(),
        )
    console.print(
        f"erased {len(record.tokens)} token(s) of one subject from {domain}: "
        f"{record.online_rows} online row(s), {record.offline_rows} offline row(s), "
        f"{record.tombstones} tombstone(s); recorded as {record.erasure_id}"
    )


@keys_app.command("status")
def keys_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Key versions of every domain and when each took (or takes) effect."""
    from domains.registry import load_contracts
    from streams.keyring import KeyRing, keyring_path

    runtime, streams = _data_dir(), StreamSettings()
    ring = KeyRing.load(keyring_path(runtime.data_dir), streams.key_version)
    now = time.time()
    rows: list[dict[str, Any]] = []
    for domain in sorted(load_contracts()):
        active = ring.version_at(domain, now)
        for epoch in ring.epochs(domain):
            state = (
                "active"
                if epoch.version == active
                else ("scheduled" if epoch.effective_from > now else "retired")
            )
            since = (
                None
                if epoch.effective_from == 0
                else datetime.fromtimestamp(epoch.effective_from, tz=UTC).isoformat()
            )
            rows.append(
                {
                    "domain": domain,
                    "version": epoch.version,
                    "effective_from": since,
                    "state": state,
                }
            )
    if as_json:
        print_json(rows)
        return
    table = Table("domain", "version", "effective from (event time, UTC)", "state")
    for r in rows:
        since_text = r["effective_from"] or "the beginning"
        table.add_row(r["domain"], f"k{r['version']}", since_text, r["state"])
    console.print(table)


@keys_app.command("rotate")
def keys_rotate(
    domain: Annotated[str, typer.Option("--domain", "-d", help="Domain name.")],
) -> None:
    """Schedule the domain's next key version from the start of the window after next.

    Running processors pick the change up by event time (no restart needed); tokens of
    the new version are unlinkable to the old ones by design.
    """
    from streams.keyring import KeyRing, keyring_path

    runtime, streams = _data_dir(), StreamSettings()
    get_contract(domain)
    path = keyring_path(runtime.data_dir)
    ring = KeyRing.load(path, streams.key_version)
    epoch = ring.rotate(domain, time.time(), streams.window_seconds)
    ring.save(path)
    when = datetime.fromtimestamp(epoch.effective_from, tz=UTC).isoformat()
    console.print(f"{domain}: key version k{epoch.version} applies to events from {when}")
    err.print(f"key ring: {path}")
