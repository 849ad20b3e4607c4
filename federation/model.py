"""The model, local training and evaluation of one domain (no Flower in here).

Models are binary classifiers over a domain's numeric features: ``logistic_regression``
(one linear layer) or ``mlp`` (one hidden ReLU layer). Weights travel as a list of
float32 numpy arrays in ``state_dict`` order, which is what Flower's ``ArrayRecord`` and
the secure aggregation carry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from federation.errors import InvalidModelConfig, InvalidTrainingData
from federation.task_specs import ModelKind


@dataclass(frozen=True)
class TrainConfig:
    """Local training of one round: ``epochs`` passes of minibatch SGD with momentum."""

    epochs: int = 1
    learning_rate: float = 0.05
    batch_size: int = 256
    seed: int = 0
    max_steps: int = 0
    """Stop after this many minibatch steps in all (0: run every epoch to its end)."""

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 1_000:
            raise InvalidModelConfig(f"epochs must be 1..1000, got {self.epochs}")
        if not 0 < self.learning_rate <= 10:
            raise InvalidModelConfig(f"learning_rate must be in (0, 10], got {self.learning_rate}")
        if not 1 <= self.batch_size <= 1_000_000:
            raise InvalidModelConfig(f"batch_size must be 1..1e6, got {self.batch_size}")
        if self.max_steps < 0:
            raise InvalidModelConfig(f"max_steps must be >= 0, got {self.max_steps}")


def build_model(kind: ModelKind, features: int, hidden: int | Sequence[int] = 32) -> nn.Module:
    """A fresh classifier over ``features`` inputs producing one logit.

    ``hidden`` gives the MLP's hidden layer widths (one int: one layer), each followed by
    a ReLU; logistic regression ignores it.
    """
    if features < 1:
        raise InvalidModelConfig(f"a model needs at least one feature, got {features}")
    if kind == "logistic_regression":
        return nn.Linear(features, 1)
    if kind == "mlp":
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        if not widths or min(widths) < 1:
            raise InvalidModelConfig(f"hidden layer widths must be >= 1, got {hidden}")
        layers: list[nn.Module] = []
        inputs = features
        for width in widths:
            layers += [nn.Linear(inputs, width), nn.ReLU()]
            inputs = width
        return nn.Sequential(*layers, nn.Linear(inputs, 1))
    raise InvalidModelConfig(f"unknown model kind {kind!r}; use logistic_regression or mlp")


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def get_weights(model: nn.Module) -> list[NDArray[np.float32]]:
    """The model's parameters as float32 arrays, in ``state_dict`` order."""
    return [
        t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()
    ]


def set_weights(model: nn.Module, weights: list[NDArray[np.float32]]) -> None:
    """Load ``weights`` (as from :func:`get_weights`); refuses a shape mismatch."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise InvalidModelConfig(f"expected {len(state)} arrays, got {len(weights)}")
    loaded = {}
    for (name, current), array in zip(state.items(), weights, strict=True):
        if tuple(array.shape) != tuple(current.shape):
            raise InvalidModelConfig(
                f"weight {name!r} has shape {tuple(array.shape)}, the model {tuple(current.shape)}"
            )
        loaded[name] = torch.as_tensor(np.asarray(array, dtype=np.float32))
    model.load_state_dict(loaded)


def check_data(x: NDArray[np.floating], y: NDArray[np.integer], features: int) -> None:
    """Refuse data a domain cannot train on, saying what is wrong."""
    if x.ndim != 2 or x.shape[1] != features:
        raise InvalidTrainingData(
            f"features have shape {x.shape}; the task expects (rows, {features})"
        )
    if len(x) == 0:
        raise InvalidTrainingData("the domain has no training rows")
    if len(y) != len(x):
        raise InvalidTrainingData(f"{len(x)} feature rows but {len(y)} labels")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise InvalidTrainingData(f"{bad} rows hold NaN or infinite features")
    if not np.isin(y, (0, 1)).all():
        raise InvalidTrainingData("labels must be 0 or 1")


def train(
    model: nn.Module, x: NDArray[np.floating], y: NDArray[np.integer], config: TrainConfig
) -> float:
    """Train ``model`` in place on (x, y); returns the mean loss of the last epoch."""
    features = next(iter(model.parameters())).shape[1]
    check_data(x, y, features)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = torch.as_tensor(x, dtype=torch.float32)
    labels = torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=0.9)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    last = 0.0
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(inputs[batch]), labels[batch])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
            steps += 1
            if config.max_steps and steps >= config.max_steps:
                return total / seen
        last = total / seen
    return last


@dataclass(frozen=True)
class Evaluation:
    """Loss, AUC and example count of a model on one domain's data."""

    loss: float
    auc: float
    examples: int


def _scored(
    model: nn.Module, x: NDArray[np.floating], y: NDArray[np.integer]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits on ``x`` and ``y`` as float labels (inputs checked first)."""
    features = next(iter(model.parameters())).shape[1]
    check_data(x, y, features)
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.float32)).reshape(-1)
    return logits, torch.as_tensor(y, dtype=torch.float32)


def evaluate(model: nn.Module, x: NDArray[np.floating], y: NDArray[np.integer]) -> Evaluation:
    """Binary cross-entropy and ROC AUC of ``model`` on (x, y)."""
    logits, labels = _scored(model, x, y)
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits, labels))
    return Evaluation(loss, roc_auc(np.asarray(y), logits.numpy()), len(y))


def row_losses(
    model: nn.Module, x: NDArray[np.floating], y: NDArray[np.integer]
) -> NDArray[np.float64]:
    """Binary cross-entropy of ``model`` on each row of (x, y)."""
    logits, labels = _scored(model, x, y)
    losses = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return losses.numpy().astype(np.float64)


def true_class_logits(
    model: nn.Module, x: NDArray[np.floating], y: NDArray[np.integer]
) -> NDArray[np.float64]:
    """The log-odds ``model`` gives each row's own label (the logit for label 1, its
    negation for 0); a row's loss is ``softplus(-value)``."""
    logits, labels = _scored(model, x, y)
    signed = torch.where(labels > 0.5, logits, -logits)
    return signed.numpy().astype(np.float64)


def roc_auc(y: NDArray[np.integer], scores: NDArray[np.floating]) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties count one half); NaN with one class."""
    y = np.asarray(y)
    positives = int((y == 1).sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    rank_sum = ranks[y == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def flatten(arrays: Sequence[NDArray[np.floating]]) -> NDArray[np.float64]:
    """The arrays as one float64 vector (the order and shapes are the model's)."""
    if not arrays:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(
    vector: NDArray[np.floating], shapes: Sequence[tuple[int, ...]]
) -> list[NDArray[np.float32]]:
    """Split ``vector`` back into float32 arrays of ``shapes``."""
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != len(vector):
        raise InvalidModelConfig(
            f"a weight vector of {len(vector)} elements does not fill shapes totalling {sum(sizes)}"
        )
    out: list[NDArray[np.float32]] = []
    start = 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(np.asarray(vector[start : start + size], dtype=np.float32).reshape(shape))
        start += size
    return out
