"""The floor of Suite 2: the naive FastAPI + httpx proxy that anyone would write first.

NAIVE_UPSTREAM=http://127.0.0.1:8201 uvicorn bench.naive_proxy:app --port 8202
"""

from __future__ import annotations

import os

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

UPSTREAM = os.environ.get("NAIVE_UPSTREAM", "http://127.0.0.1:8201")
app = FastAPI()
client = httpx.AsyncClient(base_url=UPSTREAM, timeout=600, limits=httpx.Limits(max_connections=None))


@app.post("/v1/{path:path}")
async def proxy(path: str, request: Request) -> Response:
    body = await request.json()
    upstream = await client.send(client.build_request("POST", f"/v1/{path}", json=body), stream=True)
    if not body.get("stream"):
        data = await upstream.aread()
        await upstream.aclose()
        return Response(data, upstream.status_code, media_type="application/json")

    async def relay():
        try:
            async for line in upstream.aiter_lines():
                if line:
                    yield line + "\n\n"
        finally:
            await upstream.aclose()

    return StreamingResponse(relay(), upstream.status_code, media_type="text/event-stream")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
