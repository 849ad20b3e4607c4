"""Query classes domain owners manage at run time, shared by every API replica.

Classes declared in ``query_classes/*.yaml`` are the base. A domain owner may add,
replace or withdraw classes of its own domains; each change is appended to the
ledger database's ``class_versions`` table (who, when, the full definition), so the
history is auditable and every replica converges on the newest version within
``registry_sync_seconds``. A change is checked against the contracts and the data
product's total budget before it is stored.
"""

from __future__ import annotations

import logging
import threading
import time

from pydantic import ValidationError

from dashboards_api.errors import Forbidden, InvalidParameters, InvalidQueryClasses
from dashboards_api.ledger import ClassVersion, Ledger
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases import ReleaseService
from dashboards_api.sensitivity import check_class
from domains.contract import DomainContract

log = logging.getLogger(__name__)


class ClassRegistry:
    """Applies run-time class versions from the ledger database to a release service."""

    def __init__(self, service: ReleaseService, sync_seconds: float = 2.0) -> None:
        self.service = service
        self.ledger: Ledger = service.ledger
        self.sync_seconds = sync_seconds
        self._seq = 0
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
            self._synced = time.monotonic()

    def put(self, qc: QueryClass, domains: frozenset[str] | None, changed_by: str) -> None:
        """Add or replace ``qc`` (``domains``: those the caller owns; None: any)."""
        self._check_owner(qc.domain, domains)
        current = self.service.classes.get(qc.id)
        if current is not None and current.domain != qc.domain:
            raise Forbidden(f"class {qc.id!r} belongs to domain {current.domain!r}")
        try:
            check_class(qc, self.service.contracts)
        except InvalidQueryClasses as exc:
            raise InvalidParameters(str(exc)) from exc
        total = self.service.product_budgets.get(f"{qc.domain}.{qc.product}")
        if total is not None and qc.budget_micro > total.budget_micro:
            raise InvalidParameters(
                f"budget_per_day {qc.budget_per_day} exceeds the total of "
                f"{qc.domain}.{qc.product} ({total.budget_per_day} a day)"
            )
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

    def versions(self, class_id: str) -> list[ClassVersion]:
        """Every run-time change of ``class_id``, oldest first."""
        return self.ledger.class_versions(class_id=class_id)

    def _apply(self, version: ClassVersion) -> None:
        apply_version(self.service.classes, version, self.service.contracts)

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
    ledger: Ledger, base: dict[str, QueryClass], contracts: dict[str, DomainContract]
) -> dict[str, QueryClass]:
    """The classes an API replica serves now: ``base`` with every run-time change applied."""
    classes = dict(base)
    for version in ledger.class_versions():
        apply_version(classes, version, contracts)
    return classes
