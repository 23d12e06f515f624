"""Request ids and the JSON access log: the outermost of our middlewares, so every answer has both.

The log line holds the request id, method, path, status, latency, model and key *name*; never
headers, query strings, prompts, completions or keys.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine_adapters.base import Forwarded
from engine_adapters.client_socket import client_socket
from gateway.errors import GatewayError
from gateway.middleware.context import RequestInfo, attach, header, send_error
from gateway.observability.logging import FIELDS_ATTR

access_log = logging.getLogger("tokenyard.access")
log = logging.getLogger(__name__)

# A client's id is echoed only when it is short and plain, so it cannot smuggle anything into logs.
_ACCEPTED_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# W3C trace context: passed on to the engine only in its exact shape (version 00; no all-zero ids).
_TRACEPARENT = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(rb"[\x20-\x7e]{1,512}")  # printable ASCII, bounded: list members, as given
_SECONDS = re.compile(rb"[0-9]{1,9}(\.[0-9]{1,9})?")  # "600.0", as the SDKs write a timeout


def request_id_from(scope: Scope) -> str:
    given = header(scope, b"x-request-id")
    if given is not None and _ACCEPTED_ID.fullmatch(given):
        return given.decode()
    return os.urandom(16).hex()


def read_timeout_from(scope: Scope) -> float | None:
    """The client's read timeout in seconds, from x-stainless-read-timeout when it is a positive number."""
    raw = header(scope, b"x-stainless-read-timeout")
    if raw is None or not _SECONDS.fullmatch(raw):
        return None
    seconds = float(raw)
    return seconds if seconds > 0 else None


def forwarded_from(scope: Scope, request_id: str) -> Forwarded:
    """What the engine is told about the request: the id the log shows, and the client's trace context
    when it is well formed (a tracestate only beside a traceparent). Nothing else of the client's, but its
    read timeout, which the router keeps for itself."""
    read_timeout_s = read_timeout_from(scope)
    traceparent = header(scope, b"traceparent")
    if traceparent is None or not _TRACEPARENT.fullmatch(traceparent):
        return Forwarded(request_id, read_timeout_s=read_timeout_s)
    tracestate = header(scope, b"tracestate")
    if tracestate is not None and not _TRACESTATE.fullmatch(tracestate):
        tracestate = None
    return Forwarded(
        request_id, traceparent.decode(), tracestate.decode() if tracestate else None, read_timeout_s=read_timeout_s
    )


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        info = RequestInfo(request_id=request_id, forwarded=forwarded_from(scope, request_id))
        attach(scope, info)
        id_header = (b"x-request-id", info.request_id.encode())
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if status:  # the answer has begun: nothing left to send but a broken connection
                raise
            # Answered here rather than by Starlette's outer error middleware, so the 500 has its id too.
            log.error("unexpected error", exc_info=exc, extra={FIELDS_ATTR: {"request_id": info.request_id}})
            await send_error(send_with_id, exc if isinstance(exc, GatewayError) else GatewayError())
        finally:
            _log_access(scope, info, status)


def user_id(body: Any) -> str | None:
    """OpenAI's `user` (the client's id for its end user) as a digest: one user's requests can be grouped
    in the logs, while the value itself (often an e-mail address) is never written."""
    user = body.get("user") if isinstance(body, dict) else None
    if not isinstance(user, str) or not user:
        return None
    return "u-" + hashlib.sha256(user.encode()).hexdigest()[:16]


def _log_access(scope: Scope, info: RequestInfo, status: int) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    fields = {
        "request_id": info.request_id,
        "method": scope["method"],
        "path": scope["path"],
        "status": status or _unanswered(scope),
        "latency_ms": round((time.perf_counter() - info.started) * 1000, 3),
        "model": info.model,
        "key": info.key_name,
        "user": user_id(info.body),
        "client": client[0] if client else None,
    }
    access_log.info("request", extra={FIELDS_ATTR: fields})


def _unanswered(scope: Scope) -> int:
    """The status of a request the app never answered: 400 when the server refused the rest of it (the
    body could not be parsed, and uvicorn answered), else 499, the client left first."""
    connection = client_socket(scope)
    return 400 if connection is not None and connection.refused else 499
