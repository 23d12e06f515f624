"""OpenAIHttpAdapter against an in-memory transport: SSE to chunks, errors, timeouts, abort."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from engine_adapters.base import Chunk, GenerateRequest, SamplingOptions
from engine_adapters.openai_http import HttpTimeouts, OpenAIHttpAdapter, parse_load, request_payload
from gateway.errors import ContextLengthExceeded, EngineUnavailable, InvalidRequest, ModelNotFound, RateLimited

Handler = Callable[[httpx.Request], Any]


def adapter(handler: Handler, **timeouts: float) -> OpenAIHttpAdapter:
    client = httpx.AsyncClient(base_url="http://upstream", transport=httpx.MockTransport(handler))
    return OpenAIHttpAdapter("http://upstream", "upstream-model", client=client,
                             timeouts=HttpTimeouts(**{"first_token_s": 1.0, "idle_s": 1.0, **timeouts}))


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events)


def chat_request(**sampling: Any) -> GenerateRequest:
    return GenerateRequest("req-1", "public", SamplingOptions(**sampling), messages=[{"role": "user", "content": "hi"}])


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def delta(content: str | None, reason: str | None = None, index: int = 0) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": {"content": content} if content else {}, "finish_reason": reason}]}


async def test_chat_stream_becomes_chunks_with_exact_usage() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(request.content))
        body = sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                   delta("Hel"), delta("lo", "length"),
                   {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}, b"[DONE]")
        # Split mid-line, as TCP may: the reader must join the pieces.
        return httpx.Response(200, content=pieces(body[:37], body[37:90], body[90:]))

    chunks = await collect(adapter(handler).generate(chat_request(max_tokens=3, temperature=0.5, stop=("x",))))
    assert [(c.text, c.finish_reason) for c in chunks] == [("", None), ("Hel", None), ("lo", None), ("", "length")]
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (7, 3)
    body = sent[0]
    assert body["model"] == "upstream-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["stop"]) == (3, 0.5, ["x"])
    assert "top_p" not in body  # None means the upstream's default


async def test_completion_logprobs_are_mapped() -> None:
    event = {"choices": [{"index": 0, "text": "a", "finish_reason": "stop", "logprobs": {
        "tokens": ["a"], "token_logprobs": [-0.5], "top_logprobs": [{"a": -0.5, "b": -1.0}], "text_offset": [0]}}]}

    def handler(request: httpx.Request) -> httpx.Response:
        assert orjson.loads(request.content)["logprobs"] == 2 and request.url.path == "/v1/completions"
        return httpx.Response(200, content=sse(event, b"[DONE]"))

    req = GenerateRequest("r", "public", SamplingOptions(logprobs=2), prompt="x")
    chunks = await collect(adapter(handler).generate(req))
    assert chunks[0].logprobs and chunks[0].logprobs[0].top == (("a", -0.5), ("b", -1.0))
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 1  # counted: no usage sent


@pytest.mark.parametrize(("status", "body", "error"), [
    (400, {"error": {"message": "too long", "code": "context_length_exceeded", "param": "messages"}},
     ContextLengthExceeded),
    (400, {"error": {"message": "bad", "code": None}}, InvalidRequest),
    (404, {"error": {"message": "no such model"}}, ModelNotFound),
    (429, {"error": {"message": "busy"}}, RateLimited),
    (503, {"error": {"message": "down"}}, EngineUnavailable),
    (502, b"<html>bad gateway</html>", EngineUnavailable),
    (401, {"error": {"message": "bad key"}}, EngineUnavailable),  # the router's key for the instance
])
async def test_upstream_errors_map_onto_the_error_tree(status: int, body: Any, error: type[Exception]) -> None:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(error) as raised:
        await collect(adapter(lambda r: httpx.Response(status, content=content)).generate(chat_request()))
    if isinstance(raised.value, ModelNotFound):
        assert "public" in raised.value.message  # the client's name, not the upstream's


async def test_connect_error_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(EngineUnavailable):
        await collect(adapter(refuse).generate(chat_request()))


async def test_an_error_event_mid_stream_is_raised() -> None:
    body = sse(delta("a"), {"error": {"message": "engine died", "code": "engine_unavailable"}})
    with pytest.raises(EngineUnavailable):
        await collect(adapter(lambda r: httpx.Response(200, content=body)).generate(chat_request()))


async def test_a_stream_that_ends_early_is_unavailable() -> None:
    with pytest.raises(EngineUnavailable):
        await collect(adapter(lambda r: httpx.Response(200, content=sse(delta("a")))).generate(chat_request()))


async def slow_body(first: bytes, pause_s: float) -> AsyncIterator[bytes]:
    if first:
        yield first
    await asyncio.sleep(pause_s)
    yield sse(delta("late", "stop"), b"[DONE]")


async def test_first_token_timeout() -> None:
    slow = adapter(lambda r: httpx.Response(200, content=slow_body(b"", 5)), first_token_s=0.2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(EngineUnavailable):
        await collect(slow.generate(chat_request()))
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_idle_timeout_cuts_a_stalled_stream() -> None:
    stalled = adapter(lambda r: httpx.Response(200, content=slow_body(sse(delta("a")), 5)), idle_s=0.2)
    seen: list[str] = []
    with pytest.raises(EngineUnavailable):
        async for chunk in stalled.generate(chat_request()):
            seen.append(chunk.text)
    assert seen == ["a"]


class Endless(httpx.AsyncByteStream):
    """An upstream body that never ends, and tells when the connection is closed."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield sse(delta("x"))
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        self.closed.set()


async def test_abort_closes_the_upstream_response() -> None:
    body = Endless()
    http = adapter(lambda r: httpx.Response(200, stream=body))
    stream = http.generate(chat_request())
    await anext(stream)
    assert http.load().in_flight == 1
    await http.abort("req-1")
    await asyncio.wait_for(body.closed.wait(), 1)
    await http.abort("req-1")  # idempotent
    assert http.load().in_flight == 0


async def test_embeddings_models_and_load() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/embeddings":
            data = [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]
            return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 4}})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "upstream-model", "max_model_len": 512}]})
        return httpx.Response(200, text="ok")

    http = adapter(handler)
    assert await http.embed("e", "public", ["a", "b"]) == ([[1.0, 0.0], [0.0, 1.0]], 4)
    await http.start()
    assert http.max_model_len() == 512
    await http.check_health()


def test_parse_load_prefers_this_models_lines() -> None:
    text = (b'# HELP vllm:num_requests_running x\n'
            b'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
            b'vllm:num_requests_running{engine="0",model_name="other"} 9.0\n'
            b'vllm:num_requests_waiting{model_name="m"} 1.0\n'
            b'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
            b'vllm:num_requests_running_total 5\n')
    load = parse_load(text, "m")
    assert (load.running, load.waiting, load.kv_cache_usage) == (2.0, 1.0, 0.25)
    assert parse_load(b"vllm:num_requests_waiting 3\n", "m").waiting == 3.0


def test_echo_with_logprobs_is_refused() -> None:
    req = GenerateRequest("r", "m", SamplingOptions(logprobs=1, prompt_logprobs=1), prompt="x")
    with pytest.raises(InvalidRequest):
        request_payload(req, "m")
