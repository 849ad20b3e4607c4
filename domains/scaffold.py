"""``privmesh domains init``: a commented domain folder that lints clean as generated.

The files follow ``domains.folders``' layout: a contract with one data product, one DP
query class, one federated task (commented out unless another domain to train with is
named: a task needs two domains) and the owners entry of the team.
"""

from __future__ import annotations

import re
from pathlib import Path

from domains.errors import InvalidDomainFolder
from domains.folders import CLASSES_FILE, CONTRACT_FILE, OWNERS_FILE, TASKS_DIR

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

_CONTRACT = """\
# The contract of domain "@D@": what it publishes, and how each field is protected.
# Every field has a privacy tag (direct_identifier, quasi_identifier, sensitive,
# non_personal) and a protection; `privmesh domains lint` refuses contradictions.
# Reference: docs/operators.md (contracts) and `privmesh domains schema`.
domain: @D@
description: The @D@ domain; replace with what it does and publishes.
# A team listed in this folder's owners.yaml.
owner: @D@-team@example.com
reviewed: 2026-01-01
products:
  - name: visits
    version: 1
    description: One event per visit of a subject; replace with your event.
    owner: @D@-team@example.com
    # Why the data is processed; query classes and consent records name it.
    purpose: service_analytics
    # opt_in: processed only while the subject's latest consent record is a grant.
    consent: opt_out
    retention_days: 90
    # The field identifying the person every DP guarantee protects.
    privacy_unit: subject_id
    event_time: occurred_at
    max_event_bytes: 2048
    # What one subject may add per UTC day (the privacy unit is the subject-day).
    contribution:
      privacy_period: day
      max_records_per_period: 10
      max_windows_per_period: 10
    fields:
      - name: subject_id
        type: string
        description: Who the visit belongs to; tokenised before it leaves the domain.
        tag: direct_identifier
        protection: tokenise
        max_length: 64
      - name: kind
        type: string
        description: What sort of visit it was (public categories).
        tag: non_personal
        allowed_values: [routine, urgent, follow_up]
      - name: duration_min
        type: int
        description: Length of the visit in minutes.
        tag: non_personal
        bounds: {min: 0, max: 240}
      - name: occurred_at
        type: timestamp
        description: When the visit started (event time).
        tag: non_personal
"""

_CLASSES = """\
# DP query classes over @D@'s products: the only questions the API answers about them.
# Each class spends epsilon_per_release per answer, at most budget_per_day a UTC day;
# a product's classes together spend at most the product's budget_per_day.
domain: @D@
products:
  visits:
    budget_per_day: "1"
classes:
  - id: @D@.visits.visit_count
    title: Visits (every resolution from one daily structure)
    domain: @D@
    product: visits
    aggregate: count_records
    release: daily
    privacy_unit: subject_day
    epsilon_per_release: "0.5"
    budget_per_day: "0.5"
"""

_TASK = """\
# A federated training task: each listed domain trains on its own rows of the product;
# only (securely aggregated) model updates leave a domain. A task needs >= 2 domains
# publishing the same product and fields.
name: @D@_long_visits
description: Probability that a visit lasts more than an hour.
domains: [@DOMAINS@]
product: visits
label: {field: duration_min, above: 60}
features:
  - {field: kind, encode: onehot}
  - {field: occurred_at, encode: calendar, parts: [weekday, hour]}
model: {kind: logistic_regression}
"""

_OWNERS = """\
# The team that owns @D@; every `owner` of its contract is listed here.
owners:
  - email: @D@-team@example.com
    name: @D@-team
    display_name: @D@ data team
    description: Owns the @D@ domain's data; replace with your team.
"""


def scaffold_domain(folder: Path, name: str, train_with: tuple[str, ...] = ()) -> list[Path]:
    """Write the domain folder ``folder/name`` and return its files; the task is live
    when ``train_with`` names other domains publishing the same product, else commented."""
    if not _NAME.match(name):
        raise InvalidDomainFolder(
            f"domain name {name!r}: use lower-case letters, digits and _ (at most 32, "
            "starting with a letter)"
        )
    root = folder / name
    if root.exists():
        raise InvalidDomainFolder(f"{root} already exists; pick another name or folder")
    task = _TASK.replace("@DOMAINS@", ", ".join((name, *train_with)))
    if not train_with:
        task = "# Commented out until a second domain publishes `visits`: name it in\n" + (
            "# `domains` and uncomment (or run init with --train-with OTHER).\n"
            + "".join(f"# {line}\n" if line else "#\n" for line in task.splitlines())
        )
    files = {
        root / CONTRACT_FILE: _CONTRACT,
        root / CLASSES_FILE: _CLASSES,
        root / TASKS_DIR / f"{name}_long_visits.yaml": task,
        root / OWNERS_FILE: _OWNERS,
    }
    (root / TASKS_DIR).mkdir(parents=True)
    for path, text in files.items():
        path.write_text(text.replace("@D@", name), encoding="utf-8")
    return list(files)
