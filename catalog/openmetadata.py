"""The catalog as OpenMetadata create-requests, built with the SDK's generated models.

What privmesh maps onto what (``docs/catalog.md`` has the table):

* owners -> teams (``CreateTeamRequest``); domains -> ``CreateDomainRequest``
  (source-aligned); data products -> ``CreateDataProductRequest`` whose assets are the
  product's topics and feature-view tables;
* the Kafka cluster -> a messaging service, each topic -> ``CreateTopicRequest`` with a
  JSON message schema whose fields carry their tags;
* each domain's Feast store -> a database (``privmesh_<domain>``) of the database service,
  schema ``feature_views``; each feature view -> ``CreateTableRequest``;
* privacy tags -> classification ``privmesh`` (direct_identifier, quasi_identifier,
  sensitive, non_personal) and protections -> ``privmesh_protection`` (keep, drop,
  tokenise, generalise); every tagged column also gets OpenMetadata's own ``PII.Sensitive``
  (direct identifiers, sensitive) or ``PII.NonSensitive`` (quasi-identifiers);
* lineage -> ``AddLineageRequest`` per pair of entities, with column lineage.

References to other entities (owners, assets, lineage ends) carry the target's type and
fully-qualified name; their ids are placeholders derived from it (UUID v5), which
``catalog.push`` replaces with the server's ids. The SDK import costs ~20 s: this module
imports it only inside its functions, and nothing in the API or the stream workers
imports this module.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.errors import ExportInvalid
from catalog.graph import Catalog
from catalog.model import (
    Column,
    DomainEntity,
    FeatureViewEntity,
    FieldEntity,
    OwnerEntity,
    ProductEntity,
    TopicEntity,
)
from catalog.settings import CatalogSettings
from domains.contract import PrivacyTag
from feature_repo.names import feast_project

PII_OF_TAG = {
    PrivacyTag.DIRECT_IDENTIFIER.value: "PII.Sensitive",
    PrivacyTag.SENSITIVE.value: "PII.Sensitive",
    PrivacyTag.QUASI_IDENTIFIER.value: "PII.NonSensitive",
}
TAG_DESCRIPTIONS = {
    "direct_identifier": "Identifies a person on its own (e-mail, name, account number).",
    "quasi_identifier": "Identifies a person in combination (birth date, ZIP code, IP).",
    "sensitive": "Personal facts whose disclosure harms (amounts, health, free text).",
    "non_personal": "Says nothing about a person.",
}
PROTECTION_DESCRIPTIONS = {
    "keep": "Published as sent (bounded or from declared public values).",
    "drop": "Removed at ingestion; never leaves the domain.",
    "tokenise": "Replaced by a keyed HMAC-SHA256 token under the domain's key.",
    "generalise": "Coarsened (network prefix, age band, text prefix, time floor).",
}
_TOPIC_TYPES = {
    "string": "STRING", "email": "STRING", "ipv4": "STRING", "int": "LONG",
    "float": "DOUBLE", "date": "DATE", "timestamp": "TIMESTAMPZ",
}  # fmt: skip
_TABLE_TYPES = {"String": "STRING", "Int64": "BIGINT", "Float64": "DOUBLE"}
_NAMESPACE = uuid.UUID("8f0b8c2e-4d1e-5b7a-9c3f-7072697661cc")


@dataclass(frozen=True)
class Request:
    """One create-request: its OpenMetadata entity type, the fully-qualified name of the
    entity it creates (for lineage: ``from->to``) and the validated SDK model."""

    entity_type: str
    fqn: str
    model: Any

    def as_json(self) -> dict[str, Any]:
        """The request body as the server receives it."""
        body: dict[str, Any] = json.loads(self.model.model_dump_json(exclude_none=True))
        return body


def placeholder_id(entity_type: str, fqn: str) -> str:
    """The stand-in id of a reference to ``entity_type`` ``fqn`` (replaced on push)."""
    return str(uuid.uuid5(_NAMESPACE, f"{entity_type}:{fqn}"))


def quote(name: str) -> str:
    """A name as one part of an OpenMetadata FQN (quoted when it holds a dot)."""
    return f'"{name}"' if "." in name else name


class _Names:
    """OpenMetadata fully-qualified names of privmesh entities."""

    def __init__(self, settings: CatalogSettings) -> None:
        self.settings = settings

    def topic(self, name: str) -> str:
        return f"{self.settings.messaging_service}.{quote(name)}"

    def database(self, domain: str) -> str:
        return f"{self.settings.database_service}.{feast_project(domain)}"

    def schema(self, domain: str) -> str:
        return f"{self.database(domain)}.feature_views"

    def table(self, view: FeatureViewEntity) -> str:
        domain, _, name = view.name.partition(".")
        return f"{self.schema(domain)}.{name}"

    @staticmethod
    def product(product: ProductEntity) -> str:
        return product.name.replace(".", "_")

    @staticmethod
    def team(owner: OwnerEntity) -> str:
        return owner.name


def build_requests(catalog: Catalog, settings: CatalogSettings | None = None) -> list[Request]:
    """Every create-request of ``catalog``, in the order a server needs them (what is
    referenced before what references it); each validated by the SDK's model."""
    with quiet_sdk_import():
        return _Export(catalog, settings or CatalogSettings()).requests()


