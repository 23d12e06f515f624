"""GET /v1/usage: the calling key's own usage, limits and remaining budgets. GET /admin/usage: every key's,
behind the admin key (auth.admin_key). Both read only; neither is limited nor charged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state, json_response, require_admin
from gateway.errors import EngineUnavailable, NotFound
from gateway.limit_store import KeyLimits, StoreUnavailable, default_limits
from gateway.middleware.context import ADMIN_USAGE_PATH, USAGE_PATH, request_info
from gateway.state import AppState

router = APIRouter()


async def _key_usage(state: AppState, name: str, own: KeyLimits | None) -> dict[str, Any]:
    limits = own.over(default_limits(state.settings.limits)) if own else default_limits(state.settings.limits)
    try:
        periods = await state.limit_store.usage(name, limits)
    except StoreUnavailable:
        raise EngineUnavailable("The usage store is unreachable; retry shortly.", code="limits_unavailable") from None
    return {
        "object": "key.usage",
        "key": name,
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
        "periods": {usage.window.period: usage.as_json() for usage in periods},
    }


@router.get(USAGE_PATH, responses=ERROR_RESPONSES)
async def own_usage(request: Request) -> Response:
    info = request_info(request.scope)
    if info.key_name is None:
        raise NotFound("Usage is kept per API key, and this server has no keys configured.")
    return json_response(await _key_usage(app_state(request), info.key_name, info.key_limits))


@router.get(ADMIN_USAGE_PATH, include_in_schema=False)
async def all_usage(request: Request) -> Response:
    state = app_state(request)
    entries = state.keys.entries() if state.keys else []
    if state.settings.auth.admin_key is None and not any(entry.scope.allows_group("admin") for entry in entries):
        raise NotFound("The admin view is off: set auth.admin_key (or a key with the admin group) to turn it on.")
    require_admin(request)
    data = [await _key_usage(state, entry.name, entry.limits) for entry in entries]
    return json_response({"object": "list", "data": data})
