"""A route passes on whatever its instances serve: images, audio, video, files, vLLM's extras and part types
nobody knows yet reach the instance as the client sent them, streamed and whole, and the instance's own 400
comes back unchanged (gateway.relay.read: the router reads only what it needs)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest

from tests.faults.harness import MODEL, Engine, Fleet

PIXEL = base64.b64encode(bytes.fromhex("89504e470d0a1a0a")).decode()  # the start of a PNG: never decoded here
TEXT = {"type": "text", "text": "What is in this?"}

# (what the table row shows, the user message's content parts, top-level fields)
PARTS: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [
    ("image by URL", [TEXT, {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], {}),
    (
        "image as data URL, detail",
        [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}", "detail": "high"}}, TEXT],
        {},
    ),
    ("input_audio", [TEXT, {"type": "input_audio", "input_audio": {"data": PIXEL, "format": "wav"}}], {}),
    ("audio_url", [{"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"}}], {}),
    ("video_url", [TEXT, {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}], {}),
    ("file", [TEXT, {"type": "file", "file": {"file_data": PIXEL, "filename": "a.pdf"}}], {}),
    ("image_embeds", [{"type": "image_embeds", "image_embeds": PIXEL}, TEXT], {}),
    ("image_pil-style extra", [{"type": "image_pil", "image_pil": PIXEL}, TEXT], {}),
    ("a part type nobody knows yet", [TEXT, {"type": "hologram", "hologram": {"frames": [1, 2.5, None]}}], {}),
    (
        "vLLM's extra fields",
        [TEXT, {"type": "image_url", "image_url": {"url": "https://example.com/x.jpg"}, "uuid": "img-1"}],
        {
            "mm_processor_kwargs": {"num_crops": 4, "do_pan_and_scan": True},
            "media_io_kwargs": {"video": {"num_frames": 8}},
            "a_field_from_the_future": {"nested": [1, "two"]},
        },
    ),
]
ASSISTANT_TURN = {
    "role": "assistant",
    "content": [{"type": "refusal", "refusal": "I cannot."}, {"type": "text", "text": "But here is a cat."}],
    "audio": {"id": "audio_abc"},
}


def chat(parts: list[dict[str, Any]], extra: dict[str, Any], stream: bool) -> dict[str, Any]:
    messages = [{"role": "user", "content": parts}, ASSISTANT_TURN, {"role": "user", "content": parts}]
    return {"model": MODEL, "messages": messages, "max_tokens": 3, "stream": stream, **extra}


def received(engine: Engine) -> dict[str, Any]:
    """The body of the last generation request the instance received, as it parsed it."""
    last = [r for r in engine.requests() if r["path"] == "/v1/chat/completions"][-1]
    body: dict[str, Any] = orjson.loads(last["body"])
    return body


def as_sent(body: dict[str, Any]) -> dict[str, Any]:
    """What an instance must receive for `body`: the same, except that the router always streams from the
    instance and asks for usage (what it charges is read there)."""
    options = {**(body.get("stream_options") or {}), "include_usage": True}
    return {**body, "stream": True, "stream_options": options}


@pytest.fixture
def fleet(fleet_both: Fleet) -> Fleet:
    """Every test here runs with the router's splice on and off (tests/faults/conftest.py)."""
    return fleet_both


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_every_part_type_reaches_the_instance_as_the_client_sent_it(fleet: Fleet, stream: bool) -> None:
    (engine,), router = fleet.start(1, tokens=3, delay_ms=1)
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        for name, parts, extra in PARTS:
            body = chat(parts, extra, stream)
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, (name, response.text)
            if stream:
                assert response.text.endswith("data: [DONE]\n\n"), name
            else:
                assert response.json()["choices"][0]["message"]["content"] == "t0 t1 t2 ", name
            assert received(engine) == as_sent(body), name


async def test_the_instance_s_own_400_comes_back_unchanged(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1, tokens=3, delay_ms=1)
    engine.control(text_only=True)
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        for stream in (True, False):
            body = {"model": MODEL, "messages": [{"role": "user", "content": [TEXT, image]}], "stream": stream}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 400
            error = response.json()["error"]
            assert error["param"] == "messages[0].content[1]"
            assert error["message"] == "'image_url' parts are not supported: the model takes text only."
            assert error["type"] == "invalid_request_error"  # the status's OpenAI type, as every error of ours
    assert engine.stats()["requests"] == 2  # refused by the instance, not by the router


async def test_anthropic_image_and_document_blocks_pass_through_as_bytes(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1, tokens=3, delay_ms=1)
    blocks = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PIXEL}},
        {"type": "text", "text": "Describe these."},
    ]
    raw = orjson.dumps(
        {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": blocks}], "x_extra": 1}
    )
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        response = await client.post("/v1/messages", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    last = [r for r in engine.requests() if r["path"] == "/v1/messages"][-1]
    assert last["body"].encode() == raw  # byte for byte
