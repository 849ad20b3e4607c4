"""API errors: each maps to one RFC 9457 problem response with a stable ``code``."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` the machine-readable type."""

    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


def problem_body(error: ApiError) -> dict[str, Any]:
    """The RFC 9457 problem document of ``error``."""
    return {
        "type": f"https://privmesh.dev/problems/{error.code}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        **error.extra,
    }


class InvalidPath(ApiError):
    """A request path that could alias another route ('.' or '..' segments)."""

    status = 400
    code = "invalid_path"
    title = "Invalid path"


class Unauthorized(ApiError):
    """Missing or unknown credentials."""

    status = 401
    code = "unauthorized"
    title = "Credentials required"


class Forbidden(ApiError):
    """Valid credentials without the role the endpoint needs."""

    status = 403
    code = "forbidden"
    title = "Role not allowed"


class UnknownQueryClass(ApiError):
    """The query class is not registered."""

    status = 404
    code = "unknown_query_class"
    title = "Unknown query class"


class InvalidParameters(ApiError):
    """A parameter is well-formed but not acceptable (e.g. a window not closed yet)."""

    status = 422
    code = "invalid_parameters"
    title = "Invalid parameters"


class WindowNotFound(ApiError):
    """The requested closed window has no complete aggregates (never or not yet pushed)."""

    status = 404
    code = "no_data_for_window"
    title = "No data for this window"


class HorizonChanged(ApiError):
    """A continual class's noise parameters changed inside a horizon already paid for."""

    status = 409
    code = "horizon_parameters_changed"
    title = "Continual release parameters changed"


class BudgetExhausted(ApiError):
    """The release would exceed the class's privacy budget for the period."""

    status = 429
    code = "budget_exhausted"
    title = "Privacy budget exhausted"


class NoDataYet(ApiError):
    """No closed window is available yet for the class (retry later)."""

    status = 503
    code = "no_data_yet"
    title = "No closed window yet"


class InternalError(ApiError):
    """An unexpected failure: the details go to the log, never into the response."""

    status = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self) -> None:
        super().__init__("the error was logged")


class HttpError(ApiError):
    """A protocol-level error the router raised (unknown path, method not allowed)."""

    code = "http_error"

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = detail


class InvalidQueryClasses(Exception):
    """A query-class file is invalid (raised at start-up, not per request)."""

    code = "invalid_query_classes"


class PolicyLimitExceeded(ApiError):
    """A class (or product total) is above a cap of the governance policy."""

    status = 422
    code = "policy_limit_exceeded"
    title = "Above the governance policy's limit"


class MechanismRefused(ApiError):
    """The class's mechanism would release with a scale whose accuracy is not finite."""

    status = 422
    code = "mechanism_not_finite"
    title = "Mechanism without a finite accuracy"


class MissingWindow(WindowNotFound):
    """A window inside a daily-hierarchy node's span has no complete aggregates, so the node
    cannot be drawn yet (``window_start``: the missing window's start, epoch seconds)."""

    status = 404
    code = "missing_window"
    title = "A window of the span is missing"


class ResolutionUnavailable(ApiError):
    """A daily class cannot release at this resolution now (e.g. ``24h`` with no structure
    for yesterday, ``1m`` on windows longer than a minute); ``resolution`` names it."""

    status = 422
    code = "resolution_unavailable"
    title = "Resolution not available"


class AccuracyUnreachable(ApiError):
    """A class declares an accuracy it cannot meet within its product's remaining daily
    budget; ``suggestion`` carries the planner's way to meet it."""

    status = 422
    code = "accuracy_unreachable"
    title = "Declared accuracy cannot be met"
