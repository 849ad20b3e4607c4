"""Data-product contracts: the shared language every privmesh package reads.

A contract declares a domain's data products: the event schema, a privacy tag on
every field, numeric bounds, the privacy unit, owner, purpose and retention.
Nothing in this package imports another privmesh package.
"""

from domains.contract import (
    Bounds,
    DataProduct,
    DomainContract,
    FieldSpec,
    FieldType,
    Generalisation,
    PrivacyTag,
    Protection,
)
from domains.registry import load_contract, load_contracts

__all__ = [
    "Bounds",
    "DataProduct",
    "DomainContract",
    "FieldSpec",
    "FieldType",
    "Generalisation",
    "PrivacyTag",
    "Protection",
    "load_contract",
    "load_contracts",
]
