"""The problem documents each operation can answer, for the OpenAPI document.

Every error the app produces is an RFC 9457 ``application/problem+json`` body with a stable
``code`` (``errors.py``); each operation lists the statuses it can answer with this schema,
so clients and schemathesis check them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROBLEM = "application/problem+json"


class Problem(BaseModel):
    """An RFC 9457 problem document (further members depend on the code)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="https://privmesh.dev/problems/<code>")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: str = Field(description="Stable machine-readable error code.")


_MEANING = {
    400: "Malformed request (e.g. a path with '.' or '..' segments): invalid_path, http_error",
    401: "Missing or unknown API key: unauthorized",
    403: "The key's role or domains do not allow this: forbidden",
    404: "Unknown query class or path, or no data for the window: unknown_query_class, "
    "no_data_for_window, http_error",
    405: "Method not allowed (the Allow header lists the allowed ones): http_error",
    409: "A continual class's parameters changed inside a paid horizon: horizon_parameters_changed",
    422: "Invalid parameters, a governance policy limit, or a mechanism without a finite "
    "accuracy: invalid_parameters, policy_limit_exceeded, mechanism_not_finite",
    429: "Privacy budget exhausted for the period (Retry-After): budget_exhausted",
    500: "Unexpected failure, details only in the log: internal_error",
    503: "No closed window yet (Retry-After): no_data_yet",
}
_SCHEMA = Problem.model_json_schema()


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``statuses`` (plus 500), each a problem+json document."""
    return {
        status: {"description": _MEANING[status], "content": {PROBLEM: {"schema": _SCHEMA}}}
        for status in sorted({*statuses, 500})
    }
