"""Query classes domain owners manage at run time, shared by every API replica.

Classes declared in ``query_classes/*.yaml`` are the base. A domain owner may add,
replace or withdraw classes of its own domains; each change is appended to the
ledger database's ``class_versions`` table (who, when, the full definition), so the
history is auditable and every replica converges on the newest version within
``registry_sync_seconds``. A change is checked against the contracts, the governance
policy (``policy.py``: caps on epsilon and budgets, also reloaded here), the data
product's total budget less its planning reserve (over all its classes) and the mechanism's
accuracy before it is stored. A class id
starts with its domain's name and stays with that domain for good: its ledger history
is never attached to another owner, even after a withdrawal.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError

from dashboards_api.budget import from_micro
from dashboards_api.errors import Forbidden, InvalidParameters, InvalidQueryClasses
from dashboards_api.ledger import ClassVersion, PolicyVersion, VersionLedger
from dashboards_api.policy import GovernancePolicy, allocated_micro, reserve_micro
from dashboards_api.query_classes import QueryClass
from dashboards_api.sensitivity import check_class
from domains.contract import DomainContract

if TYPE_CHECKING:  # the catalog reads classes without the release path's modules
    from dashboards_api.releases import ReleaseService

log = logging.getLogger(__name__)


class ClassRegistry:
    """Applies run-time class versions from the ledger database to a release service."""

    def __init__(self, service: ReleaseService, sync_seconds: float = 2.0) -> None:
        self.service = service
        self.ledger: VersionLedger = service.ledger
        self.sync_seconds = sync_seconds
        self._seq = 0
        self._policy_seq = 0
        self._synced = 0.0
        self._lock = threading.Lock()
        self.sync()

    def maybe_sync(self) -> None:
        """Reload changes made by other replicas when the last reload is old enough."""
        if time.monotonic() - self._synced >= self.sync_seconds:
            self.sync()

    def sync(self) -> None:
        """Apply every class version newer than the last applied one."""
        with self._lock:
            for version in self.ledger.class_versions(after=self._seq):
                self._apply(version)
                self._seq = version.seq
            for policy in self.ledger.policy_versions(after=self._policy_seq):
                self._apply_policy(policy)
                self._policy_seq = policy.seq
            self._synced = time.monotonic()

    def put(self, qc: QueryClass, domains: frozenset[str] | None, changed_by: str) -> None:
        """Add or replace ``qc`` (``domains``: those the caller owns; None: any)."""
        self._check_owner(qc.domain, domains)
        self._check_id_owner(qc.id, qc.domain)
        try:
            check_class(qc, self.service.contracts)
        except InvalidQueryClasses as exc:
            raise InvalidParameters(str(exc)) from exc
        self.service.check_policy(qc)
        total = self.service.product_total(qc.domain, qc.product)
        if total is not None and qc.budget_micro > total:
            raise InvalidParameters(
                f"budget_per_day {qc.budget_per_day} exceeds the total of "
                f"{qc.domain}.{qc.product} ({from_micro(total)})",
                limit="product_budget_per_day",
                limit_value=from_micro(total),
            )
        if total is not None:  # the product's classes together leave its planning reserve
            key, policy = f"{qc.domain}.{qc.product}", self.service.policy.current
            reserve = reserve_micro(policy, self.service.product_budgets.get(key), total)
            others = allocated_micro(policy, self.service.classes, key, leave_out=qc.id)
            policy.check_allocation(key, total, reserve, others + policy.class_budget_micro(qc))
        self.service.check_mechanism(qc)
        self.ledger.save_class_version(
            qc.id, qc.domain, qc.model_dump_json(exclude_none=True), True, changed_by
        )
        self.sync()

    def withdraw(self, class_id: str, domains: frozenset[str] | None, changed_by: str) -> None:
        """Stop serving ``class_id`` (its ledger entries stay)."""
        qc = self.service.query_class(class_id)
        self._check_owner(qc.domain, domains)
        self.ledger.save_class_version(class_id, qc.domain, "", False, changed_by)
        self.sync()

    def put_policy(self, policy: GovernancePolicy, changed_by: str) -> int:
        """Store a new governance policy version (governance role); applies everywhere
        within ``registry_sync_seconds``. Product totals declared in the class files must
        fit it: a policy below one is refused."""
        for key, total in self.service.product_budgets.items():
            policy.check_product_total(key, total.budget_micro)
        seq = self.ledger.save_policy(policy.model_dump_json(), changed_by)
        self.sync()
        return seq

    def versions(self, class_id: str) -> list[ClassVersion]:
        """Every run-time change of ``class_id``, oldest first."""
        return self.ledger.class_versions(class_id=class_id)

    def _apply(self, version: ClassVersion) -> None:
        apply_version(self.service.classes, version, self.service.contracts)

    def _apply_policy(self, version: PolicyVersion) -> None:
        try:
            policy = GovernancePolicy.model_validate_json(version.definition)
        except ValidationError as exc:
            log.error("policy version %s not applied: %s", version.seq, exc)
            return
        self.service.policy.replace(policy, version.seq)

    def _check_id_owner(self, class_id: str, domain: str) -> None:
        """A class id belongs to the domain that first used it, withdrawn or not."""
        current = self.service.classes.get(class_id)
        owners = {v.domain for v in self.ledger.class_versions(class_id=class_id)}
        owners |= {
            e.product.partition(".")[0]
            for e in self.service.ledger.entries(limit=1, class_id=class_id)
        }
        if current is not None:
            owners.add(current.domain)
        owners.discard("")
        if owners - {domain}:
            raise Forbidden(
                f"class id {class_id!r} belongs to domain {sorted(owners)[0]!r} (its ledger "
                "history stays with it); choose another id"
            )

    @staticmethod
    def _check_owner(domain: str, domains: frozenset[str] | None) -> None:
        if domains is not None and domain not in domains:
            raise Forbidden(f"this key does not own domain {domain!r}")


def apply_version(
    classes: dict[str, QueryClass], version: ClassVersion, contracts: dict[str, DomainContract]
) -> None:
    """Apply one run-time class version to ``classes`` (a withdrawal removes the class)."""
    if not version.active:
        classes.pop(version.class_id, None)
        return
    try:
        qc = QueryClass.model_validate_json(version.definition)
        check_class(qc, contracts)
    except (ValidationError, InvalidQueryClasses) as exc:
        # A stored class no longer fits (e.g. its contract changed): keep serving the
        # previous definition and say why, rather than failing every request.
        log.error("class version %s of %s not applied: %s", version.seq, version.class_id, exc)
        return
    classes[qc.id] = qc


def current_classes(
    ledger: VersionLedger, base: dict[str, QueryClass], contracts: dict[str, DomainContract]
) -> dict[str, QueryClass]:
    """The classes an API replica serves now: ``base`` with every run-time change applied."""
    classes = dict(base)
    for version in ledger.class_versions():
        apply_version(classes, version, contracts)
    return classes
