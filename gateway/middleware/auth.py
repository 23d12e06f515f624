"""API keys at the front door: `Authorization: Bearer <key>` (or Anthropic's `x-api-key`) on every route but
the probes (and /metrics unless guarded), checked against gateway.keys.KeyStore."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import AuthenticationFailed, InvalidRequest
from gateway.keys import ACTING_KEY
from gateway.middleware.context import (
    LORA_PATHS,
    METRICS_PATH,
    PROBE_PATHS,
    header,
    request_info,
    send_error,
)
from gateway.protocol.paths import route_group
from gateway.state import AppState


def _authorizations(scope: Scope) -> int:
    return sum(1 for name, _ in scope["headers"] if name == b"authorization")


def bearer_token(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def presented_key(scope: Scope) -> str | None:
    """The key a client presents: `Authorization: Bearer`, else Anthropic's `x-api-key` header."""
    token = bearer_token(scope)
    if token is None and (value := header(scope, b"x-api-key")) is not None:
        token = value.decode("latin-1").strip() or None
    return token


class AuthMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.metrics = state.metrics
        self.guard_metrics = state.settings.auth.guard_metrics
        self.runtime_lora = state.settings.allow_runtime_lora_updating  # its routes check the admin key
        assert state.keys is not None, "create_app builds the key store"
        self.keys = state.keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PROBE_PATHS and _authorizations(scope) > 1:
            # Which one would count is ours to guess, and another hop may guess differently: refuse.
            await send_error(send, InvalidRequest("The request has more than one Authorization header."))
            return
        if not self._needs_key(scope):
            await self.app(scope, receive, send)
            return
        acting = scope.get(ACTING_KEY)
        if acting is not None:  # the batch runner, for a batch's owner: that key, while it is still configured
            entry = next((found for found in self.keys.entries() if found.name == acting), None)
            token: str | None = "acting"
        else:
            token = presented_key(scope)
            entry = self.keys.match(token) if token else None
        if entry is None or entry.scope.expired():
            self.metrics.rejected.labels("auth").inc()
            if entry is not None:
                message = "The API key provided has expired."
            else:
                message = "Incorrect API key provided." if token else "You didn't provide an API key."
            await send_error(send, AuthenticationFailed(message), [(b"www-authenticate", b"Bearer")])
            return
        info = request_info(scope)
        info.key_name = entry.name
        info.key_limits = entry.limits
        info.key_digest = entry.digest
        info.key_scope = entry.scope
        await self.app(scope, receive, send)

    def _needs_key(self, scope: Scope) -> bool:
        # The admin routes (/admin/*) check for an admin key themselves: auth.admin_key is no client key.
        if scope["type"] != "http" or not self.keys.enabled or scope["path"] in PROBE_PATHS:
            return False
        if route_group(scope["path"]) == "admin":
            return False
        if scope["path"] in LORA_PATHS and self.runtime_lora:
            return False
        return scope["path"] != METRICS_PATH or self.guard_metrics
