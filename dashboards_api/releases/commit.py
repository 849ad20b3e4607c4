"""Commit, then reveal: the one call through which a release's noise becomes readable.

As OpenDP's ``Context`` ties a release to its spend, a mechanism's output here is a
:class:`Sealed` draw: a function that draws the noise, which nothing outside this module
calls. :func:`commit_then_reveal` is the only place that calls it, in one of two orders:

* the noisy answer is the ledger row (a window, an event-level release, a running or daily
  value): the draw runs inside the call, its answer is refused unless every interval is
  finite, then written with the spend in one serialised ledger transaction; what comes back
  is the committed row (the stored one when another request committed the same release
  first: a draw that lost that race is never handed out);
* the spend is a payment for many values (a continual horizon, a daily class's UTC day):
  the payment is committed first, and only then is the draw made (the tree counter or the
  day's structures), so a ledger that refuses or fails leaves no noise drawn at all.

A ledger write that raises returns nothing: the draw, if made, is unreachable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, final, overload

from dashboards_api.errors import MechanismRefused
from dashboards_api.ledger import Commit, LedgerEntry, ReleaseLedger

T = TypeVar("T")
U = TypeVar("U")


@final
class Sealed(Generic[T]):
    """A mechanism's output not drawn yet: ``draw`` runs only in :func:`commit_then_reveal`.

    There is no accessor: a strategy builds its answer with :meth:`map` (which composes,
    drawing nothing) and hands the sealed answer to the commit.
    """

    __slots__ = ("__draw",)

    def __init__(self, draw: Callable[[], T]) -> None:
        self.__draw = draw

    def map(self, build: Callable[[T], U]) -> Sealed[U]:
        """The sealed ``build(value)``: composed now, run inside the commit."""
        draw = self.__draw
        return Sealed(lambda: build(draw()))

    def __repr__(self) -> str:
        return "Sealed(<revealed only after its ledger entry is committed>)"

    def __reduce__(self) -> Any:
        raise TypeError("a sealed release cannot be pickled or copied")


def _open(sealed: Sealed[T]) -> T:
    """Draw ``sealed`` (this module's callers only: after, or as part of, the commit)."""
    draw: Callable[[], T] = getattr(sealed, "_Sealed__draw")  # noqa: B009 - the one opener
    return draw()


@dataclass(frozen=True)
class Spend:
    """The ledger entry a release commits: which class pays ``cost_micro`` in ``period``
    under ``key`` (data version and class definition), within the class's ``budget_micro``
    and, when not None, the product's daily total ``product_budget_micro``."""

    class_id: str
    period: str
    key: str
    cost_micro: int
    budget_micro: int
    product: str
    product_budget_micro: int | None


@dataclass(frozen=True)
class Paid(Generic[T]):
    """A committed payment and what it paid for, drawn after the commit."""

    commit: Commit
    value: T


@overload
def commit_then_reveal(
    ledger: ReleaseLedger, spend: Spend, sealed: Sealed[dict[str, Any]]
) -> Commit: ...


@overload
def commit_then_reveal(
    ledger: ReleaseLedger,
    spend: Spend,
    sealed: Sealed[T],
    payment: dict[str, Any],
    *,
    paid: LedgerEntry | None = None,
) -> Paid[T]: ...


def commit_then_reveal(
    ledger: ReleaseLedger,
    spend: Spend,
    sealed: Sealed[Any],
    payment: dict[str, Any] | None = None,
    *,
    paid: LedgerEntry | None = None,
) -> Commit | Paid[Any]:
    """Commit ``spend``'s ledger entry, then reveal.

    Without ``payment``, ``sealed`` is the answer: drawn here, checked finite, committed as
    the entry's row; the committed :class:`~dashboards_api.ledger.Commit` is returned (its
    row is the stored answer). With ``payment``, ``payment`` is the row: committed first
    (``paid``: the entry of this very spend, already read back committed, skips the write),
    then ``sealed`` is drawn and returned with the commit.
    """
    if payment is None:
        answer = _open(sealed)
        check_finite(spend.class_id, answer)
        return _commit(ledger, spend, answer)
    if paid is not None and (paid.class_id, paid.data_version) == (spend.class_id, spend.key):
        commit = Commit(paid, reused=True, spent_micro=0)
    else:
        commit = _commit(ledger, spend, payment)
    return Paid(commit, _open(sealed))


def _commit(ledger: ReleaseLedger, spend: Spend, answer: dict[str, Any]) -> Commit:
    return ledger.commit_release(
        spend.class_id,
        spend.period,
        spend.key,
        spend.cost_micro,
        spend.budget_micro,
        answer,
        product=spend.product,
        product_budget_micro=spend.product_budget_micro,
    )


def check_finite(class_id: str, answer: dict[str, Any]) -> None:
    """Refuse (before the commit) an answer whose interval is not finite."""
    intervals = [answer.get("ci95")] + [g.get("ci95") for g in answer.get("groups") or []]
    widths = [w for ci in intervals if ci is not None for w in ci]
    if answer.get("rank_ci95_half_width") is not None:
        widths.append(answer["rank_ci95_half_width"])
    if not all(isinstance(w, int | float) and math.isfinite(w) for w in widths):
        raise MechanismRefused(
            f"class {class_id!r}: the release has no finite 95% interval; lower epsilon_per_release"
        )
