"""Flower 1.32's built-in waits, shortened for this engine's processes.

Measured on this machine (loopback, 2 SuperNodes, one small message per exchange), a
message exchange of Flower's stock deployment engine takes about 5.6 s. Nearly all of
it is waiting, not work:

* the SuperNode sleeps 3 s whenever a poll of the SuperLink finds no message, and
  0.5 s between checks for its ClientApp's reply;
* pulling a message's objects backs off 1 s, 2 s, 4 s ... when they are not there yet
  (they usually arrive a few milliseconds later);
* ``Grid.send_and_receive`` polls every 3 s (privmesh's ``Messenger`` polls itself);
* the SuperExec polls for ClientApp tasks every 1 s and starts a fresh process per
  message (privmesh's warm runner, ``federation.engine.runner``, replaces it).

:func:`tune` caps the first two in the calling process: sleeps of the SuperNode's
main loop are cut to ``poll_seconds`` and object pulls start backing off at 5 ms,
capped at 50 ms. Nothing else of Flower changes; the tuning is checked against the
pinned Flower version and refuses to guess on another one.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

from federation.errors import EngineError

FLOWER_VERSION = "1.32.1"
PULL_INITIAL_BACKOFF = 0.005
PULL_BACKOFF_CAP = 0.05


class _CappedClock(ModuleType):
    """Stands in for ``time`` in one Flower module: every ``sleep`` is capped."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self._cap = cap

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        """Sleep at most the cap."""
        time.sleep(min(seconds, self._cap))


def tune(poll_seconds: float, *, supernode: bool = False) -> None:
    """Shorten Flower's waits in this process (``supernode``: also its main loop)."""
    import flwr
    import flwr.supercore.inflatable.inflatable_utils as inflatable

    if flwr.__version__ != FLOWER_VERSION:
        raise EngineError(
            f"privmesh tunes Flower {FLOWER_VERSION}, found {flwr.__version__}; pin flwr or "
            "review federation/engine/tuning.py for the new version"
        )
    for function in (inflatable.pull_objects, inflatable.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__
        if defaults is None or "initial_backoff" not in defaults:
            raise EngineError(f"Flower's {function.__name__} has no backoff defaults to tune")
        defaults["initial_backoff"] = PULL_INITIAL_BACKOFF
        defaults["backoff_cap"] = PULL_BACKOFF_CAP
    if supernode:
        import flwr.supernode.start_client_internal as loop

        if not hasattr(loop, "time"):
            raise EngineError("Flower's SuperNode loop no longer uses the time module")
        loop.time = _CappedClock(poll_seconds)
