"""``privmesh dsr access|erase``: data-subject requests across every domain."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.console import console, err, print_json
from infra.errors import InvalidCliValue
from infra.imports import preload_feast
from infra.inputs import subject_option

app = typer.Typer(
    help="Data-subject requests: access and erasure across domains.", no_args_is_help=True
)
SubjectOpt = Annotated[
    str,
    typer.Option(
        "--subject", "-s",
        help="The subject's raw privacy-unit value (e.g. the e-mail); used only to derive "
        "its tokens, never stored.",
    ),
]  # fmt: skip
ByOpt = Annotated[str | None, typer.Option(help="Who asked (recorded; default: the OS user).")]


def _system(*, direct: bool = False) -> dict[str, Any]:
    """Contracts, token derivers, stores and the request log of the configured deployment.
    ``direct``: on the sqlite online store, read subjects without Feast (an access)."""
    from domains.registry import load_contracts
    from domains.runtime import get_runtime_settings
    from feature_repo.settings import FeatureStoreSettings
    from streams.keyring import load_domain_tokens
    from streams.settings import StreamSettings

    runtime = get_runtime_settings()
    runtime = runtime.model_copy(update={"data_dir": runtime.data_dir.resolve()})
    contracts = load_contracts()
    streams, features = StreamSettings(), FeatureStoreSettings()
    stores: dict[str, Any]
    if direct and features.online_store == "sqlite":
        from feature_repo.subject_reads import SqliteSubjectReader

        stores = {d: SqliteSubjectReader(c, runtime.data_dir) for d, c in contracts.items()}
    else:
        preload_feast()
        from feature_repo.store import DomainFeatureStore

        stores = {
            d: DomainFeatureStore(c, runtime.data_dir, features) for d, c in contracts.items()
        }
    return {
        "contracts": contracts,
        "tokens": {d: load_domain_tokens(d, runtime, streams) for d in contracts},
        "stores": stores,
        "log": runtime.data_dir / "dsr",
    }


@app.command("access")
def access(
    subject: SubjectOpt,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the export here.")] = None,
    requested_by: ByOpt = None,
) -> None:
    """Everything privmesh holds about a subject, per domain, as JSON."""
    subject_option("--subject", subject)  # before the stores load
    if out is not None and out.is_dir():
        raise InvalidCliValue(f"--out {out} is a folder; name a file to write the export to")
    from federation.registry import open_registry
    from governance.dsr import subject_access

    s = _system(direct=True)
    export = subject_access(
        s["contracts"], s["tokens"], s["stores"], open_registry(), subject, s["log"],
        requested_by or getpass.getuser(),
    )  # fmt: skip
    if out is None:
        print_json(export)
    else:
        out.write_text(json.dumps(export, indent=2, default=str) + "\n", encoding="utf-8")
        err.print(f"wrote {export['request_id']} to {out}")


@app.command("erase")
def erase(subject: SubjectOpt, requested_by: ByOpt = None) -> None:
    """Erase a subject from every domain's stores and compacted topics, and record it."""
    subject_option("--subject", subject)
    from governance.dsr import subject_erase
    from streams.producing import RawProducer
    from streams.settings import KafkaSettings

    s = _system()
    with RawProducer(KafkaSettings(), client_id="privmesh-dsr") as producer:
        record = subject_erase(
            s["contracts"], s["tokens"], s["stores"], producer, subject, s["log"],
            requested_by or getpass.getuser(),
        )  # fmt: skip
    rows = sum(d["online_rows"] + d["offline_rows"] for d in record.domains.values())
    console.print(
        f"erased the subject from {len(record.domains)} domains ({rows} rows) in "
        f"{record.seconds:.2f}s; recorded as {record.request_id}"
    )
