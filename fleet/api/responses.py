"""The error answers every API route may give, for the OpenAPI document.

Every error is ``{"error": "one line"}`` (see ``create_app``'s handlers); documenting them lets a
client (and the schemathesis test) hold the API to its schema for errors too, not only successes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    error: str


_WHY = {
    400: "the request is malformed",
    401: "no token, or one that is malformed, unknown, revoked or expired",
    403: "the token's role may not do this",
    404: "no such resource",
    408: "the request body stalled",
    409: "conflicts with the current state",
    413: "the request body is over the limit",
    422: "the request is well-formed but invalid",
    429: "too many attempts; wait and retry",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why} for status, why in _WHY.items()
}
