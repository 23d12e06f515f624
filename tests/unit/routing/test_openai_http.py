"""OpenAIHttpAdapter against a scripted upstream on a real port: SSE to chunks, errors, timeouts, abort, relay."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from engine_adapters.base import Chunk, GenerateRequest, RouteRequest, SamplingOptions
from engine_adapters.openai_http import HttpTimeouts, OpenAIHttpAdapter, _Events
from engine_adapters.openai_wire import USAGE_EVENT, parse_load, request_payload
from gateway.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
)

Reply = Callable[[str, Any], Awaitable["Answer"]]


@dataclass
class Answer:
    """What the fake upstream sends: a status, then body parts; a float part is a pause in seconds."""

    status: int = 200
    parts: Sequence[bytes | float] = ()
    content_type: str = "text/event-stream"


class Upstream:
    """A real HTTP server on a free port whose answers the test scripts (`reply`, per request)."""

    def __init__(self) -> None:
        self.reply: Reply = lambda path, body: _answer(Answer(404))
        self.sent: list[Any] = []
        self.closed = asyncio.Event()  # the client left while the body was still being written
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read()) if request.can_read_body else None
        self.sent.append(body)
        answer = await self.reply(request.path, body)
        response = web.StreamResponse(status=answer.status, headers={"content-type": answer.content_type})
        await response.prepare(request)
        try:
            for part in answer.parts:
                if isinstance(part, float):
                    await asyncio.sleep(part)
                else:
                    await response.write(part)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.closed.set()
            raise
        return response


async def _answer(answer: Answer) -> Answer:
    return answer


def replying(*parts: bytes | float, status: int = 200, content_type: str = "text/event-stream") -> Reply:
    return lambda path, body: _answer(Answer(status, parts, content_type))


@pytest_asyncio.fixture(loop_scope="function")  # the server must run on the test's own loop
async def upstream() -> AsyncIterator[Upstream]:
    fake = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="function")
async def make(upstream: Upstream) -> AsyncIterator[Callable[..., OpenAIHttpAdapter]]:
    made: list[OpenAIHttpAdapter] = []

    def adapter(url: str | None = None, **timeouts: float) -> OpenAIHttpAdapter:
        made.append(
            OpenAIHttpAdapter(
                url or upstream.url,
                "upstream-model",
                timeouts=HttpTimeouts(**{"first_token_s": 1.0, "idle_s": 1.0, **timeouts}),
            )
        )
        return made[-1]

    yield adapter
    for http in made:
        await http.close()


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events)


def chat_request(**sampling: Any) -> GenerateRequest:
    return GenerateRequest("req-1", "public", SamplingOptions(**sampling), messages=[{"role": "user", "content": "hi"}])


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


def delta(content: str | None, reason: str | None = None, index: int = 0) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": {"content": content} if content else {}, "finish_reason": reason}]}


async def test_chat_stream_becomes_chunks_with_exact_usage(upstream: Upstream, make: Any) -> None:
    body = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        delta("Hel"),
        delta("lo", "length"),
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
        b"[DONE]",
    )
    # Split mid-line, as TCP may: the reader must join the pieces.
    upstream.reply = replying(body[:37], 0.01, body[37:90], 0.01, body[90:])
    chunks = await collect(make().generate(chat_request(max_tokens=3, temperature=0.5, stop=("x",))))
    assert [(c.text, c.finish_reason) for c in chunks] == [("", None), ("Hel", None), ("lo", None), ("", "length")]
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (7, 3)
    body = upstream.sent[0]
    assert body["model"] == "upstream-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["stop"]) == (3, 0.5, ["x"])
    assert "top_p" not in body  # None means the upstream's default


async def test_completion_logprobs_are_mapped(upstream: Upstream, make: Any) -> None:
    event = {
        "choices": [
            {
                "index": 0,
                "text": "a",
                "finish_reason": "stop",
                "logprobs": {
                    "tokens": ["a"],
                    "token_logprobs": [-0.5],
                    "top_logprobs": [{"a": -0.5, "b": -1.0}],
                    "text_offset": [0],
                },
            }
        ]
    }

    async def reply(path: str, body: Any) -> Answer:
        assert body["logprobs"] == 2 and path == "/v1/completions"
        return Answer(200, [sse(event, b"[DONE]")])

    upstream.reply = reply
    req = GenerateRequest("r", "public", SamplingOptions(logprobs=2), prompt="x")
    chunks = await collect(make().generate(req))
    assert chunks[0].logprobs and chunks[0].logprobs[0].top == (("a", -0.5), ("b", -1.0))
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 1  # counted: no usage sent


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (
            400,
            {"error": {"message": "too long", "code": "context_length_exceeded", "param": "messages"}},
            ContextLengthExceeded,
        ),
        (400, {"error": {"message": "bad", "code": None}}, InvalidRequest),
        (404, {"error": {"message": "no such model"}}, ModelNotFound),
        (429, {"error": {"message": "busy"}}, RateLimited),
        (503, {"error": {"message": "down"}}, EngineUnavailable),
        (502, b"<html>bad gateway</html>", EngineUnavailable),
        (401, {"error": {"message": "bad key"}}, EngineUnavailable),  # the router's key for the instance
        (
            500,
            {
                "error": {
                    "message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                    "type": "InternalServerError",
                    "code": 500,
                }
            },
            EngineUnavailable,
        ),  # vLLM's engine died
        (500, {"error": {"message": "cannot render this prompt", "code": 500}}, GatewayError),
    ],
)
async def test_upstream_errors_map_onto_the_error_tree(
    upstream: Upstream, make: Any, status: int, body: Any, error: type[Exception]
) -> None:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    upstream.reply = replying(content, status=status, content_type="application/json")
    with pytest.raises(error) as raised:
        await collect(make().generate(chat_request()))
    assert type(raised.value) is error
    if isinstance(raised.value, ModelNotFound):
        assert "public" in raised.value.message  # the client's name, not the upstream's


async def test_connect_error_is_unavailable(make: Any) -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    with pytest.raises(EngineUnavailable, match="connect"):
        await collect(make(url).generate(chat_request()))


async def test_an_error_event_mid_stream_is_raised_after_what_came_before(upstream: Upstream, make: Any) -> None:
    upstream.reply = replying(sse(delta("a"), {"error": {"message": "engine died", "code": "engine_unavailable"}}))
    seen: list[str] = []
    with pytest.raises(EngineUnavailable):
        async for chunk in make().generate(chat_request()):
            seen.append(chunk.text)
    assert seen == ["a"]


async def test_a_stream_that_ends_early_is_unavailable(upstream: Upstream, make: Any) -> None:
    upstream.reply = replying(sse(delta("a")))
    with pytest.raises(EngineUnavailable, match="ended"):
        await collect(make().generate(chat_request()))


async def test_first_token_timeout(upstream: Upstream, make: Any) -> None:
    upstream.reply = replying(5.0, sse(delta("late", "stop"), b"[DONE]"))
    started = asyncio.get_running_loop().time()
    with pytest.raises(EngineUnavailable):
        await collect(make(first_token_s=0.2).generate(chat_request()))
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_idle_timeout_cuts_a_stalled_stream(upstream: Upstream, make: Any) -> None:
    upstream.reply = replying(sse(delta("a")), 5.0, sse(delta("late", "stop"), b"[DONE]"))
    seen: list[str] = []
    with pytest.raises(EngineUnavailable, match="stalled"):
        async for chunk in make(idle_s=0.2).generate(chat_request()):
            seen.append(chunk.text)
    assert seen == ["a"]


async def test_a_stream_that_keeps_flowing_is_cut_at_the_total_limit(upstream: Upstream, make: Any) -> None:
    # Every read comes well within the idle limit, and each one pushes the idle deadline on; the total does not move.
    upstream.reply = replying(*[part for _ in range(200) for part in (sse(delta("x")), 0.05)])
    started = asyncio.get_running_loop().time()
    seen: list[str] = []
    with pytest.raises(EngineUnavailable, match="stalled"):
        async for chunk in make(idle_s=0.3, total_s=0.6).generate(chat_request()):
            seen.append(chunk.text)
    assert 0.5 < asyncio.get_running_loop().time() - started < 2.0
    assert 5 <= len(seen) < 20


async def test_abort_closes_the_upstream_response(upstream: Upstream, make: Any) -> None:
    upstream.reply = replying(*[part for _ in range(1000) for part in (sse(delta("x")), 0.01)])
    http = make()
    stream = http.generate(chat_request())
    await anext(stream)
    assert http.load().in_flight == 1
    await http.abort("req-1")
    await asyncio.wait_for(upstream.closed.wait(), 2)
    await http.abort("req-1")  # idempotent
    assert http.load().in_flight == 0


async def test_relay_passes_events_through_renamed(upstream: Upstream, make: Any) -> None:
    first = {"id": "x", "model": "upstream-model", "choices": [{"index": 0, "delta": {"content": "a"}}]}
    body = sse(first, b"[DONE]")
    upstream.reply = replying(body[:20], 0.01, body[20:])
    http = make()
    pieces = [
        piece
        async for piece in http.relay(
            RouteRequest("req-1", "public"), "/v1/chat/completions", {"model": "public", "tools": []}
        )
    ]
    assert b"".join(pieces) == body.replace(b'"model":"upstream-model"', b'"model":"public"')
    assert all(piece.endswith(b"\n\n") for piece in pieces)  # whole events only
    sent = upstream.sent[0]
    assert sent["model"] == "upstream-model" and sent["tools"] == [] and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


class ListSink:
    """A base.Sink that keeps what it is given."""

    def __init__(self, ready: bool = True) -> None:
        self.ready_now, self.written = ready, []

    def ready(self) -> bool:
        return self.ready_now

    def write(self, events: bytes) -> None:
        self.written.append(events)


@pytest.mark.parametrize("ready", [True, False])
async def test_relay_puts_the_middle_events_into_a_ready_sink(upstream: Upstream, make: Any, ready: bool) -> None:
    events = [sse(delta(text)) for text in "abc"] + [
        sse({"choices": [], "usage": {"prompt_tokens": 1}}),
        sse(b"[DONE]"),
    ]
    parts: list[bytes | float] = [part for event in events for part in (event, 0.02)]
    upstream.reply = replying(*parts)
    sink = ListSink(ready)
    http = make()
    pieces = [
        piece
        async for piece in http.relay(
            RouteRequest("req-1", "public"), "/v1/chat/completions", {"model": "public"}, sink
        )
    ]
    if ready:  # the first is yielded (it starts the answer), and so are the usage and [DONE] events
        assert pieces == [events[0], *events[3:]] and sink.written == events[1:3]
    else:
        assert pieces == events and sink.written == []
    assert http.load().in_flight == 0


async def test_an_error_event_cut_in_two_still_ends_a_sunk_stream(upstream: Upstream, make: Any) -> None:
    error = sse({"error": {"message": "engine died", "code": "engine_unavailable"}})
    cut = error.index(b"err") + 3  # neither half holds the error's mark
    upstream.reply = replying(
        sse(delta("a")), 0.02, sse(delta("b")) + error[:cut], 0.02, error[cut:], 0.02, sse(b"[DONE]")
    )
    sink = ListSink()
    http = make()
    pieces: list[bytes] = []
    with pytest.raises(EngineUnavailable, match="instance is unavailable"):  # the event's, not a broken stream
        async for piece in http.relay(
            RouteRequest("req-1", "public"), "/v1/chat/completions", {"model": "public"}, sink
        ):
            pieces.append(piece)
    assert pieces == [sse(delta("a"))] and sink.written == [sse(delta("b"))]


async def test_what_vllm_answers_only_whole_is_sent_and_passed_on_as_it_is(upstream: Upstream, make: Any) -> None:
    answer = {
        "id": "x",
        "object": "text_completion",
        "model": "upstream-model",
        "choices": [{"index": 0, "text": "a", "prompt_logprobs": [None]}],
        "usage": {"prompt_tokens": 1},
    }

    async def reply(path: str, body: Any) -> Answer:
        await asyncio.sleep(0.4)  # the head comes with the whole answer, past the first-token limit
        return Answer(200, [orjson.dumps(answer)], "application/json")

    upstream.reply = reply
    http = make(first_token_s=0.2)
    pieces = [
        piece
        async for piece in http.relay(
            RouteRequest("req-1", "public"), "/v1/completions", {"model": "public", "prompt_logprobs": 1}
        )
    ]
    assert [orjson.loads(piece) for piece in pieces] == [{**answer, "model": "public"}]
    assert upstream.sent[0] == {"model": "upstream-model", "prompt_logprobs": 1}  # not turned into a stream
    assert http.load().in_flight == 0


async def test_embeddings_models_and_load(upstream: Upstream, make: Any) -> None:
    async def reply(path: str, body: Any) -> Answer:
        if path == "/v1/embeddings":
            data = [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]
            return Answer(200, [orjson.dumps({"data": data, "usage": {"prompt_tokens": 4}})], "application/json")
        if path == "/v1/models":
            return Answer(
                200, [orjson.dumps({"data": [{"id": "upstream-model", "max_model_len": 512}]})], "application/json"
            )
        return Answer(200, [b"ok"], "text/plain")

    upstream.reply = reply
    http = make()
    assert await http.embed("e", "public", ["a", "b"]) == ([[1.0, 0.0], [0.0, 1.0]], 4)
    await http.start()
    assert http.max_model_len() == 512
    await http.check_health()


async def test_an_older_model_list_answered_late_does_not_replace_a_newer_one(upstream: Upstream, make: Any) -> None:
    # A health check asks, an adapter is loaded, the refresh after the load is answered first: the health
    # check's late answer (without the adapter) must not win.
    release_first = asyncio.Event()
    lists = [["upstream-model"], ["upstream-model", "ad-1"]]

    async def reply(path: str, body: Any) -> Answer:
        ids = lists.pop(0)
        if len(ids) == 1:
            await release_first.wait()
        return Answer(200, [orjson.dumps({"data": [{"id": i} for i in ids]})], "application/json")

    upstream.reply = reply
    http = make()
    first = asyncio.ensure_future(http.refresh_models())
    while len(upstream.sent) < 1:
        await asyncio.sleep(0.01)
    await http.refresh_models()
    assert [m.name for m in http.models()] == ["upstream-model", "ad-1"]
    release_first.set()
    await first
    assert [m.name for m in http.models()] == ["upstream-model", "ad-1"]


def test_parse_load_prefers_this_models_lines() -> None:
    text = (
        b"# HELP vllm:num_requests_running x\n"
        b'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        b'vllm:num_requests_running{engine="0",model_name="other"} 9.0\n'
        b'vllm:num_requests_waiting{model_name="m"} 1.0\n'
        b'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
        b"vllm:num_requests_running_total 5\n"
    )
    load = parse_load(text, "m")
    assert (load.running, load.waiting, load.kv_cache_usage) == (2.0, 1.0, 0.25)
    assert parse_load(b"vllm:num_requests_waiting 3\n", "m").waiting == 3.0


def test_echo_with_logprobs_is_refused() -> None:
    req = GenerateRequest("r", "m", SamplingOptions(logprobs=1, prompt_logprobs=1), prompt="x")
    with pytest.raises(InvalidRequest):
        request_payload(req, "m")


@pytest.mark.parametrize("spelling", [b'data: {"error": {', b'data:{ "error" : {', b'data:  {\t"error":{'])
def test_the_events_the_relay_acts_on_are_found_in_any_spacing(spelling: bytes) -> None:
    events = _Events("m", None)
    head = events.feed(b'data: {"choices": []}\n\n' + spelling + b'"message": "x", "code": 400}}\n\n')
    assert head == b'data: {"choices": []}\n\n' and isinstance(events.error, InvalidRequest)
    done = _Events("m", None)
    assert done.feed(b"data:[DONE]\n\n") == b"data: [DONE]\n\n" and done.done
    assert USAGE_EVENT.search(b'{"usage" :\n{"prompt_tokens": 1}}') and not USAGE_EVENT.search(b'{"usage": null}')


def test_events_are_cut_wherever_the_reads_split_them_and_an_unended_one_is_bounded() -> None:
    body = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    for size in (1, 2, 3, 7, len(body)):  # every split: a blank line may lie across two reads
        events = _Events("m", None)
        out = b"".join(events.feed(body[at : at + size]) for at in range(0, len(body), size))
        assert out == body and events.done, size
    bounded = _Events("m", None, max_event_bytes=1024)
    assert bounded.feed(b'data: {"x": "') == b""
    with pytest.raises(EngineUnavailable, match="longer than 1024 bytes"):
        for _ in range(100):
            bounded.feed(b"y" * 100)
