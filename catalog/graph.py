"""The assembled catalog: entities by id, search, and the lineage graph (networkx)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, Literal

import networkx as nx

from catalog.errors import EntityNotFound, InvalidSearch, LineageCycle
from catalog.model import (
    KINDS,
    Entity,
    EntityKind,
    FieldEntity,
    LineageEdge,
    ProductEntity,
    QueryClassEntity,
)

Direction = Literal["upstream", "downstream", "both"]
_BUDGETED: tuple[EntityKind, ...] = ("product", "query_class")
_TAGGED: tuple[EntityKind, ...] = ("field", "product", "topic", "feature_view")


class Catalog:
    """Entities and lineage edges, with the queries governance asks of them."""

    def __init__(self, entities: Iterable[Entity], edges: Iterable[LineageEdge]) -> None:
        self.entities: dict[str, Entity] = {e.id: e for e in entities}
        self.edges = list(edges)
        self.graph: nx.DiGraph[str] = nx.DiGraph()
        self.graph.add_nodes_from(self.entities)
        for edge in self.edges:
            self.graph.add_edge(
                edge.source, edge.target, level=edge.level, transform=edge.transform
            )

    # ------------------------------------------------------------------ lookup
    def get(self, entity: str) -> Entity:
        """The entity ``entity`` (an id such as ``field:shop.orders.ip_address``)."""
        found = self.entities.get(entity)
        if found is None:
            close = difflib.get_close_matches(entity, self.entities, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EntityNotFound(
                f"no catalog entity {entity!r} (ids look like kind:name, kinds: "
                f"{', '.join(KINDS)}){hint}",
                entity,
            )
        return found

    def of_kind(self, kind: EntityKind) -> list[Entity]:
        """Every entity of ``kind``, by id."""
        return sorted((e for e in self.entities.values() if e.kind == kind), key=lambda e: e.id)

    # ------------------------------------------------------------------ search
    def search(
        self,
        *,
        kind: EntityKind | None = None,
        tag: str | None = None,
        protection: str | None = None,
        text: str | None = None,
        domain: str | None = None,
        budget_above: float | None = None,
    ) -> list[Entity]:
        """Entities matching every given filter.

        ``tag``: fields with that privacy tag, products with a field of it, topics and
        feature views with a column of it. ``protection``: fields protected that way.
        ``budget_above``: products and query classes that spent more than that fraction of
        today's budget. ``text``: a case-insensitive substring of id, name or description.
        """
        if budget_above is not None and kind not in (None, *_BUDGETED):
            raise InvalidSearch(f"budget_above applies to {' and '.join(_BUDGETED)}, not {kind}")
        if tag is not None and kind not in (None, *_TAGGED):
            raise InvalidSearch(f"tag applies to {', '.join(_TAGGED)}, not {kind}")
        if protection is not None and kind not in (None, "field"):
            raise InvalidSearch(f"protection applies to fields, not {kind}")
        kinds: set[str] = {kind} if kind else set(KINDS)
        if budget_above is not None:
            kinds &= set(_BUDGETED)
        if tag is not None:
            kinds &= set(_TAGGED)
        if protection is not None:
            kinds &= {"field"}
        needle = text.lower() if text else None
        checks: list[Callable[[Entity], bool]] = [lambda e: e.kind in kinds]
        if domain is not None:
            checks.append(lambda e: _domain_of(e) == f"domain:{domain}")
        if tag is not None:
            checks.append(lambda e: _has_tag(e, tag))
        if protection is not None:
            checks.append(lambda e: isinstance(e, FieldEntity) and e.protection.value == protection)
        if budget_above is not None:
            checks.append(lambda e: _spent_above(e, budget_above))
        if needle is not None:
            checks.append(lambda e: any(needle in s.lower() for s in (e.id, e.name, e.description)))
        found = (e for e in self.entities.values() if all(check(e) for check in checks))
        return sorted(found, key=lambda e: e.id)

    # ------------------------------------------------------------------ lineage
    def check_acyclic(self) -> None:
        """Refuse a lineage graph with a cycle, naming the entities on it."""
        try:
            cycle = nx.find_cycle(self.graph)
        except nx.NetworkXNoCycle:
            return
        path = " -> ".join([str(edge[0]) for edge in cycle] + [str(cycle[0][0])])
        raise LineageCycle(
            f"lineage cycle: {path}; a product cannot derive from itself: remove one of the "
            "'upstream' declarations on the path",
            str(cycle[0][0]),
        )

    def lineage(
        self,
        root: str | None = None,
        direction: Direction = "both",
        depth: int | None = None,
        level: Literal["entity", "column", "all"] = "all",
    ) -> dict[str, Any]:
        """The lineage graph as JSON (nodes and edges): all of it, or what flows into and
        out of ``root`` (an entity id or a column node ``<entity id>#<column>``)."""
        graph = self.graph
        if level != "all":
            keep = [(u, v) for u, v, d in graph.edges(data=True) if d["level"] == level]
            graph = graph.edge_subgraph(keep).copy()
            graph.add_nodes_from(n for n in self.entities if level == "entity")
        if root is None:
            nodes = set(graph.nodes)
        else:
            if root not in self.graph:
                self.get(root)  # raises EntityNotFound with suggestions
            seeds = {root}
            entity = self.entities.get(root)
            if isinstance(entity, ProductEntity):
                seeds |= set(entity.fields)  # a product's lineage is its fields'
            if "#" not in root:
                seeds |= {n for n in graph if n.startswith(f"{root}#")}
            nodes = set(seeds)
            for seed in seeds & set(graph.nodes):
                if direction in ("downstream", "both"):
                    nodes |= _reach(graph, seed, depth, forward=True)
                if direction in ("upstream", "both"):
                    nodes |= _reach(graph, seed, depth, forward=False)
        return {
            "root": root,
            "nodes": [self._node(n) for n in sorted(nodes)],
            "edges": [
                {"source": u, "target": v, "level": d["level"], "transform": d["transform"]}
                for u, v, d in sorted(graph.subgraph(nodes).edges(data=True))
            ],
        }

    def _node(self, node: str) -> dict[str, Any]:
        entity_part, _, column = node.partition("#")
        kind = entity_part.split(":", 1)[0]
        entity = self.entities.get(entity_part)
        out: dict[str, Any] = {
            "id": node,
            "kind": "column" if column else kind,
            "label": column or (entity.name if entity else entity_part),
        }
        if column:
            out["entity"] = entity_part
            found = next((c for c in getattr(entity, "columns", []) if c.name == column), None)
            if found is not None:
                out["tag"] = str(found.tag)
                out["protection"] = str(found.protection)
        elif isinstance(entity, FieldEntity):
            out["tag"] = entity.tag.value
            out["protection"] = entity.protection.value
        return out

    def downstream_entities(
        self, node: str, kinds: tuple[str, ...] = ("feature_view", "query_class", "model")
    ) -> list[str]:
        """The entities of ``kinds`` that data of ``node`` reaches (through its columns)."""
        reached = {n.partition("#")[0] for n in nx.descendants(self.graph, node)}
        return sorted(n for n in reached if n.split(":", 1)[0] in kinds)

    # ------------------------------------------------------------------ overview
    def summary(self) -> dict[str, Any]:
        """Counts per kind and privacy tag, and the classes above 80% of their budget."""
        fields = [e for e in self.entities.values() if isinstance(e, FieldEntity)]
        return {
            "entities": {k: sum(e.kind == k for e in self.entities.values()) for k in KINDS},
            "fields_by_tag": {
                tag: sum(f.tag.value == tag for f in fields)
                for tag in sorted({f.tag.value for f in fields})
            },
            "fields_by_protection": {
                p: sum(f.protection.value == p for f in fields)
                for p in sorted({f.protection.value for f in fields})
            },
            "lineage_edges": len(self.edges),
            "classes_above_80_percent": [e.id for e in self.search(budget_above=0.8)],
        }


def _reach(graph: nx.DiGraph[str], node: str, depth: int | None, *, forward: bool) -> set[str]:
    view = graph if forward else graph.reverse(copy=False)
    if depth is None:
        return set(nx.descendants(view, node))
    lengths = nx.single_source_shortest_path_length(view, node, cutoff=depth)
    return {n for n in lengths if n != node}


def _domain_of(entity: Entity) -> str | None:
    if entity.kind == "domain":
        return entity.id
    domain = getattr(entity, "domain", None)
    if isinstance(domain, str):
        return domain
    domains = getattr(entity, "domains", None)
    return domains[0] if domains else None


def _has_tag(entity: Entity, tag: str) -> bool:
    if isinstance(entity, FieldEntity):
        return entity.tag.value == tag
    if isinstance(entity, ProductEntity):
        return entity.tag_counts.get(tag, 0) > 0
    return any(str(c.tag) == tag for c in getattr(entity, "columns", []))


def _spent_above(entity: Entity, fraction: float) -> bool:
    if isinstance(entity, ProductEntity | QueryClassEntity) and entity.budget is not None:
        return entity.budget.fraction_spent > fraction
    return False
