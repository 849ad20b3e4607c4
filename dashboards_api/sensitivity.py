"""How much one subject can move a released window statistic (its L1 sensitivity).

Derived from the contract and from the contribution bound the stream processor applied
when it counted the window (carried in the window row, so the API never assumes a bound
the processor did not enforce). Adding or removing one pseudonymous subject changes:

* ``count_distinct_subjects`` by at most 1;
* ``count_records`` by at most the bound ``k`` (events per subject and window);
* ``bounded_sum`` of a measure clamped to ``[lo, hi]`` by at most ``k * max(|lo|, |hi|)``
  (at most the measure's per-day cap ``max_sum_per_period`` when the contract declares one:
  a subject's window is part of its day), plus 1 for a non-integer measure, whose sum is
  rounded before integer noise is added.

A ``release: daily`` class protects a subject's whole UTC day (``daily_sensitivities``):
its sensitivity is what one subject's day can add to the sum of the day's window values,
from the product contract's per-day ``contribution`` bounds, which the processor enforces
across windows and partitions (``k`` = ``max_records_per_period``, ``W`` =
``max_windows_per_period``, ``[lo, hi]`` = ``clamp_of(measure)``):

* ``count_records`` (the windows' ``events``): ``k``;
* ``bounded_sum``: ``ceil(min(k * max(|lo|, |hi|), C))`` (``C`` the measure's per-day cap
  ``max_sum_per_period``, none: no min), plus ``W`` for a non-integer measure (each window's
  sum is rounded once, and the subject is in at most ``W`` windows);
* ``count_distinct_subjects``: two streams. ``new_subjects_period`` (subjects whose first
  counted record of the day is in the window) moves by 1; ``new_subjects_hour`` (first of
  the hour) by ``min(24, W)``: one per hour the subject is active in, at most one per window.
"""

from __future__ import annotations

import math
from decimal import Decimal

from dashboards_api.errors import InvalidQueryClasses, NoDataYet
from dashboards_api.query_classes import QueryClass
from domains.contract import DataProduct, DomainContract, FieldType, PrivacyTag
from feature_repo import names


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
    bound = contribution_bound * largest
    cap = product.sum_cap_of(qc.measure)
    return math.ceil(bound if cap is None else min(bound, cap)) + (0 if integral else 1)


# The window-row streams a daily class reads: the windows' counted events, a measure's
# clamped sum, and the subjects new to the hour / to the day.
EVENTS, SUM, NEW_HOUR, NEW_PERIOD = (
    names.EVENTS,
    "sum",
    names.NEW_SUBJECTS_HOUR,
    names.NEW_SUBJECTS_PERIOD,
)


def daily_sensitivities(qc: QueryClass, product: DataProduct) -> dict[str, int]:
    """Per stream a daily ``qc`` reads, the L1 sensitivity of the day's window values to
    one subject's whole UTC day (module docstring)."""
    bounds = product.contribution
    if qc.aggregate == "count_records":
        return {EVENTS: bounds.max_records_per_period}
    if qc.aggregate == "bounded_sum":
        assert qc.measure is not None  # validated when the class was loaded
        spec = product.field(qc.measure)
        integral = spec is not None and spec.type is FieldType.INT
        rounding = 0 if integral else bounds.max_windows_per_period
        return {SUM: max(1, math.ceil(product.period_sum_bound(qc.measure)) + rounding)}
    if qc.aggregate == "count_distinct_subjects":
        return {NEW_HOUR: min(24, bounds.max_windows_per_period), NEW_PERIOD: 1}
    raise ValueError(f"class {qc.id!r}: a daily {qc.aggregate} reads no stream of its own")


def split_epsilon(qc: QueryClass, streams: list[str]) -> dict[str, Decimal]:
    """The class's day epsilon split over the structures of ``streams`` (sequential
    composition: the parts add up to it exactly, in micro-epsilon). A distinct count's two
    structures get half each (the hour stream's larger sensitivity is paid by its shorter
    hierarchy: 1 level, all its epsilon on the hour nodes, against the day stream's 3)."""
    micro = qc.cost_micro
    if len(streams) == 1:
        return {streams[0]: qc.epsilon_per_release}
    first = micro // 2
    parts = [first, micro - first]
    return {s: Decimal(p) / 1_000_000 for s, p in zip(streams, parts, strict=True)}


def _product(qc: QueryClass, contracts: dict[str, DomainContract]) -> DataProduct:
    contract = contracts.get(qc.domain)
    product = None if contract is None else contract.product(qc.product)
    if product is None:
        raise InvalidQueryClasses(f"class {qc.id!r}: no data product {qc.domain}.{qc.product}")
    return product
