"""A scripted OpenAI-compatible server, run as its own process so that router faults are real.

    python -m tests.support.scripted_upstream --port P [--tokens N] [--delay-ms D] [--model NAME] [--fault F]
                                              [--wire compact|loose]

It serves /health, /v1/models, /metrics (vLLM's load gauges), /v1/chat/completions and /v1/completions
(streamed or not), and /v1/embeddings; vLLM's other paths are in tests.support.scripted_paths.
Tokens are `t0 t1 ...`, one every D ms. Faults, also set at
run time with POST /control {"fault": F, "delay_ms": D, "tokens": N, "poison": WORD, "wire": W}:

    none    serve normally            503, 429   answer every generation request with that status
    hang    never answer              stall      3 chunks, then silence
    reset   3 chunks, then a TCP reset (RST)
    error   3 chunks, then an SSE error event (as vLLM sends one mid-stream) and the stream's end
    unended an event that never ends: its first bytes, then 64 KiB more of it every D ms
    whole   a whole JSON answer (200, application/json) to a stream request too

(`fault_after` sets how many chunks come before stall, reset or error; 3 by default.)

A continuation, as a router resuming a stream sends it, is answered from where it stops: a chat request with
`continue_final_message` whose last (assistant) message ends in `t0 ... tK-1`, or a completion whose prompt
ends so, gets `tK ...` up to the same end (`tokens` in all), and is spared the mid-stream faults (so a fault
acts once per answer). Any other ending starts from t0 again, so text lost or repeated at a seam shows.
With stream_options.continuous_usage_stats, every chunk carries the usage so far, as vLLM's do.

LoRA adapters, as vLLM serves them with runtime loading on: POST /v1/load_lora_adapter {lora_name,
lora_path} and /v1/unload_lora_adapter {lora_name}; a loaded adapter is listed in /v1/models with `parent`,
counted in vllm:lora_requests_info (max_lora, running_lora_adapters), and its answers' tokens are
`NAME:t0 NAME:t1 ...`. Script fields for them: max_loras (a load past it is refused), lora_load_ms (how
long a load takes) and lora_fault (a status, e.g. 500, that every load answers).

A request whose prompt holds the poison word (none by default) is answered 500, as an engine answers a
request it cannot serve. With `text_only`, a chat message part of any type but text is answered 400 with
`param` naming it, as a text-only vLLM model refuses an image. Wire `loose` writes JSON as Python's
json.dumps does by default (`"key": value`),
whole answers indented, and SSE fields without the optional space (`data:{...}`, `data:[DONE]`): all valid,
as an OpenAI-compatible server may write them; `compact` (the default) is orjson's and vLLM's spacing.

GET /stats counts requests, completed, aborted (the client left before the end) and in flight.
GET /requests lists the last POSTs' paths, headers (all of them, as received), JSON `model` and JSON body as
the text that came (None for an upload), newest last.
A refused connection is a port nobody listens on; a crash is `kill -9` from the test. It is a small
asyncio HTTP/1.1 server rather than an ASGI app because a reset needs the socket itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from tests.support.scripted_paths import JSON_PATHS, STALL_AFTER, UPLOAD_PATHS, body_pieces, serve_path


@dataclass
class Script:
    model: str = "scripted"
    tokens: int = 16
    delay_ms: float = 10.0
    fault: str = "none"
    max_model_len: int = 4096
    poison: str = ""
    wire: str = "compact"
    max_loras: int = 4
    lora_load_ms: float = 0.0
    lora_fault: str = ""
    fault_after: int = STALL_AFTER  # chunks before a stall, reset or error
    text_only: bool = False  # a chat part that is not text: 400, as a text-only model answers it

    def dumps(self, value: Any, whole: bool = False) -> bytes:
        if self.wire == "loose":
            return json.dumps(value, indent=2 if whole else None).encode()
        return orjson.dumps(value)

    def sse(self, data: bytes) -> bytes:
        return (b"data:" if self.wire == "loose" else b"data: ") + data + b"\n\n"


@dataclass
class Stats:
    requests: int = 0
    completed: int = 0
    aborted: int = 0
    in_flight: int = 0
    upload_bytes: int = 0  # of audio uploads, counted as they arrive
    lora_loads: int = 0
    lora_unloads: int = 0
    lora_requests: int = 0  # generation requests that named a loaded adapter


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        data = orjson.loads(self.body or b"{}")
        return data if isinstance(data, dict) else {}


def _model_named(request: HttpRequest) -> str | None:
    """The `model` a JSON body names (None for an upload or a body that is not JSON)."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        model = request.json().get("model")
    except orjson.JSONDecodeError:
        return None
    return model if isinstance(model, str) else None


