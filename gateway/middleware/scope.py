"""A key's scope at the front door (gateway.scopes): 403 for a path whose route group the key lacks, and 404
model_not_found, the body an unknown model gets, for a model it may not use, so that a key cannot probe
which models exist. A request asking for more urgency than the key's ceiling is refused 403 where the
priority is read (gateway.middleware.admission). /v1/models lists only what the key may use (gateway.api.models).

The admin routes (/admin/*) and runtime LoRA routes check their group themselves (gateway.api.common.
require_admin): they also open to auth.admin_key, which is no client key.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ModelNotFound, PermissionDenied
from gateway.middleware.context import is_service_path, request_info, send_error
from gateway.protocol.paths import PATHS, route_group
from gateway.scopes import KeyScope
from gateway.state import AppState

_MODEL_CARD = "/v1/models/"
_OWN_CHECK = ("admin", "lora")  # gateway.api.common.require_admin


def model_names(state: AppState, model: str) -> tuple[str, ...]:
    """The name asked for and the model's own first name (an alias's or adapter's route or engine)."""
    return (model, state.queue_name(model)) if model in state.adapters else (model,)


def may_use(state: AppState, scope: KeyScope | None, model: str) -> bool:
    return scope is None or scope.allows_model(model_names(state, model))


class ScopeMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = request_info(scope) if is_service_path(scope) else None
        key = info.key_scope if info is not None else None
        if info is None or key is None:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        group = route_group(path)
        if group not in _OWN_CHECK and not key.allows_group(group):
            self.state.metrics.rejected.labels("scope").inc()
            await send_error(send, PermissionDenied(f"This API key may not use the {group} routes ({path})."))
            return
        model = self._model(path, info.model)
        if model is not None and not may_use(self.state, key, model):
            self.state.metrics.rejected.labels("scope").inc()
            await send_error(send, ModelNotFound(model))
            return
        await self.app(scope, receive, send)

    def _model(self, path: str, named: str | None) -> str | None:
        if path.startswith(_MODEL_CARD):
            return path[len(_MODEL_CARD) :] or None
        if named is not None:
            return named
        return self.state.only_model() if path in PATHS else None  # what vLLM serves where a body names none
