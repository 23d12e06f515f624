"""The server span of each request (gateway.observability.otel draws a request's spans); imported by
gateway.middleware.install only while tracing is on, as it needs the otel extra."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.middleware.context import is_service_path, request_info
from gateway.observability.otel import Tracing


class TracingMiddleware:
    """Installed only while tracing is on, just inside the request log (which chose the request id): opens
    the server span, hands its traceparent on (RequestInfo.forwarded), and watches the answer go out.
    Probes and /metrics are not traced."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app, self.tracing = app, tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_service_path(scope):  # no trace of every probe and scrape
            await self.app(scope, receive, send)
            return
        info = request_info(scope)
        trace = self.tracing.start(scope["method"], scope["path"], info.forwarded, info.request_id)
        info.forwarded = trace.forwarded(info.forwarded)

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                trace.status = message["status"]
            elif message["type"] == "http.response.body":
                trace.watch(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except Exception as exc:
            trace.fail(exc)
            raise
        finally:
            trace.finish(info.model, info.body, scope["path"])