class ClientLeft(Exception):
    pass


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    path = path.split("?", 1)[0]
    if path in UPLOAD_PATHS:  # its handler reads the body as it comes
        return HttpRequest(method, path, headers, b"")
    body = b"".join([piece async for piece in body_pieces(reader, headers)])
    return HttpRequest(method, path, headers, body)


class Exchange:
    """One request's response side: plain JSON or a chunked SSE body, and the client's leaving."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script) -> None:
        self.reader, self.writer, self.script = reader, writer, script

    async def json(self, status: int, body: Any) -> None:
        data = self.script.dumps(body, whole=True)
        head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        self.writer.write(head.encode() + data)
        await self.writer.drain()

    async def start_stream(self) -> None:
        head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        self.writer.write(head.encode())
        await self.writer.drain()

    async def event(self, data: Any) -> None:
        payload = self.script.sse(data if isinstance(data, bytes) else self.script.dumps(data))
        self.writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        await self.writer.drain()

    async def end_stream(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    def reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        self.writer.transport.abort()

    async def until_client_leaves(self) -> None:
        # The client sends nothing while it waits for our answer, so any read returns only at EOF.
        await self.reader.read(1)
        raise ClientLeft()


def _text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content") or "") for m in body["messages"])
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))


def _media_part(body: dict[str, Any]) -> tuple[str, str] | None:
    """Where the first chat part that is not text is (`messages[i].content[j]`), and its type."""
    for i, message in enumerate(body.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") != "text":
                return f"messages[{i}].content[{j}]", str(part.get("type"))
    return None


def _continued_from(body: dict[str, Any], word: str) -> int:
    """K where the answer's start sent along ends in `t0 ... tK-1` (a resumed stream's continuation), else 0."""
    if "messages" in body:
        last = (body.get("messages") or [{}])[-1]
        final = body.get("continue_final_message") and last.get("role") == "assistant"
        text = str(last.get("content") or "") if final else ""
    else:
        text = _text(body)
    # The text generated so far is appended as it came: a completion's prompt may run straight into `t0`.
    for start in (i for i in range(len(text)) if text.startswith(f"{word}0 ", i)):
        count = text[start:].count(" ")
        if text[start:] == "".join(f"{word}{i} " for i in range(count)):
            return count
    return 0


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.stats = Stats()
        self.started = int(time.time())
        self.seen: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        self.loras: dict[str, str] = {}  # loaded adapter -> its path
        self.lora_running: dict[str, int] = {}  # adapter -> its requests being answered

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exchange = Exchange(reader, writer, self.script)
        try:
            while (request := await read_request(reader)) is not None:
                await self.dispatch(request, exchange)
        except (ClientLeft, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def dispatch(self, request: HttpRequest, exchange: Exchange) -> None:
        if request.method == "POST" and request.path != "/control":
            self.seen.append(
                {
                    "path": request.path,
                    "headers": request.headers,
                    "model": _model_named(request),
                    "body": request.body.decode() if _model_named(request) is not None else None,
                }
            )
        routes: dict[tuple[str, str], Callable[[HttpRequest, Exchange], Awaitable[None]]] = {
            ("GET", "/health"): lambda r, x: x.json(200, {"status": "ok"}),
            ("GET", "/v1/models"): self.models,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/stats"): lambda r, x: x.json(200, asdict(self.stats)),
            ("GET", "/requests"): lambda r, x: x.json(200, list(self.seen)),
            ("POST", "/control"): self.control,
            ("POST", "/v1/chat/completions"): self.generate,
            ("POST", "/v1/completions"): self.generate,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/tokenize"): self.tokenize,
            ("POST", "/v1/load_lora_adapter"): self.load_lora,
            ("POST", "/v1/unload_lora_adapter"): self.unload_lora,
        }
        handler = routes.get((request.method, request.path))
        if request.method == "POST" and request.path in JSON_PATHS | UPLOAD_PATHS:
            handler = lambda r, x: serve_path(self, r, x)  # noqa: E731
        if handler is None:
            await exchange.json(
                404,
                {
                    "error": {
                        "message": "not found",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "not_found",
                    }
                },
            )
            return
        await handler(request, exchange)

    async def models(self, request: HttpRequest, exchange: Exchange) -> None:
        card = {
            "id": self.script.model,
            "object": "model",
            "created": self.started,
            "owned_by": "scripted",
            "max_model_len": self.script.max_model_len,
        }
        loras = [
            {
                "id": name,
                "object": "model",
                "created": self.started,
                "owned_by": "scripted",
                "root": path,
                "parent": self.script.model,
                "max_model_len": self.script.max_model_len,
            }
            for name, path in self.loras.items()
        ]
        await exchange.json(200, {"object": "list", "data": [card, *loras]})

    async def load_lora(self, request: HttpRequest, exchange: Exchange) -> None:
        body = request.json()
        name, path = str(body.get("lora_name") or ""), str(body.get("lora_path") or "")
        await asyncio.sleep(self.script.lora_load_ms / 1000)
        refusal = (
            f"scripted load failure ({self.script.lora_fault})"
            if self.script.lora_fault
            else f"The lora adapter '{name}' has already been loaded."
            if name in self.loras
            else f"No room: {len(self.loras)} adapters loaded (max_loras)."
            if len(self.loras) >= self.script.max_loras
            else ""
        )
        if refusal:
            status = int(self.script.lora_fault or 400)
            await exchange.json(
                status, {"error": {"message": refusal, "type": "BadRequestError", "param": None, "code": status}}
            )
            return
        self.loras[name] = path
        self.stats.lora_loads += 1
        await exchange.json(200, f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(self, request: HttpRequest, exchange: Exchange) -> None:
        name = str(request.json().get("lora_name") or "")
        if self.loras.pop(name, None) is None:
            await exchange.json(
                404,
                {
                    "error": {
                        "message": f"The lora adapter '{name}' cannot be found.",
                        "type": "NotFoundError",
                        "param": None,
                        "code": 404,
                    }
                },
            )
            return
        self.stats.lora_unloads += 1
        await exchange.json(200, f"Success: LoRA adapter '{name}' removed successfully.")

    async def metrics(self, request: HttpRequest, exchange: Exchange) -> None:
        label = f'{{model_name="{self.script.model}"}}'
        text = (
            f"vllm:num_requests_running{label} {self.stats.in_flight}\n"
            f"vllm:num_requests_waiting{label} 0\nvllm:kv_cache_usage_perc{label} 0.0\n"
        )
        running = ",".join(name for name, count in self.lora_running.items() if count)
        text += (
            f'vllm:lora_requests_info{{max_lora="{self.script.max_loras}",running_lora_adapters="{running}",'
            f'waiting_lora_adapters=""}} {time.time()}\n'
        )
        data = text.encode()
        exchange.writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)
        )
        await exchange.writer.drain()

    async def control(self, request: HttpRequest, exchange: Exchange) -> None:
        for key, value in request.json().items():
            if hasattr(self.script, key):
                setattr(self.script, key, type(getattr(self.script, key))(value))
        await exchange.json(200, {**asdict(self.script), **asdict(self.stats)})

    async def embeddings(self, request: HttpRequest, exchange: Exchange) -> None:
        inputs = request.json().get("input")
        items = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = []
        for index, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            data.append({"object": "embedding", "index": index, "embedding": [b / 255 for b in digest[:8]]})
        tokens = sum(len(str(item).split()) for item in items)
        await exchange.json(
            200,
            {
                "object": "list",
                "data": data,
                "model": self.script.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    async def tokenize(self, request: HttpRequest, exchange: Exchange) -> None:
        """One token per word, as vLLM's /tokenize answers."""
        words = _text(request.json()).split()
        await exchange.json(
            200,
            {"count": len(words), "max_model_len": self.script.max_model_len, "tokens": list(range(1, len(words) + 1))},
        )

    async def generate(self, request: HttpRequest, exchange: Exchange) -> None:
        self.stats.requests += 1
        fault = self.script.fault
        if fault in ("503", "429"):
            code = "engine_unavailable" if fault == "503" else "rate_limit_exceeded"
            await exchange.json(
                int(fault), {"error": {"message": f"scripted {fault}", "type": "scripted", "param": None, "code": code}}
            )
            return
        if self.script.text_only and (part := _media_part(request.json())) is not None:
            message = f"{part[1]!r} parts are not supported: the model takes text only."
            error = {"message": message, "type": "BadRequestError", "param": part[0], "code": 400}
            await exchange.json(400, {"error": error})
            return
        if self.script.poison and self.script.poison in _text(request.json()):
            await exchange.json(
                500,
                {
                    "error": {
                        "message": "scripted failure on this request",
                        "type": "InternalServerError",
                        "param": None,
                        "code": 500,
                    }
                },
            )
            return
        self.stats.in_flight += 1
        lora = request.json().get("model")
        lora = lora if lora in self.loras else None
        if lora is not None:
            self.stats.lora_requests += 1
            self.lora_running[lora] = self.lora_running.get(lora, 0) + 1
        leaving = asyncio.ensure_future(exchange.until_client_leaves())
        work = asyncio.ensure_future(Generation(self.script, request, exchange, lora).run())
        try:
            await asyncio.wait({leaving, work}, return_when=asyncio.FIRST_COMPLETED)
            if work.done() and not work.exception():
                self.stats.completed += 1
                return
            self.stats.aborted += 1
            raise ClientLeft()
        finally:
            self.stats.in_flight -= 1
            if lora is not None:
                self.lora_running[lora] -= 1
            for task in (leaving, work):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


