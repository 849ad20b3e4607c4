"""Releases of registered query classes: the service, its strategies and the one
commit-then-reveal call every noisy value passes through.

Modules: ``service`` (ReleaseService: class registry, budgets, reuse, what strategies
share), ``commit`` (Sealed, commit_then_reveal), ``body`` (the pydantic release body),
``sources`` (window rows and events), and one per strategy: ``window``, ``running``
(continual running totals), ``daily`` (the daily hierarchy) with ``mean``, ``events``
(event-level).
"""

from dashboards_api.releases.events import event_query
from dashboards_api.releases.service import ReleaseService, privacy_unit_of
from dashboards_api.releases.sources import EventSource, StoreEvents, WindowSource

__all__ = [
    "EventSource",
    "ReleaseService",
    "StoreEvents",
    "WindowSource",
    "event_query",
    "privacy_unit_of",
]
