"""The request line as the routes expect it: HEAD answered as GET without a body, no trailing slash.

HEAD works wherever GET does (load balancers and uptime checks use it): the app below sees GET, and
the answer keeps its status and headers but loses its body. A path's trailing slash is dropped, so
`/v1/models/` is `/v1/models` for auth, the probes and the routes alike, and no redirect is ever
needed; create_app turns FastAPI's off, whose `Location` was built from the client's `Host`.

The scope is copied, not changed: the access log and uvicorn keep the request as it came (uvicorn
leaves out the body of a HEAD answer by reading the method from its own scope).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CanonicalRequestMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                raw_path: bytes = scope.get("raw_path") or path.encode()
                scope = {**scope, "path": path.rstrip("/") or "/", "raw_path": raw_path.rstrip(b"/") or b"/"}
            if scope["method"] == "HEAD":
                scope, send = {**scope, "method": "GET"}, _without_body(send)
        await self.app(scope, receive, send)


def _without_body(send: Send) -> Send:
    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head
