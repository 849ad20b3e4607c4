"""Assemble the catalog from the contracts and the running system's artefacts.

Inputs (:class:`CatalogInputs`): the domain contracts and owners directory, the Feast
definitions derived from each contract, the query classes the dashboards API serves with
the ledger's spend and the governance policy in force (which caps class budgets and gives
the daily total of a product that declares none), and the model registry's versions with
their training tasks. Each product carries its user-level guarantee: the privacy unit
(the pseudonymous subject over the UTC day), the epsilon per subject per day (the
product's daily total, what the ledger enforces over all its classes together), the
allocation per class, the contract's contribution bounds and today's spend. Every
reference between them is checked: an owner missing from the directory, a class or task
naming a field its product lacks, an upstream product that does not exist or that makes
the lineage a cycle: each is a :class:`~catalog.errors.CatalogError` naming the entity
and what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from catalog.errors import UnknownOwner, UnknownReference
from catalog.graph import Catalog
from catalog.model import (
    Budget,
    ClassAllocation,
    Column,
    ContributionFacts,
    DomainEntity,
    FeatureViewEntity,
    FieldEntity,
    LineageEdge,
    ModelEntity,
    OwnerEntity,
    ProcessorEntity,
    ProductEntity,
    QueryClassEntity,
    TopicEntity,
    UserLevelGuarantee,
    column_id,
    entity_id,
)
from catalog.protection import describe_protection, published_name
from dashboards_api.budget import from_micro, to_micro
from dashboards_api.ledger import Ledger, period_of
from dashboards_api.policy import GovernancePolicy, reserve_micro
from dashboards_api.query_classes import ProductBudget, QueryClass, privacy_unit_of
from domains.contract import DataProduct, DomainContract, PrivacyTag, Protection
from domains.owners import OwnersDirectory
from feature_repo.names import (
    DISTINCT_SUBJECTS,
    EVENTS,
    SUBJECT_KEY,
    events_view_name,
    feast_project,
    sum_feature,
)
from feature_repo.specs import ProductViews, product_views
from federation.registry import ModelVersion
from federation.task_specs import TaskSpec
from streams.topics import (
    ProductTopics,
    consent_dlq_topic,
    consent_topic,
    erasures_topic,
    topic_configs,
)


@dataclass
class CatalogInputs:
    """Everything the catalog is assembled from (the system's own artefacts)."""

    contracts: Mapping[str, DomainContract]
    owners: OwnersDirectory
    classes: Mapping[str, QueryClass] = field(default_factory=dict)
    product_budgets: Mapping[str, ProductBudget] = field(default_factory=dict)
    ledger: Ledger | None = None
    policy: GovernancePolicy = field(default_factory=GovernancePolicy)
    """The governance policy in force (the API replica's, else the ledger's newest)."""
    models: list[ModelVersion] = field(default_factory=list)
    tasks: Mapping[str, TaskSpec] = field(default_factory=dict)
    now: datetime | None = None
    owners_source: str = "the domain folders' owners.yaml"
    """Where the owners directory was read from (named in errors)."""


def assemble(inputs: CatalogInputs) -> Catalog:
    """The catalog of ``inputs``; refuses dangling references and lineage cycles."""
    return _Builder(inputs).build()


class _Builder:
    def __init__(self, inputs: CatalogInputs) -> None:
        self.inputs = inputs
        self.period = period_of(inputs.now or datetime.now(UTC))
        self.entities: dict[str, Any] = {}
        self.edges: list[LineageEdge] = []
        self.owned: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ driver
    def build(self) -> Catalog:
        contracts = self.inputs.contracts
        for contract in contracts.values():
            self._check_owner(contract.owner, entity_id("domain", contract.domain))
            for product in contract.products:
                self._check_owner(product.owner, entity_id("product", _fqn(contract, product)))
        classes = self._classes()
        models = self._models()
        for contract in contracts.values():
            self._domain(contract)
            for product in contract.products:
                self._product(contract, product, classes, models)
        for qc in classes.values():
            self.entities[qc.id] = qc
        for model in models.values():
            self.entities[model.id] = model
        for owner in self.inputs.owners.owners:
            oid = entity_id("owner", owner.email)
            self.entities[oid] = OwnerEntity(
                id=oid,
                name=owner.name,
                description=owner.description,
                email=owner.email,
                display_name=owner.display_name,
                owns=sorted(self.owned.get(owner.email, [])),
            )
        catalog = Catalog(list(self.entities.values()), self.edges)
        catalog.check_acyclic()
        for entity in list(catalog.entities.values()):
            if isinstance(entity, FieldEntity):
                reached = catalog.downstream_entities(entity.id)
                catalog.entities[entity.id] = entity.model_copy(update={"downstream": reached})
        return catalog

    def _check_owner(self, email: str, entity: str) -> None:
        if self.inputs.owners.get(email) is None:
            known = ", ".join(o.email for o in self.inputs.owners.owners) or "none"
            raise UnknownOwner(
                f"{entity}: owner {email!r} is not in the owners directory "
                f"({self.inputs.owners_source}; known: {known}); add the team there or fix "
                "the contract",
                entity,
            )
        self.owned.setdefault(email, []).append(entity)

    # ------------------------------------------------------------------ domains, products
    def _domain(self, contract: DomainContract) -> None:
        did = entity_id("domain", contract.domain)
        self.entities[did] = DomainEntity(
            id=did,
            name=contract.domain,
            description=contract.description,
            owner=entity_id("owner", contract.owner),
            reviewed=contract.reviewed.isoformat() if contract.reviewed else None,
            products=[entity_id("product", _fqn(contract, p)) for p in contract.products],
        )

    def _product(
        self,
        contract: DomainContract,
        product: DataProduct,
        classes: Mapping[str, QueryClassEntity],
        models: Mapping[str, ModelEntity],
    ) -> None:
        fqn = _fqn(contract, product)
        pid = entity_id("product", fqn)
        topics = ProductTopics.of(contract.domain, product)
        features = product_views(product)
        field_ids = {f.name: entity_id("field", f"{fqn}.{f.name}") for f in product.fields}
        topic_ids = self._topics(contract, product, topics, field_ids)
        view_ids = self._feature_views(contract, product, features, field_ids)
        self._processor(contract, product, topics, topic_ids, view_ids)
        own_classes = sorted(c.id for c in classes.values() if c.product == pid)
        own_models = sorted(m.id for m in models.values() if pid in m.products)
        for upstream in product.upstream:
            self._upstream_edge(upstream, contract, product, topics)
        for spec in product.fields:
            fid = field_ids[spec.name]
            self.entities[fid] = FieldEntity(
                id=fid,
                name=spec.name,
                description=spec.description,
                domain=entity_id("domain", contract.domain),
                product=pid,
                type=spec.type.value,
                tag=spec.tag,
                protection=spec.protection,
                protection_detail=describe_protection(spec),
                published_as=published_name(spec),
                required=spec.required,
                bounds=(spec.bounds.min, spec.bounds.max) if spec.bounds else None,
                allowed_values=len(spec.allowed_values) if spec.allowed_values else None,
            )
        counts = {t.value: 0 for t in PrivacyTag}
        for spec in product.fields:
            counts[spec.tag.value] += 1
        total = self._product_total(fqn)
        self.entities[pid] = ProductEntity(
            id=pid,
            name=fqn,
            description=product.description,
            domain=entity_id("domain", contract.domain),
            version=product.version,
            owner=entity_id("owner", product.owner),
            purpose=product.purpose,
            retention_days=product.retention_days,
            privacy_unit=field_ids[product.privacy_unit],
            tag_counts=counts,
            fields=list(field_ids.values()),
            topics=topic_ids,
            feature_views=view_ids,
            query_classes=own_classes,
            models=own_models,
            upstream=[entity_id("product", u) for u in product.upstream],
            budget=(
                self._budget(total[0], self._product_spent(fqn)) if total is not None else None
            ),
            user_level=(
                self._user_level(product, total, [classes[c] for c in own_classes], fqn)
                if total is not None
                else None
            ),
            contribution=_contribution(product),
        )

    # ------------------------------------------------------------------ topics, processor
    def _topics(
        self,
        contract: DomainContract,
        product: DataProduct,
        topics: ProductTopics,
        field_ids: Mapping[str, str],
    ) -> list[str]:
        pid = entity_id("product", _fqn(contract, product))
        raw = [
            Column(
                name=f.name,
                type=f.type.value,
                description=f.description,
                tag=f.tag,
                protection=Protection.KEEP,
                source_fields=[field_ids[f.name]],
            )
            for f in product.fields
        ]
        published = [
            Column(
                name=name,
                type="string" if f.protection is not Protection.KEEP else f.type.value,
                description=f.description,
                tag=f.tag,
                protection=f.protection,
                source_fields=[field_ids[f.name]],
            )
            for f in product.fields
            if (name := published_name(f)) is not None
        ]
        window = [
            Column(
                name=SUBJECT_KEY,
                type="string",
                description=f"Token of the privacy unit {product.privacy_unit}",
                tag=PrivacyTag.DIRECT_IDENTIFIER,
                protection=Protection.TOKENISE,
                source_fields=[field_ids[product.privacy_unit]],
            )
        ]
        layout = [
            (
                topics.ingest,
                "ingest",
                "domain",
                raw,
                "raw events as the domain's systems send them",
            ),
            (topics.product, "product", "shared", published, "pseudonymised product events"),
            (topics.dlq, "dlq", "domain", raw, "invalid events with the reason header"),
            (topics.profiles, "profiles", "domain", window, "latest window per subject token"),
        ]
        ids = []
        for name, role, boundary, columns, what in layout:
            tid = entity_id("topic", name)
            policy = topic_configs(name).get("cleanup.policy", "delete")
            self.entities[tid] = TopicEntity(
                id=tid,
                name=name,
                description=f"{_fqn(contract, product)}: {what}",
                domain=entity_id("domain", contract.domain),
                product=pid,
                role=role,
                boundary=boundary,
                cleanup_policy=policy,
                retention_days=product.retention_days if policy == "delete" else None,
                columns=columns,
            )
            ids.append(tid)
            for column in columns:
                if role == "ingest":
                    self._edge(column.source_fields[0], column_id(tid, column.name), "column")
        domain_topics = [
            (erasures_topic(contract.domain), "erasures",
             "erasure requests (subject tokens to evict)", "delete"),
            (consent_topic(contract.domain), "consent",
             "consent decisions per raw subject and purpose (granted/withdrawn)", "compact"),
            (consent_dlq_topic(contract.domain), "consent_dlq",
             "malformed consent records with a reason header", "delete"),
        ]  # fmt: skip
        for name, role, what, policy in domain_topics:
            tid = entity_id("topic", name)
            if tid not in self.entities:
                self.entities[tid] = TopicEntity(
                    id=tid,
                    name=name,
                    description=f"{contract.domain}: {what}",
                    domain=entity_id("domain", contract.domain),
                    product=None,
                    role=role,
                    boundary="domain",
                    cleanup_policy=policy,
                    retention_days=None,
                    columns=[],
                )
        return ids

    def _processor(
        self,
        contract: DomainContract,
        product: DataProduct,
        topics: ProductTopics,
        topic_ids: list[str],
        view_ids: list[str],
    ) -> None:
        fqn = _fqn(contract, product)
        proc = entity_id("processor", fqn)
        ingest, product_topic = (
            entity_id("topic", topics.ingest),
            entity_id("topic", topics.product),
        )
        self.entities[proc] = ProcessorEntity(
            id=proc,
            name=fqn,
            description=(
                f"Faust processor of {fqn}: validates against the contract, pseudonymises, "
                "dead-letters invalid events, aggregates windows into the domain's store"
            ),
            domain=entity_id("domain", contract.domain),
            product=entity_id("product", fqn),
            consumes=[
                ingest,
                entity_id("topic", erasures_topic(contract.domain)),
                entity_id("topic", consent_topic(contract.domain)),
            ],
            produces=[t for t in topic_ids if t != ingest] + view_ids,
        )
        self._edge(ingest, proc, "entity")
        self._edge(entity_id("topic", erasures_topic(contract.domain)), proc, "entity", "erase")
        self._edge(entity_id("topic", consent_topic(contract.domain)), proc, "entity", "consent")
        for target in topic_ids[1:] + view_ids:
            self._edge(proc, target, "entity")
        for spec in product.fields:
            name = published_name(spec)
            source = column_id(ingest, spec.name)
            if name is None:
                continue
            self._edge(source, column_id(product_topic, name), "column", spec.protection.value)

    def _upstream_edge(
        self, upstream: str, contract: DomainContract, product: DataProduct, topics: ProductTopics
    ) -> None:
        domain, _, name = upstream.partition(".")
        source = self.inputs.contracts.get(domain)
        source_product = source.product(name) if source else None
        if source is None or source_product is None:
            raise UnknownReference(
                f"product {_fqn(contract, product)}: upstream {upstream!r} is not a data "
                "product of any contract; name it as domain.product",
                entity_id("product", _fqn(contract, product)),
            )
        source_topic = ProductTopics.of(domain, source_product).product
        self._edge(
            entity_id("topic", source_topic), entity_id("topic", topics.ingest), "entity", "derive"
        )

    # ------------------------------------------------------------------ feature views
    def _feature_views(
        self,
        contract: DomainContract,
        product: DataProduct,
        features: ProductViews,
        field_ids: Mapping[str, str],
    ) -> list[str]:
        product_topic = entity_id("topic", ProductTopics.of(contract.domain, product).product)
        by_published = {published_name(f): f for f in product.fields if published_name(f)}
        ids = []
        for view in features.all():
            vid = entity_id("feature_view", f"{contract.domain}.{view.name}")
            columns = []
            for feature in view.columns:
                tags = dict(feature.tags or {})
                source = tags.get("source_field")
                spec = by_published.get(feature.name) if source is None else product.field(source)
                sources = [field_ids[spec.name]] if spec is not None else []
                if feature.name == DISTINCT_SUBJECTS:
                    sources = [field_ids[product.privacy_unit]]
                if view is features.events:
                    protection: Any = spec.protection if spec else Protection.KEEP
                elif feature.name in {EVENTS, DISTINCT_SUBJECTS}:
                    protection = "counted"
                else:
                    protection = "aggregated" if sources else Protection.KEEP
                tag = tags.get("privacy_tag", PrivacyTag.NON_PERSONAL.value)
                columns.append(
                    Column(
                        name=feature.name,
                        type=feature.dtype,
                        description=feature.description,
                        tag=tag if tag in {*PrivacyTag, "aggregate"} else PrivacyTag.SENSITIVE,
                        protection=protection,
                        source_fields=sources,
                    )
                )
                for source_id in sources:
                    origin = _published_column(product_topic, product, source_id, field_ids)
                    transform = "copy" if view is features.events else "aggregate"
                    self._edge(origin, column_id(vid, feature.name), "column", transform)
            self.entities[vid] = FeatureViewEntity(
                id=vid,
                name=f"{contract.domain}.{view.name}",
                description=view.description,
                domain=entity_id("domain", contract.domain),
                product=entity_id("product", _fqn(contract, product)),
                store=feast_project(contract.domain),
                entities=list(view.entities),
                online=view.online,
                ttl_days=view.ttl_days,
                owner=entity_id("owner", product.owner),
                columns=columns,
            )
            ids.append(vid)
        return ids

    # ------------------------------------------------------------------ classes, models
    def _classes(self) -> dict[str, QueryClassEntity]:
        out: dict[str, QueryClassEntity] = {}
        for qc in self.inputs.classes.values():
            cid = entity_id("query_class", qc.id)
            contract, product = self._product_of(qc.domain, qc.product, cid)
            fqn = _fqn(contract, product)
            inputs = [product.privacy_unit]
            for name, role in ((qc.measure, "measure"), (qc.group_by, "group_by")):
                if name is None:
                    continue
                if product.field(name) is None:
                    raise UnknownReference(
                        f"{cid}: {role} {name!r} is not a field of {fqn} "
                        f"(fields: {', '.join(f.name for f in product.fields)})",
                        cid,
                    )
                inputs.append(name)
            source = qc.source
            spent = self._class_spent(qc.id)
            out[qc.id] = QueryClassEntity(
                id=cid,
                name=qc.id,
                description=qc.title,
                domain=entity_id("domain", qc.domain),
                product=entity_id("product", fqn),
                aggregate=qc.aggregate,
                release=qc.release,
                mechanism=qc.noise,
                source=source,
                inputs=[entity_id("field", f"{fqn}.{n}") for n in inputs],
                epsilon_per_release=str(qc.epsilon_per_release),
                privacy_unit=privacy_unit_of(qc),
                budget=self._budget(self._class_budget(qc), spent),
            )
            view = f"{product.name}_{'window_stats' if source == 'windows' else 'events'}"
            vid = entity_id("feature_view", f"{qc.domain}.{view}")
            self._edge(vid, cid, "entity", f"dp_{qc.noise}")
            for name in inputs:
                column = self._class_input_column(product, name, source)
                self._edge(column_id(vid, column), cid, "column", "dp_release")
        return {c.id: c for c in out.values()}

    @staticmethod
    def _class_input_column(product: DataProduct, name: str, source: str) -> str:
        spec = product.field(name)
        assert spec is not None
        if source == "windows":
            if name == product.privacy_unit:
                return DISTINCT_SUBJECTS
            return sum_feature(name) if spec.bounds is not None else EVENTS
        return SUBJECT_KEY if name == product.privacy_unit else published_name(spec) or name

    def _models(self) -> dict[str, ModelEntity]:
        out: dict[str, ModelEntity] = {}
        for version in self.inputs.models:
            mid = entity_id("model", version.version)
            lineage = version.lineage
            task = self.inputs.tasks.get(version.task)
            domains = sorted(lineage.get("domains", {}))
            spec = lineage.get("task_spec", {})
            product_name = task.product if task else str(spec.get("product", ""))
            products, inputs = [], []
            for domain in domains:
                contract, product = self._product_of(domain, product_name, mid)
                fqn = _fqn(contract, product)
                products.append(entity_id("product", fqn))
                fields = [f.field for f in task.features] + [task.label.field] if task else []
                for name in fields:
                    if product.field(name) is None:
                        raise UnknownReference(
                            f"{mid}: task {version.task!r} uses field {name!r}, which {fqn} "
                            "does not have",
                            mid,
                        )
                    inputs.append(entity_id("field", f"{fqn}.{name}"))
                    view = entity_id("feature_view", f"{domain}.{events_view_name(product.name)}")
                    self._edge(column_id(view, name), mid, "column", "train")
                self._edge(
                    entity_id("feature_view", f"{domain}.{events_view_name(product.name)}"),
                    mid,
                    "entity",
                    "federated_training",
                )
            out[version.version] = ModelEntity(
                id=mid,
                name=version.version,
                description=task.description if task else "",
                task=version.task,
                status=version.status,
                created_at=version.created_at,
                domains=[entity_id("domain", d) for d in domains],
                products=products,
                examples={str(k): int(v) for k, v in lineage.get("example_counts", {}).items()},
                rounds={k: v for k, v in lineage.get("rounds", {}).items() if k != "history"},
                secure_aggregation=dict(lineage.get("secure_aggregation", {})),
                dp=dict(lineage.get("dp", {})),
                metrics=dict(lineage.get("metrics", {}).get("global", {})),
                code_version=str(
                    (lineage.get("code") or {}).get("source")
                    or (lineage.get("code") or {}).get("privmesh")
                    or ""
                ),
                inputs=inputs,
            )
        return out

    def _product_of(
        self, domain: str, product: str, entity: str
    ) -> tuple[DomainContract, DataProduct]:
        contract = self.inputs.contracts.get(domain)
        found = contract.product(product) if contract else None
        if contract is None or found is None:
            raise UnknownReference(
                f"{entity}: data product {domain}.{product} is not declared by any contract",
                entity,
            )
        return contract, found

    # ------------------------------------------------------------------ budget
    def _product_total(self, fqn: str) -> tuple[int, bool] | None:
        """The product's daily total in micro-epsilon and whether it is declared, as the
        API's release path reads it (``GovernancePolicy.product_total_micro``)."""
        declared = self.inputs.product_budgets.get(fqn)
        total = self.inputs.policy.product_total_micro(
            None if declared is None else declared.budget_micro
        )
        return None if total is None else (total, declared is not None)

    def _class_budget(self, qc: QueryClass) -> int:
        """The class's daily budget, capped by the policy (``ReleaseService.class_budget``)."""
        return self.inputs.policy.class_budget_micro(qc)

    def _user_level(
        self,
        product: DataProduct,
        total: tuple[int, bool],
        classes: list[QueryClassEntity],
        fqn: str,
    ) -> UserLevelGuarantee:
        micro, declared = total
        budget = self.inputs.product_budgets.get(fqn)
        reserve = reserve_micro(self.inputs.policy, budget, micro)
        epsilon = from_micro(micro)
        narrower = [c.id for c in classes if c.privacy_unit == "subject_window"]
        allocation = [
            ClassAllocation(
                query_class=c.id,
                epsilon_per_day=c.budget.per_day,
                share=to_micro(c.budget.per_day) / micro if micro else 0.0,
                privacy_unit=c.privacy_unit,
            )
            for c in classes
        ]
        unit = f"pseudonymous subject ({product.privacy_unit}) over the UTC day"
        statement = f"ε = {epsilon} per person per UTC day (pure DP)"
        if narrower:
            statement += (
                f", except {len(narrower)} class(es) protecting a subject within one window only"
            )
        return UserLevelGuarantee(
            privacy_unit=unit,
            epsilon_per_subject_per_day=str(epsilon),
            total_source="declared" if declared else "policy_default",
            statement=statement,
            allocation=allocation,
            reserve_per_day=from_micro(reserve),
            narrower_classes=narrower,
        )

    def _class_spent(self, class_id: str) -> int:
        ledger = self.inputs.ledger
        return ledger.spent(class_id, self.period) if ledger else 0

    def _product_spent(self, fqn: str) -> int:
        ledger = self.inputs.ledger
        return ledger.product_spent(fqn, self.period) if ledger else 0

    def _budget(self, per_day_micro: int, spent_micro: int) -> Budget:
        return Budget(
            period=self.period,
            per_day=from_micro(per_day_micro),
            spent=from_micro(spent_micro),
            remaining=from_micro(max(per_day_micro - spent_micro, 0)),
            # A class allotted nothing (a daily mean, post-processing of two paid classes)
            # spends nothing: 0, not "all of it".
            fraction_spent=spent_micro / per_day_micro if per_day_micro else float(spent_micro > 0),
        )

    def _edge(self, source: str, target: str, level: str, transform: str | None = None) -> None:
        self.edges.append(
            LineageEdge(source=source, target=target, level=level, transform=transform)
        )


def _contribution(product: DataProduct) -> ContributionFacts:
    """The contract's contribution bounds, each bounded measure's clamp included."""
    bounds = product.contribution
    clamp = {}
    for spec in product.fields:
        if spec.numeric and spec.bounds is not None:
            limits = product.clamp_of(spec.name)
            clamp[spec.name] = (limits.min, limits.max)
    return ContributionFacts(
        privacy_period=bounds.privacy_period,
        max_records_per_period=bounds.max_records_per_period,
        max_windows_per_period=bounds.max_windows_per_period,
        clamp=clamp,
        max_sum_per_period=dict(bounds.max_sum_per_period),
    )


def _fqn(contract: DomainContract, product: DataProduct) -> str:
    return f"{contract.domain}.{product.name}"


def _published_column(
    product_topic: str, product: DataProduct, field_id: str, field_ids: Mapping[str, str]
) -> str:
    name = next(n for n, fid in field_ids.items() if fid == field_id)
    spec = product.field(name)
    assert spec is not None
    return column_id(product_topic, published_name(spec) or name)
