"""Test doubles (used only in tests, never as product defaults)."""

from __future__ import annotations

from typing import Any


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
        """Rows for ``window_starts`` (already summed over partitions); unknown ones None."""
        return [
            {"window_start": w, **self.rows[w]}
            if w in self.rows
            else {
                "window_start": w,
                "distinct_subjects": self.windows.get(w),
                "events": None,
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
