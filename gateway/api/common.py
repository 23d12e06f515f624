"""Small helpers every route module uses."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

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


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.tokenyard
    return state


def json_response(body: BaseModel | dict[str, Any], status_code: int = 200) -> Response:
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")
