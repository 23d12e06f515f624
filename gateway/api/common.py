"""Small helpers every route module uses."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.keys import digest
from gateway.middleware.auth import bearer_token
from gateway.protocol.common import ErrorResponse
from gateway.state import AppState


def error_responses(body: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """Every status we send, with its error `body`: documented in the OpenAPI schema for clients and fuzzers."""
    return {
        status: {"model": body, "description": text}
        for status, text in {
            400: "Invalid request",
            401: "Missing or wrong API key",
            404: "Unknown model",
            408: "Request body not received in time",
            413: "Request body too large",
            429: "Rate limited or overloaded",
            500: "Internal error",
            503: "Engine unavailable",
        }.items()
    }


ERROR_RESPONSES = error_responses(ErrorResponse)
# A generating route's 200: JSON, or server-sent events when the request asks for a stream.
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream is true"}
}


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's paginated list object."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.tokenyard
    return state


def json_response(body: BaseModel | dict[str, Any], status_code: int = 200) -> Response:
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def require_admin(request: Request, group: str = "admin") -> str:
    """Who may use an admin route: the admin key (auth.admin_key), compared as a digest in constant time, or a
    client key whose scope grants `group` (admin, or lora for runtime LoRA loading). 401 for neither, 403 for
    a valid key without the group, 401 for an expired one. Answers who it was, for the audit log."""
    state = app_state(request)
    admin_key = state.settings.auth.admin_key
    token = bearer_token(request.scope)
    if token is None:
        raise AuthenticationFailed("This route needs an admin key.")
    if admin_key is not None and secrets.compare_digest(digest(token), digest(admin_key.get_secret_value())):
        return "admin_key"
    entry = state.keys.match(token) if state.keys is not None else None
    if entry is None:
        raise AuthenticationFailed("This route needs an admin key.")
    if entry.scope.expired():
        raise AuthenticationFailed("The API key provided has expired.")
    if not entry.scope.allows_group(group):
        raise PermissionDenied(f"This API key may not use the {group} routes.")
    return entry.name
