"""Errors of federated training; each has a stable machine-readable ``code``."""

from __future__ import annotations


class FederationError(Exception):
    """Base class; ``code`` never changes meaning."""

    code = "federation_error"


class InvalidTrainingData(FederationError):
    """A domain's training data cannot be used (empty, NaN, wrong shape or labels)."""

    code = "invalid_training_data"


class NoTrainingData(InvalidTrainingData):
    """A domain has no rows for the task (no offline history, or none in its time range)."""

    code = "no_training_data"


class SchemaMismatch(InvalidTrainingData):
    """A domain's data product lacks a field the task needs, or has it with another type."""

    code = "schema_mismatch"


class InvalidModelConfig(FederationError):
    """A model or training parameter is out of range (said which, and the range)."""

    code = "invalid_model_config"


class InvalidTask(FederationError):
    """A task declaration is inconsistent with itself or with the domains' contracts."""

    code = "invalid_task"


class UnknownTask(FederationError):
    """No task of that name is declared."""

    code = "unknown_task"


class InvalidSecAggConfig(FederationError):
    """Secure-aggregation parameters that cannot work (thresholds, ranges, sizes)."""

    code = "invalid_secagg_config"


class IncompatibleWithSecAgg(FederationError):
    """A combination that needs to see individual updates, refused under SecAgg+."""

    code = "incompatible_with_secagg"


class QuantisationRangeExceeded(FederationError):
    """An update element is beyond the bound secure aggregation can carry unclipped."""

    code = "quantisation_range_exceeded"


class SecAggProtocolError(FederationError):
    """A SecAgg+ message out of order, for another node, or failing a check."""

    code = "secagg_protocol_error"


class NotEnoughParticipants(FederationError):
    """Fewer live domains than the run's minimum (or the SecAgg+ threshold) needs."""

    code = "not_enough_participants"


class InvalidDPConfig(FederationError):
    """Differential-privacy parameters out of range or in an unusable combination."""

    code = "invalid_dp_config"


class NoiseDrownsSignal(InvalidDPConfig):
    """The DP noise would leave the trained model useless (``--force`` overrides)."""

    code = "dp_noise_drowns_signal"


class UnknownModelVersion(FederationError):
    """The model registry holds no version of that name."""

    code = "unknown_model_version"


class EngineError(FederationError):
    """The Flower deployment engine (SuperLink, SuperNodes, ``flwr run``) failed."""

    code = "engine_error"


class ModelRegression(FederationError):
    """A version would serve a domain worse than the one it serves now."""

    code = "model_regression"


class InvalidServingChange(FederationError):
    """A promotion or rollback that cannot apply (no domain data, nothing to roll back to)."""

    code = "invalid_serving_change"


class InvalidAuditConfig(FederationError):
    """A membership-inference audit cannot run as asked (e.g. one shadow model)."""

    code = "invalid_audit_config"
