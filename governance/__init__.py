"""Governance: what the mesh owes the people in its data and those who oversee it.

Data-subject requests across every domain (``governance.dsr``: access and erasure), the
retention pass that drops what outlived its contract (``governance.retention``), and the
privacy posture, one view of budgets, keys, erasures, requests and components
(``governance.posture``), with its API and page (``governance.posture_api``). The CLI
(``infra.commands``) and the app that mounts the page are wired up in ``infra``. Imports
the layers below it (``domains``,
``feature_repo``, ``streams``, ``federation``, ``dashboards_api``, ``catalog``), never
``infra``.
"""
