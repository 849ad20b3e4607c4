"""Server-Sent Events: each class's new release pushed as its window closes.

One stream serves several classes. For every class, the stream asks for the newest
window closed since its last push; the ledger makes that release once however many
clients listen (the first spends, the others reuse it). A problem (budget exhausted,
no data) is pushed once per window as an ``event: problem`` with the problem document.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from dashboards_api.deps import ServiceDep, require
from dashboards_api.errors import (
    ApiError,
    BudgetExhausted,
    InternalError,
    WindowNotFound,
    problem_body,
)
from dashboards_api.query_classes import QueryClass
from dashboards_api.releases import ReleaseService
from dashboards_api.routes.problems import problems
from dashboards_api.settings import ApiSettings

router = APIRouter(prefix="/v1/live", tags=["live"])
log = logging.getLogger(__name__)


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    """One event in the SSE wire format."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class LiveStream:
    """The per-connection state: the window each class was last pushed for."""

    def __init__(self, service: ReleaseService, classes: list[QueryClass]) -> None:
        self.service = service
        self.classes = classes
        self.done: dict[str, int] = {}
        self.told: dict[str, tuple[str, int]] = {}

    async def poll(self) -> list[str]:
        """Events for every class whose newest closed window was not pushed yet."""
        events = []
        for qc in self.classes:
            due = self.service.due(qc)
            if self.done.get(qc.id) == due:
                continue
            first = qc.id not in self.done and qc.id not in self.told
            try:
                # The first push of a connection falls back to the newest released window.
                window = None if first else due
                body = await run_in_threadpool(self.service.release, qc.id, window)
            except WindowNotFound:
                continue  # not every partition reported it yet: retry next poll
            except ApiError as exc:
                if self.told.get(qc.id) != (exc.code, due):
                    self.told[qc.id] = (exc.code, due)
                    events.append(sse("problem", {**problem_body(exc), "class_id": qc.id}))
                if isinstance(exc, BudgetExhausted):
                    self.done[qc.id] = due
                continue
            except Exception:
                # One class failing must not end the stream for the others.
                log.exception("live release of %s failed", qc.id)
                self.done[qc.id] = due
                events.append(sse("problem", {**problem_body(InternalError()), "class_id": qc.id}))
                continue
            self.done[qc.id] = due
            self.told.pop(qc.id, None)
            events.append(sse("release", body, body.get("data_version")))
        return events


@router.get(
    "",
    dependencies=[require("consumer", "domain_owner", "governance")],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **problems(401, 403, 404, 422)},
)
async def live(
    request: Request,
    service: ServiceDep,
    classes: str | None = Query(
        None,
        max_length=4000,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(,[A-Za-z0-9][A-Za-z0-9_.\-]*)*$",
        description="Comma-separated class ids (default: every class).",
    ),
) -> StreamingResponse:
    """A text/event-stream of ``release`` and ``problem`` events for the chosen classes."""
    wanted = classes.split(",") if classes else list(service.classes)
    chosen = [service.query_class(c) for c in dict.fromkeys(wanted)]  # 404 before streaming
    settings: ApiSettings = request.app.state.settings
    stream = LiveStream(service, chosen)

    async def events() -> AsyncIterator[str]:
        yield "retry: 3000\n\n"
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            batch = await stream.poll()
            for event in batch:
                yield event
            now = time.monotonic()
            if batch:
                quiet_since = now
            elif now - quiet_since >= settings.live_keepalive_seconds:
                quiet_since = now
                yield ": keepalive\n\n"
            await asyncio.sleep(settings.live_poll_seconds)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
