"""Test doubles (used only in tests, never as product defaults)."""

from __future__ import annotations

from typing import Any, ClassVar


class FakeWindowSource:
    """In-memory window aggregates standing in for a domain's Feast store."""

    def __init__(
        self, windows: dict[int, int] | None = None, rows: dict[int, dict[str, Any]] | None = None
    ) -> None:
        self.windows = dict(windows or {})
        self.rows = dict(rows or {})

    def window_stats(
        self, product: str, window_starts: list[int], partitions: int = 1
    ) -> list[dict[str, Any]]:
        """Rows for ``window_starts`` (already summed over partitions; complete in every
        partition unless a row says otherwise); unknown ones None."""
        return [
            {"window_start": w, "complete": partitions, **self.rows[w]}
            if w in self.rows
            else {
                "window_start": w,
                "distinct_subjects": self.windows.get(w),
                "events": None,
                "complete": partitions,
                "contribution_bound": None,
            }
            for w in window_starts
        ]


class InProcessGrid:
    """A Flower ``Grid`` whose nodes are ClientApp handlers in this process.

    Stands in for the SuperLink and SuperNodes in coordinator tests (the real engine has
    its own integration tests). ``kill(node, step, round)`` makes a node vanish, as a
    crashed host, when a message asking for that step of that round reaches it: it and
    every later message to it get no answer.
    """

    def __init__(self, domains: dict[int, str], run_config: dict[str, Any], data_dir: str) -> None:
        from flwr.app import Context, RecordDict
        from flwr.supercore.run import Run

        self._run = Run.create_empty(1)
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"domain": domain, "data-dir": data_dir},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for node, domain in domains.items()
        }
        self.replies: dict[str, Any] = {}
        self.dead: set[int] = set()
        self.kills: dict[int, tuple[str, int]] = {}
        self.tamper: dict[int, Any] = {}

    def kill(self, node: int, step: str, round_: int) -> None:
        """``node`` dies when asked for ``step`` of round ``round_`` (census: any round)."""
        self.kills[node] = (step, round_)

    @property
    def run(self) -> Any:
        """The run's (empty) details."""
        return self._run

    def set_run(self, run: Any) -> None:
        """Flower's Grid API; unused."""

    def get_node_ids(self) -> list[int]:
        """Every node that has not died."""
        return sorted(set(self.contexts) - self.dead)

    def push_messages(self, messages: Any) -> list[str]:
        """Deliver each message to its node's handler now; keep the answers."""
        from federation import wire
        from federation.participant import handle

        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            message.metadata.__dict__["_run_id"] = 1
            ids.append(message.metadata.message_id)
            node = message.metadata.dst_node_id
            if node in self.dead:
                continue
            if node in self.kills:
                step, round_ = self.kills[node]
                steps = wire.steps_of(message.content)
                if step in steps and (
                    step == wire.CENSUS
                    or int(wire.params(message.content, step)["round"]) == round_
                ):
                    self.dead.add(node)
                    continue
            reply = handle(message, self.contexts[node])
            if node in self.tamper:
                reply = self.tamper[node](reply)
            self.replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Any) -> list[Any]:
        """The answers that exist for ``message_ids`` (each handed out once)."""
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]


