"""The tokenizer routes and /v1/responses over the scripted engine: the front door, the mapping onto the
chat path, and a stream that fails half way. (The real engine's answers are in tests/e2e.)"""

from __future__ import annotations

import orjson
import pytest

from tests.support.scripted_app import MODEL, RecordingAdapter, scripted_client, settings
from tests.support.scripted_engine import Script

KEY = "sk-tokenize-0123456789"
ROUTES = [
    ("POST", "/tokenize", {"model": MODEL, "prompt": "x"}),
    ("POST", "/detokenize", {"model": MODEL, "tokens": [1]}),
    ("POST", "/api/v1/token_check", {"prompts": [{"model": MODEL, "prompt": "x", "max_tokens": 1}]}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x"}),
    ("GET", "/v1/responses/resp_1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_routes_need_a_key(method: str, path: str, body: dict[str, object] | None) -> None:
    async with scripted_client(settings(api_keys=KEY)) as client:
        refused = await client.request(method, path, json=body)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        allowed = await client.request(method, path, json=body, headers={"authorization": f"Bearer {KEY}"})
        assert allowed.status_code != 401


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
async def test_engine_without_a_tokenizer_says_so(path: str) -> None:
    body = {"model": MODEL, "prompt": "x"} if path == "/tokenize" else {"model": MODEL, "tokens": [1]}
    async with scripted_client(settings()) as client:
        answer = await client.post(path, json=body)
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": f"Tokenization is not supported for the model `{MODEL}`.",
        "type": "invalid_request_error",
        "param": "model",
        "code": None,
    }


async def test_tokenize_names_the_only_model_by_default() -> None:
    async with scripted_client(settings()) as client:
        answer = await client.post("/tokenize", json={"prompt": "x"})
    assert answer.json()["error"]["message"].endswith(f"`{MODEL}`.")  # it got as far as the one model


async def test_responses_request_becomes_a_chat_request() -> None:
    engine = RecordingAdapter()
    async with scripted_client(settings(), engine) as client:
        answer = await client.post(
            "/v1/responses",
            json={
                "model": MODEL,
                "instructions": "Be brief.",
                "max_output_tokens": 5,
                "temperature": 0.5,
                "top_p": 0.9,
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
                    },
                    {"type": "message", "role": "assistant", "content": "c"},
                    {"role": "developer", "content": "d"},
                ],
            },
        )
    assert answer.status_code == 200, answer.text
    request = engine.requests[0]
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"},
        {"role": "developer", "content": "d"},
    ]
    assert request.add_generation_prompt and request.request_id == answer.json()["id"]
    assert (request.sampling.max_tokens, request.sampling.temperature, request.sampling.top_p) == (5, 0.5, 0.9)
    body = answer.json()
    assert body["output"][0]["content"][0]["text"] == "t0 t1 t2 t3 t4 " and body["status"] == "incomplete"
    assert body["usage"]["input_tokens"] == 3 and body["usage"]["total_tokens"] == 8


async def test_responses_stream_failure_ends_with_an_error_event() -> None:
    engine = RecordingAdapter(script=Script(tokens=6, fail_after=2))
    async with scripted_client(settings(), engine) as client:
        answer = await client.post("/v1/responses", json={"model": MODEL, "input": "x", "stream": True})
        blocks = [b for b in answer.content.split(b"\n\n") if b]
        kinds = [b.split(b"\n")[0].removeprefix(b"event: ").decode() for b in blocks]
        assert kinds[-4:] == ["response.output_text.delta", "response.output_text.delta", "error", "response.failed"]
        error, failed = (orjson.loads(block.split(b"\n")[1].removeprefix(b"data: ")) for block in blocks[-2:])
        assert error == {
            "type": "error",
            "sequence_number": len(blocks) - 2,
            "code": None,
            "message": "The server had an error while processing your request.",
            "param": None,
        }
        assert failed["sequence_number"] == len(blocks) - 1 and failed["response"]["status"] == "failed"
        stored = await client.get(f"/v1/responses/{failed['response']['id']}")
        assert stored.json()["status"] == "failed" and stored.json()["error"]["code"] == "server_error"


async def test_max_output_tokens_is_capped_like_max_tokens() -> None:
    async with scripted_client(settings(limits={"max_tokens": 10})) as client:
        answer = await client.post("/v1/responses", json={"model": MODEL, "input": "x", "max_output_tokens": 11})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "max_output_tokens"
