"""Simulated vLLM instances over HTTP, many in one asyncio process, each on its own port.

Each speaks what the router uses of `vllm serve`: /v1/chat/completions and /v1/completions (streamed and
whole, with `usage` and `prompt_tokens_details.cached_tokens`), /tokenize, /v1/models (whose entry names
the instance's KV events endpoints, as tokenyard's engine mode does), /health, /metrics (vLLM's names) and
/reset_prefix_cache. A stream sends its first token when the engine makes it and the rest when the request
ends: the router's choices depend on when a request starts and ends, not on each token between.

    python -m bench.fleet.server --instances 4 --port 9100 --events-port 9300 --blocks 2048 --scale 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import zmq.asyncio
from aiohttp import web

from bench.fleet import text
from bench.fleet.cache import PrefixCache
from bench.fleet.engine import Clock, Engine, Record, Request, Timing
from bench.fleet.events import Publisher

MODEL = "sim-llama-8b"
MAX_MODEL_LEN = 131_072
_ids = itertools.count()


def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status)


@dataclass
class Instance:
    port: int
    engine: Engine
    publisher: Publisher
    model: str
    runner: web.AppRunner | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    served: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def records(self) -> list[Record]:
        return self.engine.records

    # -- routes -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/reset_prefix_cache", self.reset)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": 0,
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": MAX_MODEL_LEN,
            "kv_events": {
                "endpoint": f"tcp://*:{self.publisher.port}",
                "replay_endpoint": f"tcp://*:{self.publisher.replay_port}",
            },
        }
        return web.json_response({"object": "list", "data": [card]})

    async def metrics(self, request: web.Request) -> web.Response:
        engine, cache = self.engine, self.engine.cache
        labels = f'{{engine="0",model_name="{self.model}"}}'
        lines = []
        for kind, name, value in (
            ("gauge", "vllm:num_requests_running", engine.running),
            ("gauge", "vllm:num_requests_waiting", len(engine.waiting)),
            ("gauge", "vllm:kv_cache_usage_perc", cache.usage()),
            ("counter", "vllm:prefix_cache_queries_total", cache.queries),
            ("counter", "vllm:prefix_cache_hits_total", cache.hits),
            ("counter", "vllm:prompt_tokens_total", sum(r.prompt_tokens for r in engine.records)),
            ("counter", "vllm:generation_tokens_total", sum(r.output_tokens for r in engine.records)),
        ):
            lines += [f"# TYPE {name.removesuffix('_total')} {kind}", f"{name}{labels} {float(value)}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        ids = self._prompt_ids(body)
        if ids is None:
            return _error(400, "Either `prompt` or `messages` is required.")
        return web.json_response({"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids})

    async def reset(self, request: web.Request) -> web.Response:
        if not self.engine.cache.reset():
            return _error(409, "The prefix cache is in use.", "ConflictError")
        self.publisher.publish(self.engine.cache.drain_events())
        return web.Response(status=200)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    # -- generation ---------------------------------------------------------------------

    async def _generate(self, http: web.Request, chat: bool) -> web.StreamResponse:
        body = await self._body(http)
        if isinstance(body, web.Response):
            return body
        if body.get("model") != self.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt = self._prompt_ids(body) if chat == ("messages" in body) else None
        if not prompt:
            return _error(400, "`messages` is required." if chat else "`prompt` is required.")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be at least 1.")
        self.served += 1
        request = Request(prompt, max_tokens, self.engine.clock.now())
        self.engine.submit(request)
        try:
            if body.get("stream"):
                return await self._stream(http, body, request, chat)
            return await self._whole(body, request, chat)
        finally:
            if not request.done.done():
                self.engine.abort(request)

    async def _whole(self, body: dict[str, Any], request: Request, chat: bool) -> web.Response:
        try:
            await request.first_token
        except ValueError as exc:
            return _error(400, str(exc))
        await request.done
        answer = text.output_text(request.max_tokens)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": answer, "logprobs": None, "finish_reason": "length"}
        )
        return web.json_response(
            {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{next(_ids)}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [choice],
                "usage": self._usage(request),
            }
        )

    async def _stream(
        self, http: web.Request, body: dict[str, Any], request: Request, chat: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        try:
            await request.first_token
        except ValueError as exc:
            return _error(400, str(exc))
        await response.prepare(http)
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{next(_ids)}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model,
        }

        def event(words: str, finish: str | None, first: bool) -> bytes:
            if chat:
                delta = {"role": "assistant", "content": words} if first else {"content": words}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": words, "logprobs": None, "finish_reason": finish}
            return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

        done = request.max_tokens == 1
        await response.write(event(text.OUTPUT_WORD, "length" if done else None, True))
        if not done:
            await request.done
            await response.write(event(" " + text.output_text(request.max_tokens - 1), "length", False))
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            await response.write(
                b"data: " + orjson.dumps({**head, "choices": [], "usage": self._usage(request)}) + b"\n\n"
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _usage(self, request: Request) -> dict[str, Any]:
        cached = request.allocation.hits * self.engine.cache.block_size if request.allocation else 0
        return {
            "prompt_tokens": len(request.prompt),
            "completion_tokens": request.max_tokens,
            "total_tokens": len(request.prompt) + request.max_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "The body is not JSON.")
        return body if isinstance(body, dict) else _error(400, "The body must be a JSON object.")

    @staticmethod
    def _prompt_ids(body: dict[str, Any]) -> list[int] | None:
        if isinstance(messages := body.get("messages"), list):
            return text.render_chat(messages, bool(body.get("add_generation_prompt", True)))
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return [text.BOS, *text.encode(prompt)]
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        return None


class Fleet:
    """Many instances in this process, sharing one simulated clock."""

    def __init__(
        self, clock: Clock, blocks: int, block_size: int = 16, timing: Timing | None = None, kv_groups: int = 1
    ) -> None:
        self.clock, self.blocks, self.block_size, self.kv_groups = clock, blocks, block_size, kv_groups
        self.timing = timing or Timing()
        self.context = zmq.asyncio.Context()
        self.instances: dict[int, Instance] = {}  # by port
        self.retired: list[Instance] = []

    async def add(self, port: int, events_port: int, model: str = MODEL) -> Instance:
        cache = PrefixCache(self.blocks, self.block_size, self.kv_groups)
        engine = Engine(cache, self.clock, self.timing, output_token=text.OUTPUT_TOKEN)
        publisher = Publisher(self.context, events_port, events_port + 1)
        engine.on_events = lambda: publisher.publish(cache.drain_events())
        instance = Instance(port, engine, publisher, model)
        instance.runner = web.AppRunner(instance.app(), access_log=None, handle_signals=False)
        await instance.runner.setup()
        await web.TCPSite(instance.runner, "127.0.0.1", port, backlog=1024).start()
        publisher.start()
        instance.tasks.append(asyncio.ensure_future(engine.run()))
        self.instances[port] = instance
        return instance

    async def remove(self, port: int, drain_timeout_s: float = 600.0) -> None:
        """Take an instance away as a rollout does: its requests in flight finish first."""
        instance = self.instances.pop(port)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(instance.engine.idle.wait(), drain_timeout_s)
        await self._close(instance)
        self.retired.append(instance)

    async def reset(self, restart: bool = False) -> None:
        """Every instance's prefix cache cleared (AllBlocksCleared); with `restart`, its events numbered from 0
        again with an empty replay buffer, as fresh engines would be (between two phases of a run, so that no
        router replays an earlier phase's events)."""
        for instance in self.instances.values():
            instance.engine.cache.reset()
            if restart:
                instance.publisher.restart()
            instance.publisher.publish(instance.engine.cache.drain_events())

    def all(self) -> list[Instance]:
        return [*self.instances.values(), *self.retired]

    async def close(self) -> None:
        for instance in list(self.instances.values()):
            await self._close(instance)
        self.instances.clear()
        self.context.destroy(linger=0)

    async def _close(self, instance: Instance) -> None:
        for task in instance.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if instance.runner is not None:
            await instance.runner.cleanup()
        await instance.publisher.close()


async def serve(args: argparse.Namespace) -> None:
    fleet = Fleet(Clock(args.scale), args.blocks, args.block_size, kv_groups=args.kv_groups)
    for index in range(args.instances):
        await fleet.add(args.port + index, args.events_port + 2 * index, args.model)
    print(json.dumps({"ready": [i.url for i in fleet.instances.values()]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fleet.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--port", type=int, default=9100, help="The first instance's HTTP port; the next ones follow.")
    parser.add_argument("--events-port", type=int, default=9300, help="KV events: two ports an instance from here.")
    parser.add_argument("--blocks", type=int, default=2048, help="KV-cache blocks an instance holds (C).")
    parser.add_argument("--block-size", type=int, default=16, help="Tokens a block (B).")
    parser.add_argument(
        "--kv-groups", type=int, default=1, help="KV-cache groups sharing the pool (a hybrid model's; Gemma 3: 6)."
    )
    parser.add_argument("--scale", type=float, default=1.0, help="Simulated seconds a wall-clock second.")
    parser.add_argument("--model", default=MODEL)
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
