"""Router mode's pass-through: what reaches the client from an instance's SSE body, and the folded answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.relay.call import RelayCall
from gateway.relay.fold import fold
from gateway.relay.read import Routed
from gateway.settings import Settings
from gateway.state import AppState


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events)


def chunk(delta: dict[str, Any], reason: str | None = None, index: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason, **extra}],
    }


USAGE = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 7,
    "model": "m",
    "choices": [],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


class NoRelay:
    async def relay(self, *args: Any) -> AsyncIterator[bytes]:  # never iterated here
        raise AssertionError("not used here")
        yield b""


def call(**body: Any) -> RelayCall:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return RelayCall(AppState(Settings()), NoRelay(), Routed.model_validate(body), body, None, "/v1/chat/completions")  # type: ignore[arg-type]


def test_the_usage_event_is_dropped_unless_asked_for_and_read_either_way() -> None:
    body = sse(chunk({"content": "a"}), USAGE, b"[DONE]")
    quiet = call(stream=True)
    assert quiet.pass_on(body) == sse(chunk({"content": "a"}), b"[DONE]")
    assert quiet.usage["completion_tokens"] == 2
    asked = call(stream=True, stream_options={"include_usage": True})
    assert asked.pass_on(body) == body and asked.usage["prompt_tokens"] == 5


def test_pieces_without_usage_pass_untouched() -> None:
    piece = sse(chunk({"content": "usage: {} is just text"}))
    assert call(stream=True).pass_on(piece) is piece


def test_fold_builds_the_whole_chat_answer_with_tool_calls() -> None:
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, "tool_calls"),
        b"[DONE]",
    )
    answer = fold(body, chat=True, model="public", usage=USAGE["usage"])
    assert (
        answer["object"] == "chat.completion" and answer["model"] == "public" and answer["usage"]["total_tokens"] == 7
    )
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }


def test_fold_keeps_choices_apart_and_joins_logprobs() -> None:
    lp = lambda t: {"content": [{"token": t, "logprob": -0.1, "bytes": None, "top_logprobs": []}]}  # noqa: E731
    body = sse(
        chunk({"role": "assistant", "content": ""}, index=1),
        chunk({"content": "x"}, index=1, logprobs=lp("x")),
        chunk({"content": "a"}, logprobs=lp("a")),
        chunk({"content": "b"}, "stop", logprobs=lp("b")),
        chunk({}, "length", index=1),
        b"[DONE]",
    )
    answer = fold(body, chat=True, model="m", usage={})
    first, second = answer["choices"]
    assert (first["message"]["content"], first["finish_reason"]) == ("ab", "stop")
    assert [e["token"] for e in first["logprobs"]["content"]] == ["a", "b"]
    assert (second["index"], second["message"]["content"], second["finish_reason"]) == (1, "x", "length")


def test_fold_builds_a_legacy_completion() -> None:
    def piece(text: str, reason: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 7,
            "model": "m",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
        }

    answer = fold(sse(piece("Par"), piece("is", "length"), b"[DONE]"), chat=False, model="m", usage={})
    assert answer["object"] == "text_completion"
    assert answer["choices"] == [{"index": 0, "text": "Paris", "logprobs": None, "finish_reason": "length"}]


def test_fold_joins_a_long_answer_piece_by_piece() -> None:
    words = [f"w{i} " for i in range(5000)]
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": w}) for w in words),
        chunk({"content": None}, "length"),
        b"[DONE]",
    )
    [choice] = fold(body, chat=True, model="m", usage={})["choices"]
    assert choice["message"] == {"role": "assistant", "content": "".join(words)}
    assert choice["finish_reason"] == "length"
