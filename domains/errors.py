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


class InvalidDomainFolder(ContractError):
    """A domain folder lacks its contract, or a configured folder does not exist."""

    code = "invalid_domain_folder"


class DuplicateDomain(ContractError):
    """Two configured folders declare the same domain."""

    code = "duplicate_domain"


class OdcsUnreadable(ContractError):
    """An ODCS document cannot be read: missing, too large, not UTF-8 or not YAML."""

    code = "odcs_unreadable"


class OdcsInvalid(ContractError):
    """A YAML file is not an ODCS v3 data contract (the standard's model refuses it)."""

    code = "odcs_invalid"


class OdcsUnmappable(ContractError):
    """A valid ODCS document lacks a fact a privmesh contract needs, or contradicts one."""

    code = "odcs_unmappable"
