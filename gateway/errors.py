"""The one place an error becomes a body: OpenAI's, or Anthropic's on its paths; as JSON or as an SSE event.

The error tree itself lives in engine_adapters.errors (the adapters raise it too) and is named here as well,
so the gateway imports its errors from this one module. On Anthropic's paths (/v1/messages…) the same
error is written {"type": "error", "error": {"type", "message"}} with Anthropic's error types; the status
is the same.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson

from engine_adapters.errors import (
    AuthenticationFailed,
    ContextLengthExceeded,
    EngineUnavailable,
    GatewayError,
    HeaderTooLarge,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    RequestTimeout,
    UnexpectedAnswer,
    status_error,
)

__all__ = [
    "GatewayError",
    "InvalidRequest",
    "ContextLengthExceeded",
    "AuthenticationFailed",
    "NotFound",
    "PermissionDenied",
    "ModelNotFound",
    "MethodNotAllowed",
    "RequestTimeout",
    "PayloadTooLarge",
    "RateLimited",
    "HeaderTooLarge",
    "QuotaExceeded",
    "UnexpectedAnswer",
    "EngineUnavailable",
    "status_error",
    "StoreUnavailable",
    "anthropic_path",
    "error_payload",
    "invalid_fields",
    "sse_error",
]

log = logging.getLogger(__name__)


class StoreUnavailable(GatewayError):
    """The response store cannot be reached: a request that must store is refused, never served unstored."""

    status = 503
    type = "service_unavailable_error"
    code = "store_unavailable"
    public_message = True


GENERIC_MESSAGE = "The server had an error while processing your request."


# Anthropic's error types by status (its SDK picks its exception class by the status alone).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_path(path: str) -> bool:
    """Paths whose clients speak Anthropic's Messages API, and so read Anthropic's error body."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def retry_after(exc: BaseException) -> str:
    """The Retry-After of a 429 or 503 answer, in whole seconds: the error's own, else 1."""
    seconds = exc.retry_after_s if isinstance(exc, GatewayError) else None
    return str(max(1, math.ceil(seconds))) if seconds else "1"


def error_payload(exc: BaseException, path: str = "") -> tuple[int, dict[str, Any]]:
    """Map any exception to (HTTP status, error body): OpenAI's, or Anthropic's on an Anthropic path."""
    if not isinstance(exc, GatewayError):
        exc = GatewayError()
    message = exc.message if exc.public_message else GENERIC_MESSAGE
    if anthropic_path(path):
        kind = _ANTHROPIC_TYPES.get(exc.status, "invalid_request_error" if exc.status < 500 else "api_error")
        return exc.status, {"type": "error", "error": {"type": kind, "message": message}}
    body = {"error": {"message": message, "type": exc.type, "param": exc.param, "code": exc.code}}
    return exc.status, body


def sse_error(exc: BaseException) -> bytes:
    """An error as the last SSE event of a stream that had begun (OpenAI's shape); one of ours is logged."""
    if not isinstance(exc, GatewayError):
        log.error("stream failed after it began", exc_info=exc)
    return b"data: " + orjson.dumps(error_payload(exc)[1]) + b"\n\n"


def invalid_fields(errors: list[Any]) -> InvalidRequest:
    """A 400 for failed validation (pydantic's list of errors), naming the first bad field as OpenAI's `param`."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.")
    where = _param(tuple(first.get("loc", ())))
    message = f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg", "invalid request"))
    return InvalidRequest(message, param=where)


def _param(loc: tuple[object, ...]) -> str | None:
    parts = [p for p in loc if p != "body"]
    if not parts or not isinstance(parts[0], str):
        return None
    name = str(parts[0])
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name
