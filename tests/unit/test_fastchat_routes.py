"""FastChat's /api/v1/chat/completions behind the same keys and limits as /v1, and the retired /v1/edits."""

from __future__ import annotations

from tests.support.scripted_app import MODEL, RecordingAdapter, chat, scripted_client, settings, state_of

KEY = "sk-fastchat-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
PATH = "/api/v1/chat/completions"


async def test_fastchat_chat_takes_its_request_shape() -> None:
    engine = RecordingAdapter()
    async with scripted_client(settings(), engine) as client:
        one_string = await client.post(
            PATH, json={"model": MODEL, "messages": "hi", "max_tokens": 3, "top_k": 4, "repetition_penalty": 1.1}
        )
        as_list = await client.post(PATH, json=chat(max_tokens=3))
        streamed = await client.post(PATH, json=chat(max_tokens=2, stream=True))
        metrics = state_of(client).metrics
    assert one_string.status_code == 200, one_string.text
    assert one_string.json()["object"] == "chat.completion" and as_list.status_code == 200
    assert engine.requests[0].messages == [{"role": "user", "content": "hi"}]
    assert (engine.requests[0].sampling.top_k, engine.requests[0].sampling.repetition_penalty) == (4, 1.1)
    assert streamed.content.endswith(b"data: [DONE]\n\n")
    assert metrics.requests.labels(MODEL, PATH, "200")._value.get() == 3


async def test_fastchat_chat_needs_a_key_and_keeps_the_limits() -> None:
    async with scripted_client(settings(api_keys=KEY, limits={"max_tokens": 10, "max_prompt_chars": 20})) as client:
        assert (await client.post(PATH, json=chat())).status_code == 401
        capped = await client.post(PATH, json=chat(max_tokens=50), headers=AUTH)
        assert capped.status_code == 400 and capped.json()["error"]["param"] == "max_tokens"
        long_prompt = await client.post(PATH, json={"model": MODEL, "messages": "x" * 50}, headers=AUTH)
        assert long_prompt.status_code == 400 and long_prompt.json()["error"]["param"] == "messages"
        assert (await client.post(PATH, json=chat(max_tokens=2), headers=AUTH)).status_code == 200


async def test_edits_is_retired_in_favour_of_chat() -> None:
    async with scripted_client(settings()) as client:
        answer = await client.post("/v1/edits", json={"model": MODEL, "input": "x", "instruction": "y"})
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert "/v1/chat/completions" in error["message"] and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
