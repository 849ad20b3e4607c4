"""Loading contracts from the configured domain folders (the packaged demo domains by default)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from domains.contract import DataProduct, DomainContract
from domains.errors import ContractNotFound, InvalidContract
from domains.folders import DomainSet, domain_set
from domains.yaml_files import load_yaml_model


def load_contract(path: Path) -> DomainContract:
    """Parse and validate one contract file; errors name the file and the problem."""
    return load_yaml_model(path, DomainContract, "contract", InvalidContract)


def load_contracts(directory: Path | None = None) -> dict[str, DomainContract]:
    """All contracts keyed by domain: those of the configured domain folders
    (``domains.folders``), or of the flat folder ``directory`` of contract files."""
    if directory is not None:
        return _load_directory(directory.resolve())
    return _load_set(domain_set())


@cache
def _load_set(found: DomainSet) -> dict[str, DomainContract]:
    contracts: dict[str, DomainContract] = {}
    for name, folder in sorted(found.domains.items()):
        contract = load_contract(folder.contract_file)
        if contract.domain in contracts:
            raise InvalidContract(
                f"{folder.contract_file}: domain {contract.domain!r} is declared twice"
            )
        if not folder.flat and contract.domain != name:
            raise InvalidContract(
                f"{folder.contract_file}: declares domain {contract.domain!r} in the folder "
                f"of domain {name!r}; rename the folder or the domain"
            )
        contracts[contract.domain] = contract
    return contracts


@cache
def _load_directory(directory: Path) -> dict[str, DomainContract]:
    if not directory.is_dir():
        raise ContractNotFound(f"contracts folder {directory} does not exist")
    contracts: dict[str, DomainContract] = {}
    for path in sorted(directory.glob("*.yaml")):
        contract = load_contract(path)
        if contract.domain in contracts:
            raise InvalidContract(f"{path}: domain {contract.domain!r} is declared twice")
        contracts[contract.domain] = contract
    return contracts


def get_contract(domain: str, directory: Path | None = None) -> DomainContract:
    """The contract of ``domain``, or ContractNotFound listing the known domains."""
    contracts = load_contracts(directory)
    contract = contracts.get(domain)
    if contract is None:
        known = ", ".join(sorted(contracts)) or "none"
        raise ContractNotFound(f"unknown domain {domain!r} (known: {known})")
    return contract


def get_product(
    domain: str, product: str, directory: Path | None = None
) -> tuple[DomainContract, DataProduct]:
    """The contract and product for ``domain``/``product``, or ContractNotFound."""
    contract = get_contract(domain, directory)
    found = contract.product(product)
    if found is None:
        known = ", ".join(p.name for p in contract.products)
        raise ContractNotFound(f"domain {domain!r} has no product {product!r} (known: {known})")
    return contract, found