# --------------------------------------------------------------------------- OpenMetadata
class OpenMetadataTestServer:
    """A local HTTP server speaking the OpenMetadata REST paths ``catalog.push`` uses.

    It keeps entities like a real server: ``PUT /api/v1/<collection>`` creates or updates
    by fully-qualified name (the version goes up on update), references must name
    entities it has (by id for owners/assets/lineage, by FQN for services, schemas,
    domains, classifications) or the PUT is refused with 404, as a real server does;
    ``GET .../name/<fqn>`` finds an entity; lineage is stored per entity pair. Every call
    needs ``Authorization: Bearer <token>``. ``reject`` names FQNs it answers with 400.
    """

    VERSION = "1.13.1"
    COLLECTIONS: ClassVar[dict[str, str]] = {
        "classifications": "classification", "tags": "tag", "teams": "team",
        "domains": "domain", "dataProducts": "dataProduct",
        "services/messagingServices": "messagingService",
        "services/databaseServices": "databaseService", "databases": "database",
        "databaseSchemas": "databaseSchema", "topics": "topic", "tables": "table",
    }  # fmt: skip

    def __init__(self, token: str) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.token = token
        self.entities: dict[tuple[str, str], dict[str, Any]] = {}
        self.by_id: dict[str, dict[str, Any]] = {}
        self.lineage: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.reject: set[str] = set()
        self._lock = threading.Lock()
        self._seed()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> OpenMetadataTestServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ store
    def _seed(self) -> None:
        """What every OpenMetadata server ships with: the PII classification."""
        self._store("classification", "PII", {"name": "PII", "description": "PII tags"})
        for tag in ("Sensitive", "NonSensitive", "None"):
            self._store(
                "tag", f"PII.{tag}",
                {"name": tag, "description": tag,
                 "classification": self._ref("classification", "PII")},
            )  # fmt: skip

    def _store(self, kind: str, fqn: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        import time as _time
        import uuid as _uuid

        old = self.entities.get((kind, fqn))
        entity = {
            **body,
            "id": old["id"] if old else str(_uuid.uuid4()),
            "fullyQualifiedName": fqn,
            "version": round(old["version"] + 0.1, 1) if old else 0.1,
            "updatedAt": int(_time.time() * 1000),
            "updatedBy": "ingestion-bot",
        }
        if kind not in {"domain", "dataProduct"}:  # entities without soft deletion
            entity["deleted"] = False
        self.entities[(kind, fqn)] = entity
        self.by_id[entity["id"]] = entity
        return entity, old is None

    def _ref(self, kind: str, fqn: str) -> dict[str, Any]:
        entity = self.entities.get((kind, fqn))
        if entity is None:
            raise LookupError(f"{kind} instance for {fqn} not found")
        return {"id": entity["id"], "type": kind, "fullyQualifiedName": fqn, "name": entity["name"]}

    def _check_refs(self, value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                self._check_refs(item)
        elif isinstance(value, dict):
            if {"id", "type"} <= value.keys() and value["id"] not in self.by_id:
                raise LookupError(f"{value['type']} instance for {value['id']} not found")
            for item in value.values():
                self._check_refs(item)

    def get(self, kind: str, fqn: str) -> dict[str, Any] | None:
        """The stored entity, or None."""
        return self.entities.get((kind, fqn))

    def put(self, collection: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create or update (what ``PUT /api/v1/<collection>`` does)."""
        kind = self.COLLECTIONS[collection]
        self._check_refs(body)
        name = body["name"]
        quoted = f'"{name}"' if "." in name else name
        out = dict(body)
        if kind == "tag":
            fqn = f"{body['classification']}.{quoted}"
            out["classification"] = self._ref("classification", body["classification"])
        elif kind == "database":
            fqn = f"{body['service']}.{quoted}"
            out["service"] = self._ref("databaseService", body["service"])
        elif kind == "databaseSchema":
            fqn = f"{body['database']}.{quoted}"
            database = self.entities.get(("database", body["database"]))
            out["database"] = self._ref("database", body["database"])
            out["service"] = database["service"] if database else None
        elif kind == "topic":
            fqn = f"{body['service']}.{quoted}"
            out["service"] = self._ref("messagingService", body["service"])
        elif kind == "table":
            fqn = f"{body['databaseSchema']}.{quoted}"
            schema = self.entities[("databaseSchema", body["databaseSchema"])]
            out["databaseSchema"] = self._ref("databaseSchema", body["databaseSchema"])
            out["database"], out["service"] = schema["database"], schema["service"]
            out["columns"] = [
                {**c, "fullyQualifiedName": f"{fqn}.{c['name']}"} for c in body["columns"]
            ]
        else:
            fqn = quoted
        if "domains" in body:
            out["domains"] = [self._ref("domain", d) for d in body["domains"]]
        if kind == "dataProduct":
            out.pop("assets", None)  # kept as relationships, not in the entity document
        for column in out.get("columns", []) + (out.get("messageSchema") or {}).get(
            "schemaFields", []
        ):
            for label in column.get("tags", []):
                classification, _, tag = label["tagFQN"].partition(".")
                self._ref("tag", f"{classification}.{tag}")
        if fqn in self.reject:
            raise ValueError(f"entity {fqn} rejected by the server's rules")
        return self._store(kind, fqn, out)

    # ------------------------------------------------------------------ HTTP
    def _handler(self) -> Any:
        import json as _json
        from http.server import BaseHTTPRequestHandler
        from urllib.parse import unquote, urlsplit

        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                return

            def _send(self, status: int, body: Any) -> None:
                data = _json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {server.token}":
                    return True
                self._send(401, {"code": 401, "message": "Not Authorized! Invalid token"})
                return False

            def do_GET(self) -> None:
                path = urlsplit(self.path).path.removeprefix("/api/v1/")
                server.requests.append(("GET", path))
                if not self._authorised():
                    return
                if path == "system/version":
                    self._send(200, {"version": server.VERSION, "revision": "test"})
                    return
                if path.startswith("lineage/"):
                    _, entity_type, entity_id = path.split("/", 2)
                    edges = [e for (a, _b), e in server.lineage.items() if a == entity_id]
                    ref = server.by_id.get(entity_id, {})
                    self._send(
                        200,
                        {"entity": {"id": entity_id, "type": entity_type, "name": ref.get("name")},
                         "nodes": [], "upstreamEdges": [], "downstreamEdges": edges},
                    )  # fmt: skip
                    return
                collection, _, fqn = path.partition("/name/")
                kind = server.COLLECTIONS.get(collection)
                entity = server.get(kind, unquote(fqn)) if kind else None
                if entity is None:
                    self._send(
                        404, {"code": 404, "message": f"{kind} instance for {fqn} not found"}
                    )
                else:
                    self._send(200, entity)

            def do_PUT(self) -> None:
                path = urlsplit(self.path).path.removeprefix("/api/v1/")
                server.requests.append(("PUT", path))
                if not self._authorised():
                    return
                body = _json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    try:
                        if path == "lineage":
                            edge = body["edge"]
                            server._check_refs(edge)
                            key = (edge["fromEntity"]["id"], edge["toEntity"]["id"])
                            server.lineage[key] = {
                                "fromEntity": key[0], "toEntity": key[1],
                                "lineageDetails": edge.get("lineageDetails"),
                            }  # fmt: skip
                            self._send(200, {})
                            return
                        entity, created = server.put(path, body)
                    except LookupError as exc:
                        self._send(404, {"code": 404, "message": str(exc)})
                        return
                    except (ValueError, KeyError) as exc:
                        self._send(400, {"code": 400, "message": str(exc)})
                        return
                self._send(201 if created else 200, entity)

        return Handler


class RecordingSender:
    """Stands in for ``streams.batch_send.BatchSender``: keeps every output it is given
    (delivered at once), so the records a loop dead-letters can be counted without a broker."""

    def __init__(self) -> None:
        self.outputs: list[Any] = []

    async def start(self) -> None:
        """Nothing to start."""

    async def deliver(self, outputs: list[Any]) -> list[Any]:
        """Keep ``outputs`` as delivered; none is refused."""
        self.outputs.extend(outputs)
        return []

    async def submit(self, outputs: list[Any]) -> list[tuple[list[Any], Any]]:
        """Keep ``outputs``; each group's acknowledgement is already done."""
        import asyncio

        self.outputs.extend(outputs)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [(list(outputs), done)]

    def to(self, topic: str) -> list[Any]:
        """The outputs sent to ``topic``."""
        return [o for o in self.outputs if o.topic == topic]
