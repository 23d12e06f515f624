"""Stage 2 (take) of the front door (gateway.relay): a routed model's chat, completion or tokenizer request is
taken here, in plain ASGI, and every other request goes on to the FastAPI app.

The body is read for what the router needs (gateway.relay.read), not validated with engine mode's wire
models, so a route passes on whatever its instances serve; the request is then relayed (gateway.relay.call)
and its answer passed on (gateway.relay.answer). /tokenize and /detokenize get the instance's JSON answer.
A request to one of vLLM's other paths goes through as bytes (gateway.relay.raw). Skipping FastAPI's routing,
dependency solving and response classes, and the chain of generators around each chunk, keeps the router's CPU
per request small; bench/router_overhead.py measures it. The middlewares around both are the same.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from engine_adapters.base import Relay, RouteRequest
from engine_adapters.client_socket import client_socket
from gateway.errors import GatewayError, invalid_fields
from gateway.middleware.context import header, request_info, send_error
from gateway.protocol.paths import PATHS
from gateway.relay import raw
from gateway.relay.answer import forwarded, relayed
from gateway.relay.call import RelayCall
from gateway.relay.read import Routed
from gateway.services.disconnect import ClientDisconnected, until_disconnect
from gateway.services.wire import new_id
from gateway.state import AppState


class FrontDoor:
    """The innermost middleware: routed chat, completions and tokenizer requests end here; the rest goes on."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app, self.state = app, state
        self.session_header = state.settings.router.session_header.lower().encode()
        self.splice = state.settings.router.splice

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        post = scope["type"] == "http" and scope["method"] == "POST"
        facts = PATHS.get(scope["path"]) if post else None
        relayed_here = facts is not None and facts.relay in ("events", "json")
        if post and not relayed_here and await self._other_path(scope, receive, send):
            return
        body = request_info(scope).body if relayed_here else None
        if not isinstance(body, dict):
            await self.app(scope, receive, send)
            return
        model = body.get("model")
        if model is None and facts is not None and facts.relay == "json":
            model = self.state.only_model()  # like vLLM: the one model served when none is named
            body = {**body, "model": model}
        if not isinstance(model, str) or not isinstance(self.state.adapters.get(model), Relay):
            await self.app(scope, receive, send)
            return
        try:
            work = self._work(scope, body, send)
        except GatewayError as exc:
            await send_error(send, exc)
            return
        await receive()  # the body's bytes, replayed, let go of: the parsed body is relayed (one copy held)
        try:
            await until_disconnect(receive, work, scope)
        except ClientDisconnected:
            metrics = self.state.metrics
            metrics.child(metrics.client_disconnects, self.state.model_label(model)).inc()

    async def _other_path(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """A request to a path that a routed model's route passes through as bytes (gateway.relay.raw): True
        when it was answered here."""
        try:
            route = raw.target(self.state, scope)
        except GatewayError as exc:
            await raw.refuse(send, exc, request_info(scope).upload)
            return True
        if route is None:
            return False
        await raw.serve(self.state, route, scope, receive, send)
        return True

    def _work(self, scope: Scope, body: dict[str, Any], send: Send) -> Awaitable[None]:
        """What answers the request, once the router has read what it needs of the body."""
        try:
            read = Routed.model_validate(body)
        except ValidationError as exc:
            raise invalid_fields(exc.errors()) from None
        path = scope["path"]
        forwarded_ = request_info(scope).forwarded  # the request id and trace context, for the instance
        generates = PATHS[path].relay == "events"
        # Served and ready; generation only from a generative route (an embedding route is a 404, as before).
        kind = "generate" if generates else self.state.model_info(read.model).kind
        adapter = cast(Relay, self.state.adapter_for(read.model, kind))
        if not generates:
            prompt = body.get("prompt")
            request = RouteRequest(
                new_id("forward"), read.model, prompt if isinstance(prompt, str) else None, forwarded=forwarded_
            )
            return forwarded(adapter.forward(request, path, body), send)
        session = header(scope, self.session_header)
        # On uvicorn, with the splice on: the client's socket, for the events between the first and the last.
        to_client = client_socket(scope) if self.splice else None
        call = RelayCall(
            self.state,
            adapter,
            read,
            body,
            session.decode("latin-1") if session else None,
            path,
            to_client,
            forwarded_,
        )
        return relayed(call, send)
