"""How much one subject can move a released window statistic (its L1 sensitivity).

Derived from the contract and from the contribution bound the stream processor applied
when it counted the window (carried in the window row, so the API never assumes a bound
the processor did not enforce). Adding or removing one pseudonymous subject changes:

* ``count_distinct_subjects`` by at most 1;
* ``count_records`` by at most the bound ``k`` (events per subject and window);
* ``bounded_sum`` of a measure clamped to ``[lo, hi]`` by at most ``k * max(|lo|, |hi|)``,
  plus 1 for a non-integer measure, whose sum is rounded before integer noise is added.
"""

from __future__ import annotations

import math

from dashboards_api.errors import InvalidQueryClasses, NoDataYet
from dashboards_api.query_classes import QueryClass
from domains.contract import DataProduct, DomainContract, FieldType, PrivacyTag


def check_against_contracts(
    classes: dict[str, QueryClass], contracts: dict[str, DomainContract]
) -> None:
    """Refuse classes naming an unknown product, a measure without contract bounds, or a
    group-by key that is not a public (non-personal, enumerated) field."""
    for qc in classes.values():
        check_class(qc, contracts)


def check_class(qc: QueryClass, contracts: dict[str, DomainContract]) -> None:
    """Refuse ``qc`` unless its fields fit its product's contract (see above)."""
    product = _product(qc, contracts)
    where = f"{qc.domain}.{qc.product}"
    if qc.measure is not None:
        spec = product.field(qc.measure)
        if spec is None or spec.bounds is None:
            raise InvalidQueryClasses(
                f"class {qc.id!r}: measure {qc.measure!r} is not a bounded numeric field of {where}"
            )
        if qc.candidates and (
            qc.candidates[0] < spec.bounds.min or qc.candidates[-1] > spec.bounds.max
        ):
            raise InvalidQueryClasses(
                f"class {qc.id!r}: quantile candidates must lie within the bounds of "
                f"{qc.measure!r} ({spec.bounds.min}..{spec.bounds.max})"
            )
    if qc.group_by is not None:
        key = product.field(qc.group_by)
        if key is None or key.tag is not PrivacyTag.NON_PERSONAL or not key.allowed_values:
            raise InvalidQueryClasses(
                f"class {qc.id!r}: group_by {qc.group_by!r} must be a non_personal field of "
                f"{where} with allowed_values (public keys)"
            )


def sensitivity(qc: QueryClass, product: DataProduct, contribution_bound: int | None) -> int:
    """The integer L1 sensitivity of one release of ``qc`` over a window."""
    if qc.aggregate == "count_distinct_subjects":
        return 1
    if contribution_bound is None or contribution_bound < 1:
        raise NoDataYet(
            f"the window of {qc.domain}.{qc.product} carries no contribution bound (written "
            "by an older processor); this aggregate needs one",
            retry_after_seconds=60,
        )
    if qc.aggregate == "count_records":
        return contribution_bound
    assert qc.measure is not None  # validated when the class was loaded
    spec = product.field(qc.measure)
    assert spec is not None and spec.bounds is not None  # check_against_contracts
    largest = max(abs(spec.bounds.min), abs(spec.bounds.max))
    integral = spec.type is FieldType.INT
    return math.ceil(contribution_bound * largest) + (0 if integral else 1)


def _product(qc: QueryClass, contracts: dict[str, DomainContract]) -> DataProduct:
    contract = contracts.get(qc.domain)
    product = None if contract is None else contract.product(qc.product)
    if product is None:
        raise InvalidQueryClasses(f"class {qc.id!r}: no data product {qc.domain}.{qc.product}")
    return product
