"""The catalog's entities and lineage edges: what governance browses, searches and exports.

Every entity has an ``id`` of the form ``<kind>:<name>`` (``field:shop.orders.ip_address``,
``topic:shop.orders.v1``, ``feature_view:shop.orders_events``, ``query_class:shop.orders.
revenue_cents``, ``model:flight_delay-v3``). Columns of topics and feature views are lineage
nodes ``<entity id>#<column>``. Edges are entity-level (a topic feeds a processor) or
column-level (a source field becomes a product column, a feature, a query class's input).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from domains.contract import PrivacyTag, Protection

EntityKind = Literal[
    "owner", "domain", "product", "field", "topic", "processor", "feature_view", "query_class",
    "model",
]  # fmt: skip
KINDS: tuple[EntityKind, ...] = (
    "owner", "domain", "product", "field", "topic", "processor", "feature_view", "query_class",
    "model",
)  # fmt: skip
TopicRole = Literal["ingest", "product", "dlq", "profiles", "erasures", "consent", "consent_dlq"]


def entity_id(kind: EntityKind, name: str) -> str:
    """The catalog id of the ``kind`` entity called ``name``."""
    return f"{kind}:{name}"


def column_id(entity: str, column: str) -> str:
    """The lineage node of ``column`` of the topic or feature view ``entity``."""
    return f"{entity}#{column}"


class _Entity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    description: str = ""

    @property
    def kind(self) -> EntityKind:
        """The entity's kind (the part of its id before the colon)."""
        kind: EntityKind = self.id.split(":", 1)[0]  # type: ignore[assignment]
        return kind


class Column(BaseModel):
    """A column of a topic or feature view, with the privacy tag of the field it derives
    from and how that field is protected in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: str
    description: str = ""
    tag: PrivacyTag | Literal["aggregate"]
    protection: Protection | Literal["aggregated", "counted"] = Protection.KEEP
    source_fields: list[str] = Field(
        default_factory=list, description="Ids of the contract fields it is computed from."
    )


class OwnerEntity(_Entity):
    """A team that owns domains and data products."""

    email: str
    display_name: str
    owns: list[str] = Field(default_factory=list)


class DomainEntity(_Entity):
    """A domain: the team boundary raw personal data never leaves."""

    owner: str
    reviewed: str | None = None
    products: list[str] = Field(default_factory=list)


class Budget(BaseModel):
    """Privacy budget of a product or query class in the current UTC day (epsilon)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    period: str
    per_day: str
    spent: str
    remaining: str
    fraction_spent: float


class ClassAllocation(BaseModel):
    """One query class's share of its product's daily total (what the class may spend in a
    UTC day, capped by the governance policy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query_class: str = Field(description="The class's entity id.")
    epsilon_per_day: str
    share: float = Field(description="Its allocation over the product's daily total.")
    privacy_unit: str = Field(description="What one of its releases protects.")


class UserLevelGuarantee(BaseModel):
    """What the product's DP releases promise one person over a UTC day: the ledger's daily
    product total bounds, by sequential composition, the privacy loss of every release of
    every class together about one pseudonymous subject's whole day of data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    privacy_unit: str = Field(description="Who is protected, over which period.")
    period: Literal["UTC day"] = "UTC day"
    epsilon_per_subject_per_day: str = Field(
        description="The user-level privacy loss per subject per UTC day (pure DP)."
    )
    accounting: Literal["pure DP"] = "pure DP"
    total_source: Literal["declared", "policy_default"] = Field(
        description="Whether the product's query-class file declares the total, or the "
        "governance policy's default_product_budget_per_day applies."
    )
    statement: str = Field(description="The guarantee in one sentence.")
    allocation: list[ClassAllocation]
    reserve_per_day: str = Field(
        default="0",
        description="Epsilon per subject per UTC day of the total that no class may be "
        "allocated: kept for planning releases (the bound advisor).",
    )
    narrower_classes: list[str] = Field(
        default_factory=list,
        description="Classes whose privacy unit is narrower than the subject-day (a "
        "subject within one window): the daily total does not bound their loss per person.",
    )


