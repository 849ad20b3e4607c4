"""Errors of the launcher and CLI; each has a stable ``code`` and a fix in its message."""


class InfraError(Exception):
    """Base class: expected operational failures, shown as one line without a traceback."""

    code = "infra_error"


class PortInUse(InfraError):
    """A port the stack needs is already bound."""

    code = "port_in_use"


class BrokerBinaryMissing(InfraError):
    """The embedded Tansu broker binary cannot be found."""

    code = "broker_binary_missing"


class ComponentFailed(InfraError):
    """A component did not become healthy in time."""

    code = "component_failed"


class StackNotRunning(InfraError):
    """``privmesh down``/``status`` found no running stack."""

    code = "stack_not_running"


class StackAlreadyRunning(InfraError):
    """``privmesh up`` found a stack already running from the same data directory."""

    code = "stack_already_running"


class JournalError(InfraError):
    """The embedded broker's journal could not be replayed or written."""

    code = "journal_error"


class GateProtocolError(InfraError):
    """A connection to the embedded broker's public port sent bytes that are not Kafka
    frames (the gate closes that connection only)."""

    code = "gate_protocol_error"


class InvalidDeployValue(InfraError):
    """``privmesh deploy render`` was given a value (an option, a domain or file name) that
    cannot become the Kubernetes object or field it names."""

    code = "invalid_deploy_value"


class InvalidCliValue(InfraError):
    """A command-line value (a subject, a tag, an entity id, ...) that no command could
    use; refused before anything slow is imported, with the accepted values."""

    code = "invalid_cli_value"
