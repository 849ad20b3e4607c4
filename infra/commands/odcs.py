"""``privmesh domains import`` / ``export``: ODCS v3 documents to and from contracts.

The conversion is ``domains.odcs``; these commands read and write the files, refuse to
overwrite one unless told, and lint an imported contract before saying where it went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from domains.lint import lint_contract
from domains.odcs import from_odcs, odcs_yaml, read_odcs
from domains.registry import get_contract
from infra.console import err

ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")]


def _target(out: Path | None, name: str, force: bool) -> Path:
    """``out`` (a file, or a folder to put ``name`` in; default the current folder),
    refused when it exists and ``force`` is not given."""
    path = Path.cwd() / name if out is None else out / name if out.is_dir() else out
    if path.exists() and not force:
        raise typer.BadParameter(f"{path} exists; pass --force to overwrite it")
    return path


def import_contract(
    file: Annotated[Path, typer.Argument(help="ODCS v3 document (YAML).")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Domains folder (writes <folder>/<domain>/contract.yaml; default: .) or a file.",
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Convert an ODCS v3 document to a privmesh contract, lint it and write it."""
    contract = from_odcs(read_odcs(file), str(file))
    raw = contract.model_dump(mode="json", exclude_defaults=True)
    findings = lint_contract(raw, str(file))
    for finding in findings:  # warnings only: from_odcs returned a valid contract
        err.print(str(finding), markup=False)
    # A domain is a folder: <out>/<domain>/contract.yaml unless ``out`` names a file.
    folder = Path.cwd() if out is None else out if out.is_dir() or not out.suffix else None
    if folder is not None:
        (folder / contract.domain).mkdir(parents=True, exist_ok=True)
        path = _target(folder / contract.domain, "contract.yaml", force)
    else:
        path = _target(out, f"{contract.domain}.yaml", force)
    header = (
        f"# Imported from the ODCS document {file.name} by `privmesh domains import`.\n"
        "# Review every field's privacy tag and protection before publishing.\n"
    )
    body = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    path.write_text(header + body, encoding="utf-8")
    products = ", ".join(p.name for p in contract.products)
    err.print(f"wrote contract of domain {contract.domain!r} ({products}) to {path}", markup=False)
    err.print(
        "next: add its owners.yaml and query classes (see `privmesh domains init --help`), "
        "then `privmesh domains lint`",
        markup=False,
    )


def export_domain(
    domain: Annotated[str, typer.Argument(help="Domain name.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Document file or folder (default: ./<domain>.odcs.yaml)."
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Write a domain's contract as an ODCS v3 document (<domain>.odcs.yaml)."""
    contract = get_contract(domain)
    path = _target(out, f"{domain}.odcs.yaml", force)
    path.write_text(odcs_yaml(contract), encoding="utf-8")
    err.print(f"wrote ODCS document of domain {domain!r} to {path}", markup=False)
