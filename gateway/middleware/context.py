"""What the front door's middlewares share: the per-request record, the open paths, the error answer."""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Scope, Send

from engine_adapters.base import NOTHING_FORWARDED, Forwarded
from gateway.errors import GatewayError, error_payload, retry_after
from gateway.limit_store import KeyLimits
from gateway.scopes import KeyScope

# Liveness and readiness answer without a key, while draining and past every limit: probes must work.
PROBE_PATHS = frozenset({"/health", "/ready"})
METRICS_PATH = "/metrics"
USAGE_PATH = "/v1/usage"  # a key's own usage: needs that key, and is neither limited nor charged
ADMIN_USAGE_PATH = "/admin/usage"  # every key's usage: needs the admin key instead of a client key
# Runtime LoRA loading (engine mode, opt-in): the admin key too, where keys are set (gateway.api.lora).
LORA_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
_SCOPE_KEY = "tokenyard.request"
FILES_PATH = "/v1/files"  # an upload, streamed into the store: not read by the body middleware
BATCH_API_PREFIXES = ("/v1/files", "/v1/batches")  # the Batch API's own routes: they generate nothing

# The path being served, for send_error to write the error body its client reads (OpenAI's or
# Anthropic's). Set by attach(), which the outermost middleware calls; each request runs in its own task.
_ERROR_PATH: ContextVar[str] = ContextVar("tokenyard_error_path", default="")

Headers = list[tuple[bytes, bytes]]


@dataclass
class RequestInfo:
    """Filled in as the request passes the middlewares; the access log writes it out."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    key_name: str | None = None
    key_limits: KeyLimits | None = None  # the key's own limits and budgets
    key_digest: bytes | None = None  # the key's SHA-256: what owns the responses it stores
    key_scope: KeyScope | None = None  # what the key may use (gateway.scopes); None: no keys configured
    model: str | None = None
    body: Any = None  # the parsed JSON body of a POST (a multipart body's first text fields)
    forwarded: Forwarded = NOTHING_FORWARDED  # what the engine is told: the request id, the trace context
    upload: Any = None  # a multipart body still streaming in: a gateway.middleware.body.Upload


def attach(scope: Scope, info: RequestInfo) -> None:
    scope[_SCOPE_KEY] = info
    _ERROR_PATH.set(scope.get("path", ""))


def request_info(scope: Scope) -> RequestInfo:
    """The request's record; a fresh one when the request-id middleware is not installed (unit tests)."""
    info = scope.get(_SCOPE_KEY)
    if info is None:
        info = RequestInfo(request_id="")
        scope[_SCOPE_KEY] = info
    assert isinstance(info, RequestInfo)
    return info


def is_service_path(scope: Scope) -> bool:
    """HTTP requests other than the probes and /metrics: what keys, limits and the drain apply to."""
    return scope["type"] == "http" and scope["path"] not in PROBE_PATHS and scope["path"] != METRICS_PATH


def generates_nothing(path: str) -> bool:
    """The Batch API's routes: a body there (a batch's create) asks for no tokens, so none are charged for it."""
    return path.startswith(BATCH_API_PREFIXES)


def model_of(scope: Scope, body: Any) -> str | None:
    """The model a request names: the path's in OpenAI's old /v1/engines/{model}/..., else the body's."""
    parts: list[str] = scope["path"].split("/")
    if len(parts) == 5 and parts[1:3] == ["v1", "engines"]:
        return parts[3]
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


async def send_error(
    send: Send, exc: GatewayError, headers: Iterable[tuple[bytes, bytes]] = (), close: bool = False
) -> None:
    """Answer with `exc` as an error body, through the one mapping in gateway.errors."""
    status, body = error_payload(exc, _ERROR_PATH.get())
    raw = orjson.dumps(body)
    extra = list(headers)
    if status in (429, 503) and not any(name == b"retry-after" for name, _ in extra):
        extra.append((b"retry-after", retry_after(exc).encode()))
    if close:  # the rest of the request may still be on the wire: do not read it as a next request
        extra.append((b"connection", b"close"))
    start: Headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start + extra})
    await send({"type": "http.response.body", "body": raw, "more_body": False})