class ContributionFacts(BaseModel):
    """The contract's per-subject, per-period contribution bounds the stream processor
    enforces before any aggregate (records beyond them are not counted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    privacy_period: str
    max_records_per_period: int
    max_windows_per_period: int
    clamp: dict[str, tuple[float, float]] = Field(
        description="Per-record clamp of each numeric measure (min, max)."
    )
    max_sum_per_period: dict[str, float] = Field(
        default_factory=dict,
        description="Per-subject cap on a measure's total per period (the measure's unit): "
        "a subject's day adds at most this much to any sum or mean of the measure.",
    )


class ProductEntity(_Entity):
    """A published data product with its governance facts."""

    domain: str
    version: int
    owner: str
    purpose: str
    retention_days: int
    privacy_unit: str
    tag_counts: dict[str, int]
    fields: list[str]
    topics: list[str]
    feature_views: list[str]
    query_classes: list[str]
    models: list[str]
    upstream: list[str] = Field(default_factory=list)
    budget: Budget | None = None
    user_level: UserLevelGuarantee | None = None
    contribution: ContributionFacts | None = None


class FieldEntity(_Entity):
    """One contract field: its privacy tag and the protection applied before it leaves
    ingestion (``published_as`` is its column in the product topic, None when dropped)."""

    domain: str
    product: str
    type: str
    tag: PrivacyTag
    protection: Protection
    protection_detail: str
    published_as: str | None
    required: bool
    bounds: tuple[float, float] | None = None
    allowed_values: int | None = Field(None, description="How many public values it may take.")
    downstream: list[str] = Field(
        default_factory=list, description="Feature views, query classes and models it reaches."
    )


class TopicEntity(_Entity):
    """A Kafka topic of a product (or the domain's erasure requests)."""

    domain: str
    product: str | None
    role: TopicRole
    boundary: Literal["domain", "shared"] = Field(
        description="'domain': raw or per-subject data that stays in the domain; 'shared': "
        "pseudonymised events other teams may read."
    )
    cleanup_policy: Literal["delete", "compact"]
    retention_days: int | None
    columns: list[Column]


class ProcessorEntity(_Entity):
    """A domain's stream processor of one product (validate, pseudonymise, aggregate)."""

    domain: str
    product: str
    consumes: list[str]
    produces: list[str]


class FeatureViewEntity(_Entity):
    """A Feast feature view in a domain's own store."""

    domain: str
    product: str
    store: str
    entities: list[str]
    online: bool
    ttl_days: int
    owner: str
    columns: list[Column]


class QueryClassEntity(_Entity):
    """A pre-registered DP query class of the dashboards API, with its budget use."""

    domain: str
    product: str
    aggregate: str
    release: str
    mechanism: str
    source: Literal["windows", "events"]
    inputs: list[str] = Field(description="Ids of the contract fields it reads.")
    epsilon_per_release: str
    privacy_unit: str = Field(
        "subject", description="What one release protects (subject, subject_day, subject_window)."
    )
    budget: Budget


class ModelEntity(_Entity):
    """A federated model version of the registry, with its lineage."""

    task: str
    status: str
    created_at: str
    domains: list[str]
    products: list[str]
    examples: dict[str, int]
    rounds: dict[str, Any]
    secure_aggregation: dict[str, Any]
    dp: dict[str, Any]
    metrics: dict[str, Any]
    code_version: str
    inputs: list[str]


Entity = Annotated[
    OwnerEntity
    | DomainEntity
    | ProductEntity
    | FieldEntity
    | TopicEntity
    | ProcessorEntity
    | FeatureViewEntity
    | QueryClassEntity
    | ModelEntity,
    Field(union_mode="left_to_right"),
]


class LineageEdge(BaseModel):
    """Data flows from ``source`` to ``target``: entity ids, or column nodes
    (``<entity id>#<column>``) for column-level lineage; ``transform`` says what happens
    on the way (tokenise, generalise, aggregate, train, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    target: str
    level: Literal["entity", "column"]
    transform: str | None = None
