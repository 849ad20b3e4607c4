"""Errors raised while loading or checking contracts; each has a stable ``code``."""


class ContractError(Exception):
    """Base class; ``code`` is machine-readable and never changes meaning."""

    code = "contract_error"


class ContractNotFound(ContractError):
    """No contract exists for the named domain or product."""

    code = "contract_not_found"


class InvalidContract(ContractError):
    """A contract file does not parse or contradicts itself."""

    code = "invalid_contract"
