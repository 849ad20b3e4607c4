"""One exchange with the domains: push requests, collect replies, stop on a deadline.

Flower's ``Grid.send_and_receive`` polls every 3 s and waits for every reply (or a
fixed timeout). An exchange here polls every ``poll_seconds`` and ends as soon as every
required domain has answered, or on a straggler deadline: once ``quorum`` have answered,
``max(grace_seconds, grace_factor * elapsed)`` later; and once any has answered,
``max(grace_seconds, FIRST_REPLY_FACTOR * elapsed)`` later (so when too many died for a
quorum, the exchange still ends within seconds of the survivors' answers). A dead
domain is noticed within seconds instead of Flower's ~50 s heartbeat timeout. Optional
requests (a rejoining domain's key generation) are answered if they arrive in time
and never extend an exchange. Background requests (a late domain's census) are pushed
once and picked up by whichever later exchange sees their answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from federation import wire

FIRST_REPLY_FACTOR = 5.0
"""Wait at most this multiple of the first answer's time for the others (and at least
the grace): a slow domain five times slower than the fastest is given up on."""


@dataclass(frozen=True)
class Request:
    """What to ask one node: a Flower message type and the content."""

    message_type: str
    content: RecordDict


@dataclass
class Outcome:
    """Answers of one exchange by node, and why the others have none."""

    replies: dict[int, RecordDict] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    refusals: dict[int, str] = field(default_factory=dict)
    """Codes of the structured refusals among the failures."""
    domains: dict[int, str] = field(default_factory=dict)
    """The domain each refusing node named."""


class Messenger:
    """Exchanges with the SuperNodes of one run over Flower's Grid."""

    def __init__(
        self,
        grid: Grid,
        poll_seconds: float,
        grace_seconds: float,
        grace_factor: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grid = grid
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.grace_factor = grace_factor
        self.clock = clock
        self._background: dict[str, int] = {}
        self.background_replies: dict[int, Message] = {}

    def online(self) -> set[int]:
        """Node ids the SuperLink currently counts as connected."""
        return set(self.grid.get_node_ids())

    def _push(self, requests: Mapping[int, Request], group: str) -> dict[str, int]:
        nodes = list(requests)
        messages = [
            Message(
                requests[n].content,
                dst_node_id=n,
                message_type=requests[n].message_type,
                group_id=group,
            )
            for n in nodes
        ]
        ids = list(self.grid.push_messages(messages)) if messages else []
        return {mid: node for mid, node in zip(ids, nodes, strict=True) if mid}

    def push_background(self, requests: Mapping[int, Request], group: str) -> None:
        """Send requests whose answers any later exchange may collect."""
        self._background.update(self._push(requests, group))

    def exchange(
        self,
        required: Mapping[int, Request],
        *,
        quorum: int,
        timeout: float,
        group: str,
        optional: Mapping[int, Request] | None = None,
        grace_factor: float | None = None,
    ) -> tuple[Outcome, Outcome]:
        """Ask ``required`` (and ``optional``) nodes; the outcomes of both groups.

        ``grace_factor`` overrides the straggler factor for this exchange (the census,
        whose answers vary with each domain's data size, waits longer).
        """
        factor = self.grace_factor if grace_factor is None else grace_factor
        start = self.clock()
        must = self._push(required, group)
        may = self._push(optional or {}, group)
        pushed = set(must.values())
        main = Outcome(
            failures={n: "the SuperLink refused the message" for n in required if n not in pushed}
        )
        extra = Outcome()
        deadline = start + timeout
        quorum_seen = first_seen = False
        first = True
        while must or first:
            first = False
            pending = [*must, *may, *self._background]
            for reply in self.grid.pull_messages(pending) if pending else []:
                mid = reply.metadata.reply_to_message_id
                if mid in self._background:
                    self.background_replies[self._background.pop(mid)] = reply
                elif mid in must:
                    _record(main, must.pop(mid), reply)
                elif mid in may:
                    _record(extra, may.pop(mid), reply)
            if not must:
                break
            now = self.clock()
            answered = len(main.replies) + len(main.failures)
            if not first_seen and answered:
                first_seen = True
                patience = max(self.grace_seconds, max(factor, FIRST_REPLY_FACTOR) * (now - start))
                deadline = min(deadline, now + patience)
            if not quorum_seen and len(main.replies) >= quorum:
                quorum_seen = True
                grace = max(self.grace_seconds, factor * (now - start))
                deadline = min(deadline, now + grace)
            if now >= deadline:
                break
            time.sleep(self.poll_seconds)
        waited = self.clock() - start
        for node in must.values():
            main.failures[node] = f"no answer within {waited:.1f}s"
        for node in may.values():
            extra.failures[node] = f"no answer within {waited:.1f}s"
        main.seconds = extra.seconds = waited
        return main, extra


def _record(outcome: Outcome, node: int, reply: Message) -> None:
    if reply.has_error():
        outcome.failures[node] = f"ClientApp error {reply.error.code}: {reply.error.reason}"
        return
    refused = wire.error_of(reply.content)
    if refused is not None:
        code, message, domain = refused
        outcome.failures[node] = f"{message} [{code}]"
        outcome.refusals[node] = code
        outcome.domains[node] = domain
        return
    outcome.replies[node] = reply.content
