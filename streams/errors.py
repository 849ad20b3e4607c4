"""Errors of the stream layer; each has a stable machine-readable ``code``."""


class StreamError(Exception):
    """Base class of stream-layer errors."""

    code = "stream_error"


class KeyUnavailable(StreamError):
    """No pseudonymisation master key is configured where one is required."""

    code = "key_unavailable"


class BrokerUnavailable(StreamError):
    """The Kafka bootstrap servers cannot be reached."""

    code = "broker_unavailable"


class ConsentRefused(StreamError):
    """A consent record offered to ``privmesh consent`` is malformed; nothing was sent."""

    code = "consent_refused"
