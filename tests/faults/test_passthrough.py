"""Router mode's fast lane (gateway.relay.door): a routed request is checked for what the router itself reads
before it is passed through, and what comes back is the instance's answer, streamed or folded."""

from __future__ import annotations

import asyncio
import re
import socket

import httpx
import orjson
import pytest

from tests.faults.client import completion
from tests.faults.harness import MODEL, Fleet
from tests.support.waiting import until


@pytest.fixture
def fleet(fleet_both: Fleet) -> Fleet:
    """Every test here runs with the router's splice on and off (tests/faults/conftest.py)."""
    return fleet_both


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_completion_tokens": [1]}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"stream": "sometimes"}, "stream"),
        ({"stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
        ({"model": ""}, "model"),
    ],
)
async def test_bad_fields_the_router_reads_are_a_400_from_the_router_itself(
    fleet: Fleet, body: dict[str, object], param: str
) -> None:
    (engine,), router = fleet.start(1)
    before = engine.stats()["requests"]
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        response = await client.post("/v1/completions", json={**completion(max_tokens=4), **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert engine.stats()["requests"] == before  # never passed through


async def test_streamed_and_whole_answers_come_back_whole(fleet: Fleet) -> None:
    _, router = fleet.start(1, tokens=5, delay_ms=1)
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        whole = (await client.post("/v1/completions", json=completion(max_tokens=5))).json()
        streamed = await client.post(
            "/v1/completions",
            json={**completion(max_tokens=5), "stream": True, "stream_options": {"include_usage": True}},
        )
    assert whole["object"] == "text_completion" and whole["usage"]["completion_tokens"] == 5
    assert whole["choices"][0]["finish_reason"] == "length"
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in streamed.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = orjson.loads(events[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    text = "".join(c["text"] for e in events[:-2] for c in orjson.loads(e)["choices"])
    assert text == whole["choices"][0]["text"]


async def test_prompt_logprobs_come_back_in_a_whole_answer(fleet: Fleet) -> None:
    """vLLM gives prompt_logprobs only in a whole answer (it refuses them streamed), so such a request is
    passed through whole rather than streamed and folded; streamed, the instance's refusal comes back."""
    _, router = fleet.start(1, tokens=3, delay_ms=1)
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        whole = await client.post(
            "/v1/completions", json=completion(max_tokens=3, prompt="one two three", prompt_logprobs=1)
        )
        streamed = await client.post(
            "/v1/completions", json={**completion(max_tokens=3), "prompt_logprobs": 1, "stream": True}
        )
    assert whole.status_code == 200, whole.text
    choice = whole.json()["choices"][0]
    assert choice["text"] == "t0 t1 t2 " and choice["prompt_logprobs"][0] is None
    assert len(choice["prompt_logprobs"]) == 3 and whole.json()["usage"]["completion_tokens"] == 3
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "prompt_logprobs"
    metrics = httpx.get(f"{router.url}/metrics", timeout=2).text  # the usage read from the whole answer
    assert re.search(rf'^tokenyard_completion_tokens_total{{model="{MODEL}"}} 3\.0$', metrics, re.M)


async def test_tokenizer_routes_on_a_router_with_one_model(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1)
    model = httpx.get(f"{router.url}/v1/models", timeout=10).json()["data"][0]["id"]
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        unnamed = await client.post("/tokenize", json={"prompt": "one two three"})  # the one model served
        named = await client.post("/tokenize", json={"model": model, "prompt": "one two three"})
        check = await client.post(
            "/api/v1/token_check",
            json={
                "prompts": [
                    {"model": model, "prompt": "one two three", "max_tokens": 10},
                    {"model": model, "prompt": "one two three", "max_tokens": 10**6},
                ]
            },
        )
    assert unnamed.status_code == 200 and unnamed.json() == named.json()
    assert unnamed.json()["tokens"] == [1, 2, 3]
    results = check.json()["prompts"]
    assert [r["tokenCount"] for r in results] == [3, 3] and [r["fits"] for r in results] == [True, False]
    assert results[0]["contextLength"] == named.json()["max_model_len"]


async def test_a_client_that_reads_slowly_gets_every_event_in_order(fleet: Fleet) -> None:
    """The router writes most events straight to the client's socket; once that backs up, they wait in
    order behind the ones already written (engine_adapters.splice.ClientSocket)."""
    tokens = 20000  # about 3 MB: fewer fit in the sockets' buffers and never back the router up
    (engine,), router = fleet.start(1, tokens=tokens, delay_ms=0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the router's side backs up
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(router.url.rsplit(":", 1)[1])))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = orjson.dumps({**completion(max_tokens=tokens), "stream": True})
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    # Not reading until the instance streams (and goes on streaming into the router's full buffers); then read
    # to the end, with a limit on each read's wait rather than on the whole (a busy machine streams slower).
    await until(lambda: engine.stats()["in_flight"] == 1, 30, "the stream under way")
    pieces = []
    while piece := await asyncio.wait_for(reader.read(65536), 60):
        pieces.append(piece)
    raw = b"".join(pieces)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    texts = re.findall(rb'"text":"([^"]*)"', raw)
    assert b"".join(texts) == b"".join(b"t%d " % step for step in range(tokens))