class Generation:
    def __init__(self, script: Script, request: HttpRequest, exchange: Exchange, lora: str | None = None) -> None:
        self.script, self.exchange = script, exchange
        self.word = f"{lora}:t" if lora else "t"  # the tokens say which adapter answered
        self.body = request.json()
        self.chat = request.path.endswith("/chat/completions")
        self.prompt_tokens = max(1, len(_text(self.body).split()))
        self.start = _continued_from(self.body, self.word)  # tokens a continuation already holds
        left = self.script.tokens - self.start
        self.count = min(int(self.body.get("max_tokens") or left), left)
        options = self.body.get("stream_options") or {}
        self.continuous = bool(options.get("include_usage") and options.get("continuous_usage_stats"))
        self.n = int(self.body.get("n") or 1)
        self.head = {
            "id": "scripted",
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": int(time.time()),
            "model": self.body.get("model", script.model),
        }

    def reason(self) -> str:
        return "length" if self.count == self.body.get("max_tokens") else "stop"

    async def run(self) -> None:
        if self.script.fault == "hang":
            await asyncio.Event().wait()
        if self.body.get("stream") and self.body.get("prompt_logprobs") is not None:  # refused, as tokenyard does
            await self.exchange.json(
                400,
                {
                    "error": {
                        "message": "`prompt_logprobs` are not available when `stream=True`.",
                        "type": "BadRequestError",
                        "param": "prompt_logprobs",
                        "code": 400,
                    }
                },
            )
        elif self.body.get("stream") and self.script.fault != "whole":
            await self.stream()
        else:
            await self.whole()

    async def tick(self) -> None:
        await asyncio.sleep(self.script.delay_ms / 1000)

    def choice(self, index: int, text: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    async def stream(self) -> None:
        x = self.exchange
        await x.start_stream()
        if self.chat:
            await x.event(self.chunk([self.choice(i, None, None, True) for i in range(self.n)], 0))
        if self.script.fault == "unended":  # one event that never ends: 64 KiB more of it each tick
            x.writer.write(b"%x\r\n%s\r\n" % (len(b'data: {"choices":[{"text":"'), b'data: {"choices":[{"text":"'))
            while True:
                await self.tick()
                x.writer.write(b"10000\r\n" + b"a" * 0x10000 + b"\r\n")
                await x.writer.drain()
        faulty = self.script.fault_after if not self.start else -1
        for step in range(self.count):
            await self.tick()
            if step == faulty and self.script.fault == "stall":
                await asyncio.Event().wait()
            if step == faulty and self.script.fault == "reset":
                x.reset()
                return
            if step == faulty and self.script.fault == "error":
                await x.event(
                    {
                        "error": {
                            "message": "scripted error mid-stream",
                            "type": "BadRequestError",
                            "param": None,
                            "code": 400,
                        }
                    }
                )
                await x.end_stream()
                return
            reason = self.reason() if step == self.count - 1 else None
            choices = [self.choice(i, f"{self.word}{self.start + step} ", reason) for i in range(self.n)]
            await x.event(self.chunk(choices, step + 1))
        if (self.body.get("stream_options") or {}).get("include_usage"):
            await x.event({**self.head, "choices": [], "usage": self.usage()})
        await x.event(b"[DONE]")
        await x.end_stream()

    async def whole(self) -> None:
        for _ in range(self.count):
            await self.tick()
        text = "".join(f"{self.word}{self.start + step} " for step in range(self.count))
        choices: list[dict[str, Any]]
        if self.chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": self.reason(),
                }
                for i in range(self.n)
            ]
        else:
            choices = [
                {"index": i, "text": text, "logprobs": None, "finish_reason": self.reason()} for i in range(self.n)
            ]
        kind = "chat.completion" if self.chat else "text_completion"
        answer: dict[str, Any] = {**self.head, "object": kind, "choices": choices, "usage": self.usage()}
        if self.body.get("prompt_logprobs") is not None:  # where vLLM puts them: the answer's (chat), each choice's
            scored = [None] + [{"1": {"logprob": -1.0, "rank": 1, "decoded_token": "w"}}] * (self.prompt_tokens - 1)
            for holder in [answer] if self.chat else choices:
                holder["prompt_logprobs"] = scored
        await self.exchange.json(200, answer)

    def chunk(self, choices: list[dict[str, Any]], steps: int) -> dict[str, Any]:
        """One streamed event; with continuous usage stats, the usage after `steps` tokens of each choice."""
        event = {**self.head, "choices": choices}
        if self.continuous:
            event["usage"] = self.usage(steps)
        return event

    def usage(self, steps: int | None = None) -> dict[str, int]:
        completion = (self.count if steps is None else steps) * self.n
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


async def serve(host: str, port: int, script: Script) -> None:
    server = ScriptedServer(script)
    listener = await asyncio.start_server(server.handle, host, port, backlog=1024)
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="scripted")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument(
        "--fault", default="none", choices=["none", "503", "429", "hang", "stall", "reset", "error", "unended", "whole"]
    )
    parser.add_argument("--wire", default="compact", choices=["compact", "loose"])
    args = parser.parse_args(argv)
    script = Script(args.model, args.tokens, args.delay_ms, args.fault, args.max_model_len, wire=args.wire)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, script))


if __name__ == "__main__":
    main()