def write_export(requests: list[Request], directory: Path) -> dict[str, int]:
    """Write ``requests`` to ``directory``: one JSON file per entity type (a list of
    request bodies with their fqn) and ``manifest.json`` (order and counts)."""
    directory.mkdir(parents=True, exist_ok=True)
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    order: list[str] = []
    for request in requests:
        if request.entity_type not in grouped:
            order.append(request.entity_type)
        grouped[request.entity_type].append({"fqn": request.fqn, "request": request.as_json()})
    for entity_type, items in grouped.items():
        path = directory / f"{entity_type}.json"
        path.write_text(json.dumps(items, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    counts = {t: len(grouped[t]) for t in order}
    manifest = {"format": "openmetadata-create-requests", "sdk": _sdk_version(), "order": order}
    manifest["counts"] = counts  # type: ignore[assignment]
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    return counts


@contextmanager
def quiet_sdk_import() -> Iterator[None]:
    """Import the SDK without its import-time noise on stderr (pydantic v1-style config
    deprecations, field names shadowing BaseModel attributes, SQL escape sequences)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=SyntaxWarning)
        warnings.filterwarnings("ignore", message="Field name .* shadows", category=UserWarning)
        yield


def _sdk_version() -> str:
    from importlib.metadata import version

    return version("openmetadata-ingestion")


class _Export:
    def __init__(self, catalog: Catalog, settings: CatalogSettings) -> None:
        self.catalog = catalog
        self.settings = settings
        self.names = _Names(settings)
        self.out: list[Request] = []

    def add(self, entity_type: str, fqn: str, model_class: Any, **fields: Any) -> None:
        from pydantic import ValidationError

        try:
            model = model_class.model_validate(fields)
        except ValidationError as exc:
            raise ExportInvalid(
                f"{entity_type} {fqn}: does not validate as {model_class.__name__}: "
                f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}",
                fqn,
            ) from exc
        self.out.append(Request(entity_type, fqn, model))

    def ref(self, entity_type: str, fqn: str) -> dict[str, str]:
        return {
            "id": placeholder_id(entity_type, fqn),
            "type": entity_type,
            "fullyQualifiedName": fqn,
        }

    def requests(self) -> list[Request]:
        self._classifications()
        owners = [e for e in self.catalog.of_kind("owner") if isinstance(e, OwnerEntity)]
        self._teams(owners)
        self._domains()
        self._services()
        self._topics()
        self._tables()
        self._products()
        self._lineage()
        return self.out

    # ------------------------------------------------------------------ tags, teams
    def _classifications(self) -> None:
        from metadata.generated.schema.api.classification.createClassification import (
            CreateClassificationRequest,
        )
        from metadata.generated.schema.api.classification.createTag import CreateTagRequest

        name = self.settings.classification
        sets = [
            (name, "privmesh privacy tags: what a field says about a person.", TAG_DESCRIPTIONS),
            (
                f"{name}_protection",
                "privmesh protections: what the stream processor does to a field.",
                PROTECTION_DESCRIPTIONS,
            ),
        ]
        for classification, description, tags in sets:
            self.add(
                "classification", classification, CreateClassificationRequest,
                name=classification, description=description, mutuallyExclusive=True,
            )  # fmt: skip
            for tag, text in tags.items():
                self.add(
                    "tag", f"{classification}.{tag}", CreateTagRequest,
                    name=tag, description=text, classification=classification,
                )  # fmt: skip

    def _teams(self, owners: list[OwnerEntity]) -> None:
        from metadata.generated.schema.api.teams.createTeam import CreateTeamRequest

        for owner in owners:
            self.add(
                "team", self.names.team(owner), CreateTeamRequest,
                name=owner.name, displayName=owner.display_name, email=owner.email,
                description=owner.description or owner.display_name, teamType="Group",
            )  # fmt: skip

    def _owner_refs(self, owner_id: str) -> list[dict[str, str]]:
        owner = self.catalog.get(owner_id)
        assert isinstance(owner, OwnerEntity)
        return [self.ref("team", self.names.team(owner))]

    def _domains(self) -> None:
        from metadata.generated.schema.api.domains.createDomain import CreateDomainRequest

        for domain in self.catalog.of_kind("domain"):
            assert isinstance(domain, DomainEntity)
            self.add(
                "domain", domain.name, CreateDomainRequest,
                name=domain.name, description=domain.description, domainType="Source-aligned",
                owners=self._owner_refs(domain.owner),
            )  # fmt: skip

    # ------------------------------------------------------------------ services
    def _services(self) -> None:
        from metadata.generated.schema.api.data.createDatabase import CreateDatabaseRequest
        from metadata.generated.schema.api.data.createDatabaseSchema import (
            CreateDatabaseSchemaRequest,
        )
        from metadata.generated.schema.api.services.createDatabaseService import (
            CreateDatabaseServiceRequest,
        )
        from metadata.generated.schema.api.services.createMessagingService import (
            CreateMessagingServiceRequest,
        )

        self.add(
            "messagingService", self.settings.messaging_service, CreateMessagingServiceRequest,
            name=self.settings.messaging_service, serviceType="Kafka",
            description="The Kafka cluster carrying privmesh's domain topics.",
        )  # fmt: skip
        self.add(
            "databaseService", self.settings.database_service, CreateDatabaseServiceRequest,
            name=self.settings.database_service, serviceType="CustomDatabase",
            description="The domains' Feast feature stores (one database per domain).",
        )  # fmt: skip
        for domain in self.catalog.of_kind("domain"):
            self.add(
                "database", self.names.database(domain.name), CreateDatabaseRequest,
                name=feast_project(domain.name), service=self.settings.database_service,
                description=f"Feast store of the {domain.name} domain.",
                domains=[domain.name],
            )  # fmt: skip
            self.add(
                "databaseSchema", self.names.schema(domain.name), CreateDatabaseSchemaRequest,
                name="feature_views", database=self.names.database(domain.name),
                description="Feature views derived from the domain's contracts.",
                domains=[domain.name],
            )  # fmt: skip

    # ------------------------------------------------------------------ topics, tables
    def _tag_labels(self, column: Column) -> list[dict[str, str]]:
        tag = str(column.tag)
        labels = []
        if tag in TAG_DESCRIPTIONS:
            labels.append(f"{self.settings.classification}.{tag}")
        if str(column.protection) in PROTECTION_DESCRIPTIONS:
            labels.append(f"{self.settings.classification}_protection.{column.protection}")
        if tag in PII_OF_TAG:
            labels.append(PII_OF_TAG[tag])
        return [
            {"tagFQN": fqn, "source": "Classification", "labelType": "Automated",
             "state": "Confirmed"}
            for fqn in labels
        ]  # fmt: skip

    def _column_text(self, column: Column) -> str:
        fields = [self.catalog.get(f) for f in column.source_fields]
        detail = "; ".join(
            f"from {f.name}: {f.protection_detail}" for f in fields if isinstance(f, FieldEntity)
        )
        return f"{column.description} ({detail})" if detail else column.description or column.name

    def _topics(self) -> None:
        from metadata.generated.schema.api.data.createTopic import CreateTopicRequest

        for topic in self.catalog.of_kind("topic"):
            assert isinstance(topic, TopicEntity)
            product = self.catalog.get(topic.product) if topic.product else None
            owner = product.owner if isinstance(product, ProductEntity) else None
            domain = topic.domain.split(":", 1)[1]
            fields = [
                {
                    "name": c.name,
                    "dataType": _TOPIC_TYPES.get(c.type, "STRING"),
                    "description": self._column_text(c),
                    "tags": self._tag_labels(c),
                }
                for c in topic.columns
            ]
            extra: dict[str, Any] = {}
            if topic.retention_days is not None:
                extra["retentionTime"] = float(topic.retention_days * 86_400_000)
            self.add(
                "topic", self.names.topic(topic.name), CreateTopicRequest,
                name=topic.name, service=self.settings.messaging_service, partitions=1,
                description=f"{topic.description} [{topic.role} topic, {topic.boundary}]",
                cleanupPolicies=[topic.cleanup_policy],
                messageSchema={"schemaType": "JSON", "schemaFields": fields},
                owners=self._owner_refs(owner) if owner else None,
                domains=[domain], **extra,
            )  # fmt: skip

    def _tables(self) -> None:
        from metadata.generated.schema.api.data.createTable import CreateTableRequest

        for view in self.catalog.of_kind("feature_view"):
            assert isinstance(view, FeatureViewEntity)
            domain = view.domain.split(":", 1)[1]
            columns = [
                {
                    "name": c.name,
                    "dataType": _TABLE_TYPES.get(c.type, "STRING"),
                    "dataTypeDisplay": c.type,
                    "description": self._column_text(c),
                    "tags": self._tag_labels(c),
                }
                for c in view.columns
            ]
            self.add(
                "table", self.names.table(view), CreateTableRequest,
                name=view.name.partition(".")[2], databaseSchema=self.names.schema(domain),
                description=view.description, tableType="View", columns=columns,
                owners=self._owner_refs(view.owner), domains=[domain],
                retentionPeriod=f"P{view.ttl_days}D" if view.ttl_days else None,
            )  # fmt: skip

    def _products(self) -> None:
        from metadata.generated.schema.api.domains.createDataProduct import (
            CreateDataProductRequest,
        )

        for product in self.catalog.of_kind("product"):
            assert isinstance(product, ProductEntity)
            assets = [
                self.ref("topic", self.names.topic(t.split(":", 1)[1])) for t in product.topics
            ]
            for view_id in product.feature_views:
                view = self.catalog.get(view_id)
                assert isinstance(view, FeatureViewEntity)
                assets.append(self.ref("table", self.names.table(view)))
            self.add(
                "dataProduct", self.names.product(product), CreateDataProductRequest,
                name=self.names.product(product), displayName=product.name,
                description=(
                    f"{product.description}\n\nPurpose: {product.purpose}. Retention: "
                    f"{product.retention_days} days. Privacy unit: "
                    f"{product.privacy_unit.split('.')[-1]} (tokenised)."
                    f"{_guarantee_text(product)}"
                ),
                domains=[product.domain.split(":", 1)[1]],
                owners=self._owner_refs(product.owner), assets=assets,
            )  # fmt: skip

    # ------------------------------------------------------------------ lineage
    def _om_node(self, node: str) -> tuple[str, str, str | None] | None:
        """(entity type, FQN, column FQN) in OpenMetadata of a privmesh lineage node."""
        entity_id, _, column = node.partition("#")
        entity = self.catalog.entities.get(entity_id)
        if isinstance(entity, TopicEntity):
            fqn = self.names.topic(entity.name)
            return "topic", fqn, f"{fqn}.{column}" if column else None
        if isinstance(entity, FeatureViewEntity):
            fqn = self.names.table(entity)
            return "table", fqn, f"{fqn}.{column}" if column else None
        return None

    def _lineage(self) -> None:
        from metadata.generated.schema.api.lineage.addLineage import AddLineageRequest

        pairs: dict[tuple[tuple[str, str], tuple[str, str]], dict[str, set[str]]] = {}
        for edge in self._om_edges():
            start, end = self._om_node(edge[0]), self._om_node(edge[1])
            if start is None or end is None or start[:2] == end[:2]:
                continue
            columns = pairs.setdefault(((start[0], start[1]), (end[0], end[1])), {})
            if start[2] and end[2]:
                columns.setdefault(end[2], set()).add(start[2])
        for (source, target), columns in pairs.items():
            details: dict[str, Any] = {"source": "Manual", "description": "privmesh lineage"}
            if columns:
                details["columnsLineage"] = [
                    {"fromColumns": sorted(froms), "toColumn": to}
                    for to, froms in sorted(columns.items())
                ]
            self.add(
                "lineage", f"{source[1]}->{target[1]}", AddLineageRequest,
                edge={
                    "fromEntity": self.ref(*source), "toEntity": self.ref(*target),
                    "lineageDetails": details,
                },
            )  # fmt: skip

    def _om_edges(self) -> list[tuple[str, str]]:
        """privmesh's edges with processors collapsed: ingest topic -> what it produces."""
        out = []
        for edge in self.catalog.edges:
            source_kind = edge.source.split(":", 1)[0]
            target_kind = edge.target.split(":", 1)[0]
            if target_kind == "processor" or source_kind == "processor":
                continue
            out.append((edge.source, edge.target))
        for proc in self.catalog.of_kind("processor"):
            consumes = [t for t in getattr(proc, "consumes", []) if t.endswith(".ingest")]
            for source in consumes:
                for target in getattr(proc, "produces", []):
                    out.append((source, target))
        return out


def _guarantee_text(product: ProductEntity) -> str:
    """The product's user-level guarantee, allocation and contribution bounds in words (the
    facts the catalog shows; OpenMetadata's data product has no field for them)."""
    parts = []
    guarantee = product.user_level
    if guarantee is not None:
        allocation = ", ".join(
            f"{a.query_class.split(':', 1)[1]} {a.epsilon_per_day}" for a in guarantee.allocation
        )
        parts.append(
            f"User-level privacy: {guarantee.statement}; privacy unit: the "
            f"{guarantee.privacy_unit}. Allocation per class (ε per day): {allocation or 'none'}."
        )
    bounds = product.contribution
    if bounds is not None:
        clamps = ", ".join(f"{n} to [{lo:g}, {hi:g}]" for n, (lo, hi) in bounds.clamp.items())
        parts.append(
            f"Contribution bounds per subject per {bounds.privacy_period}: at most "
            f"{bounds.max_records_per_period} records in at most "
            f"{bounds.max_windows_per_period} windows"
            f"{'; each record clamped: ' + clamps if clamps else ''}."
        )
    return "".join(f"\n\n{p}" for p in parts)
