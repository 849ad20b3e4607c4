"""The Flower ClientApp every domain's SuperNode runs (Message API).

All three message types go to :func:`federation.participant.handle`, which reads the
steps a message asks for (``federation.wire``). The app is framework-free apart from
Flower itself: model and training live in ``federation.model``.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from federation.participant import handle

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Key exchange, local training and unmasking steps of a round."""
    return handle(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The census: load and check this domain's data for the run's task."""
    return handle(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate a global model on this domain's held-out rows."""
    return handle(msg, context)
