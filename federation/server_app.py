"""The Flower ServerApp: one federated training job on the SuperLink's host.

``Coordinator`` (``federation.coordinator``) does the work; this module only wires it
to Flower and registers the trained model.
"""

from __future__ import annotations

from logging import ERROR, INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from federation.coordinator import Coordinator, emit
from federation.errors import FederationError
from federation.model import unflatten

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train the run's task and register the model it produced."""
    from federation.engine.tuning import tune
    from federation.registry import open_registry
    from federation.settings import get_federation_settings

    settings = get_federation_settings()
    tune(settings.poll_seconds)
    try:
        coordinator = Coordinator(grid, context, settings.poll_seconds)
        lineage = coordinator.run()
    except FederationError as exc:
        emit("failed", code=exc.code, reason=str(exc))
        log(ERROR, "privmesh: training failed: %s [%s]", exc, exc.code)
        raise
    weights = unflatten(coordinator.weights, coordinator.shapes)
    status = "completed" if lineage["rounds"]["completed"] else "no_round_completed"
    version = open_registry().register(coordinator.task.name, weights, lineage, status)
    emit("registered", version=version, status=status, metrics=lineage["metrics"]["global"])
    log(INFO, "privmesh: registered model %s", version)
