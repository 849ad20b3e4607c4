"""Errors of federated training; each has a stable machine-readable ``code``."""

from __future__ import annotations


class FederationError(Exception):
    """Base class; ``code`` never changes meaning."""

    code = "federation_error"


class InvalidTrainingData(FederationError):
    """A domain's training data cannot be used (empty, NaN, wrong shape or labels)."""

    code = "invalid_training_data"


class InvalidModelConfig(FederationError):
    """A model or training parameter is out of range (said which, and the range)."""

    code = "invalid_model_config"
