"""A lean OpenAI-shaped upstream for the router benchmarks (Suite 2): it must cost almost nothing itself.

    python -m tests.support.bench_upstream --port 8201

`max_tokens` (or `max_completion_tokens`) carries the script, because every router forwards it (some drop
unknown body fields):
chunks = max_tokens % 10000 and pace = max_tokens // 10000 ms between chunks. So 128 streams 128 chunks
back to back (one write each), and 100032 streams 32 chunks, one every 10 ms. Non-streamed requests wait chunks x pace,
then answer with one body. The chunk bytes are built once per request, not per chunk.

It serves POST /v1/chat/completions and /v1/completions, GET /health, /v1/models and /metrics (vLLM's load
gauges, which the tokenyard router polls), and answers every other GET with 200 {} so that the routers'
start-up probes (/get_model_info, /get_server_info, /health_generate ...) pass. It is a bare asyncio
protocol, not an ASGI app: an ASGI framework would cost more than the fronts it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson

PACE_UNIT = 10000
MODEL = "stub"


def script(max_tokens: object) -> tuple[int, float]:
    """(chunks, seconds between chunks) from max_tokens."""
    value = int(max_tokens) if isinstance(max_tokens, int) and max_tokens > 0 else 16
    return max(1, value % PACE_UNIT), (value // PACE_UNIT) / 1000


def encode(chunks: int, pace_ms: int) -> int:
    """The max_tokens that asks the stub for `chunks` chunks `pace_ms` apart."""
    return pace_ms * PACE_UNIT + chunks


def _event(body: dict[str, Any]) -> bytes:
    payload = b"data: " + orjson.dumps(body) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Reply:
    """The bytes one request is answered with, built before the first one is sent."""

    def __init__(self, path: bytes, body: dict[str, Any]) -> None:
        self.chat = path.endswith(b"/chat/completions")
        # sglang-router forwards max_tokens renamed as max_completion_tokens (the newer chat field).
        self.chunks, self.pace = script(body.get("max_tokens") or body.get("max_completion_tokens"))
        self.usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.head = {
            "id": "cmpl-stub",
            "created": int(time.time()),
            "model": str(body.get("model") or MODEL),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
        }

    def _choice(self, text: str, reason: str | None) -> dict[str, Any]:
        if self.chat:
            return {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": reason}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

    def stream_events(self) -> tuple[bytes, Callable[[int], bytes], bytes]:
        """(the first event, the middle event for a step, the end: last event, usage, [DONE], terminator).

        Every chunk's text differs ("t1 ", "t2 " ...): LiteLLM cuts a stream that repeats one chunk 100 times
        (its guard against a looping model), and a real model's chunks differ too. A middle event is the
        JSON built once, split around the text, and joined per step: no JSON work per chunk."""
        first = _event({**self.head, "choices": [self._choice("tok ", None)]})
        payload = b"data: " + orjson.dumps({**self.head, "choices": [self._choice("\x00", None)]}) + b"\n\n"
        before, after = payload.split(b"\\u0000")

        def middle(step: int) -> bytes:
            event = b"%st%d %s" % (before, step, after)
            return b"%x\r\n%s\r\n" % (len(event), event)

        if self.chat:
            first = _event(
                {
                    **self.head,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": "tok "},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
        end = b""
        if self.usage:
            end += _event({**self.head, "choices": [], "usage": self._usage()})
        end += b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
        last = _event({**self.head, "choices": [self._choice("tok ", "length")]})
        return first, middle, last + end

    def whole(self) -> bytes:
        text = "tok " * self.chunks
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        kind = "chat.completion" if self.chat else "text_completion"
        return orjson.dumps({**self.head, "object": kind, "choices": [choice], "usage": self._usage()})

    def _usage(self) -> dict[str, int]:
        return {"prompt_tokens": 8, "completion_tokens": self.chunks, "total_tokens": 8 + self.chunks}


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def json_response(status: int, data: bytes, kind: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (status, kind, len(data), data)


def get_response(path: bytes) -> bytes:
    if path == b"/health":
        return json_response(200, b'{"status":"ok"}')
    if path == b"/v1/models":
        card = {"id": MODEL, "object": "model", "created": 0, "owned_by": "stub", "max_model_len": 1 << 20}
        return json_response(200, orjson.dumps({"object": "list", "data": [card]}))
    if path == b"/metrics":
        label = b'{model_name="stub"}'
        text = b"vllm:num_requests_running%s 0\nvllm:num_requests_waiting%s 0\nvllm:kv_cache_usage_perc%s 0.0\n" % (
            label,
            label,
            label,
        )
        return json_response(200, text, b"text/plain")
    return json_response(200, b"{}")


class StubProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; one request at a time per connection (no pipelining, as clients do)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self.next_request()

    def next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.transport is None:
            return
        head = self.buffer[:end].split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
        method, path = head[0].split(b" ", 2)[:2]
        path = path.split(b"?", 1)[0]
        if method == b"GET":
            self.transport.write(get_response(path))
            self.next_request()
            return
        try:
            request = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            self.transport.write(
                json_response(
                    400, b'{"error":{"message":"bad json","type":"invalid_request_error","param":null,"code":null}}'
                )
            )
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self.answer(Reply(path, request), bool(request.get("stream"))))

    async def answer(self, reply: Reply, stream: bool) -> None:
        try:
            if stream:
                await self.stream(reply)
            else:
                if reply.pace:
                    await asyncio.sleep(reply.pace * reply.chunks)
                if self.transport is not None:
                    self.transport.write(json_response(200, reply.whole()))
        finally:
            self.busy = False
        self.next_request()

    async def stream(self, reply: Reply) -> None:
        first, middle, last = reply.stream_events()
        if self.transport is None:
            return
        self.transport.write(STREAM_HEAD)
        for index in range(reply.chunks):
            # Back to back is still one write per event, as an engine sends them; the kernel may merge them.
            await asyncio.sleep(reply.pace)
            if self.transport is None or self.transport.is_closing():
                return
            if index == reply.chunks - 1:  # the last event ends the stream, also when it is the only one
                self.transport.write(first + last if index == 0 else last)
            else:
                self.transport.write(first if index == 0 else middle(index))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StubProtocol, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    runner: Any = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port))


if __name__ == "__main__":
    main()
