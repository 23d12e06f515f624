"""Router mode's other paths (gateway.relay.raw): vLLM's Messages, rerank, score, pooling, classify and audio
uploads, and a route's passthrough_paths, passed through to an instance as bytes, through real processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator

import httpx
import orjson

from tests.faults.harness import MODEL, Engine, Fleet
from tests.support.waiting import until

BOUNDARY = "tokenyard-test-boundary"
MESSAGE = {"model": MODEL, "max_tokens": 6, "messages": [{"role": "user", "content": "one two three"}]}
RERANK = {"model": MODEL, "query": "what", "documents": ["a b", "c"]}


def _form_head(audio_name: str = "a.wav", **fields: str) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="file"; filename="{audio_name}"\r\n'
        "content-type: audio/wav\r\n\r\n"
    )
    return "".join(parts).encode()


FORM_END = f"\r\n--{BOUNDARY}--\r\n".encode()
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def _metric(router_url: str, name: str, labels: str) -> float:
    text = httpx.get(f"{router_url}/metrics", timeout=2).text
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_an_audio_upload_streams_through_to_the_instance(fleet: Fleet) -> None:
    """The instance sees the upload's first bytes while the client still holds back the rest: the router
    routed it by its `model` field and streamed it on, rather than reading it whole first."""
    (engine,), router = fleet.start(1)
    audio = os.urandom(4 * 1024 * 1024)
    half = len(audio) // 2

    async def upload() -> AsyncIterator[bytes]:  # no length: sent chunked
        yield _form_head(model=MODEL)
        for at in range(0, half, 64 * 1024):
            yield audio[at : at + 64 * 1024]
        await until(lambda: engine.stats()["upload_bytes"] > 0, 10, "the first bytes at the instance")
        seen = engine.stats()["upload_bytes"]
        assert seen < len(audio), seen
        for at in range(half, len(audio), 64 * 1024):
            yield audio[at : at + 64 * 1024]
        yield FORM_END

    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        response = await client.post("/v1/audio/transcriptions", content=upload(), headers={"content-type": FORM_TYPE})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["sha256"] == hashlib.sha256(audio).hexdigest() and answer["model"] == MODEL
    assert (
        _metric(
            router.url, "tokenyard_requests_total", f'model="{MODEL}",route="/v1/audio/transcriptions",status="200"'
        )
        == 1
    )


async def test_a_streamed_translation_with_a_length_comes_back_as_the_instance_sent_it(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1)
    audio = os.urandom(300_000)
    files = {"file": ("a.wav", audio, "audio/wav")}
    async with httpx.AsyncClient(timeout=30) as client:
        routed = await client.post(
            f"{router.url}/v1/audio/translations", data={"model": MODEL, "stream": "true"}, files=files
        )
        direct = await client.post(
            f"{engine.url}/v1/audio/translations", data={"model": MODEL, "stream": "true"}, files=files
        )
    assert routed.status_code == 200 and routed.headers["content-type"] == "text/event-stream"
    assert routed.content == direct.content
    assert hashlib.sha256(audio).hexdigest().encode() in routed.content
    assert _metric(router.url, "tokenyard_prompt_tokens_total", f'model="{MODEL}"') == 7  # the SSE usage


async def test_an_upload_past_the_body_limit_is_cut_off_with_413(fleet: Fleet) -> None:
    _, router = fleet.start(1, config={"limits": {"max_body_bytes": 1024 * 1024}})

    # 1.75 MiB: past the cap, and within the twice-the-cap that the router reads and drops before its answer
    # (BodyStream.discard). Beyond that the connection closes on unread bytes, and the reset may lose the 413.
    async def upload() -> AsyncIterator[bytes]:
        yield _form_head(model=MODEL)
        for _ in range(28):
            yield b"\0" * 64 * 1024
        yield FORM_END

    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        response = await client.post("/v1/audio/transcriptions", content=upload(), headers={"content-type": FORM_TYPE})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


async def test_a_streamed_message_is_relayed_byte_for_byte(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1, tokens=6, delay_ms=1)
    body = {**MESSAGE, "stream": True}
    async with httpx.AsyncClient(timeout=30) as client:
        routed = await client.post(f"{router.url}/v1/messages", json=body)
        direct = await client.post(f"{engine.url}/v1/messages", json=body)
        whole = await client.post(f"{router.url}/v1/messages", json=MESSAGE)
    assert routed.status_code == 200 and routed.headers["content-type"] == "text/event-stream"
    assert routed.content == direct.content and b"event: message_stop" in routed.content
    assert whole.json()["content"][0]["text"] == "t0 t1 t2 t3 t4 t5 "
    # Tokens from Anthropic's usage: 3 in and 6 out, for each of the two answers.
    assert _metric(router.url, "tokenyard_completion_tokens_total", f'model="{MODEL}"') == 12
    assert _metric(router.url, "tokenyard_prompt_tokens_total", f'model="{MODEL}"') == 6
    assert _metric(router.url, "tokenyard_requests_total", f'model="{MODEL}",route="/v1/messages",status="200"') == 2


async def test_a_message_stream_that_breaks_ends_with_anthropics_error_event(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1, tokens=8, delay_ms=1)
    engine.control(fault="reset")
    async with httpx.AsyncClient(timeout=30) as client:
        routed = await client.post(f"{router.url}/v1/messages", json={**MESSAGE, "stream": True})
    assert routed.status_code == 200
    *_, last = routed.text.strip().split("\n\n")
    kind, data = last.split("\n")
    assert kind == "event: error"
    error = orjson.loads(data[len("data: ") :])
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"


async def test_a_transcription_stream_that_breaks_ends_with_openais_error_event(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1)
    engine.control(fault="reset")
    async with httpx.AsyncClient(timeout=30) as client:
        routed = await client.post(
            f"{router.url}/v1/audio/transcriptions",
            data={"model": MODEL, "stream": "true"},
            files={"file": ("a.wav", b"RIFF", "audio/wav")},
        )
    assert routed.status_code == 200
    first, last = routed.text.strip().split("\n\n")
    assert orjson.loads(first[len("data: ") :])["object"] == "transcription.chunk"
    assert orjson.loads(last[len("data: ") :])["error"]["code"] == "engine_unavailable"
    assert (
        _metric(
            router.url, "tokenyard_requests_total", f'model="{MODEL}",route="/v1/audio/transcriptions",status="500"'
        )
        == 1
    )


async def test_rerank_score_pooling_and_classify_answer_as_the_instance_does(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1)
    requests = [
        ("/v1/rerank", RERANK),
        ("/rerank", RERANK),
        ("/v2/rerank", RERANK),
        ("/v1/score", {"model": MODEL, "text_1": "a", "text_2": "b"}),
        ("/score", {"model": MODEL}),
        ("/pooling", {"model": MODEL, "input": "a b c"}),
        ("/classify", {"model": MODEL, "input": "x"}),
        ("/v1/messages/count_tokens", MESSAGE),
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        for path, body in requests:
            routed = await client.post(f"{router.url}{path}", json=body)
            direct = await client.post(f"{engine.url}{path}", json=body)
            assert routed.status_code == 200, (path, routed.text)
            assert routed.content == direct.content, path
    assert _metric(router.url, "tokenyard_requests_total", f'model="{MODEL}",route="/v2/rerank",status="200"') == 1


async def test_a_routes_passthrough_paths_go_to_its_instances(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1, route={"passthrough_paths": ["/v1/custom/echo", "/v1/lacking"]})
    async with httpx.AsyncClient(timeout=30) as client:
        echo = await client.post(f"{router.url}/v1/custom/echo", json={"model": MODEL, "x": [1, 2]})
        lacking = await client.post(f"{router.url}/v1/lacking", json={"model": MODEL})
        direct = await client.post(f"{engine.url}/v1/lacking", json={"model": MODEL})
        unlisted = await client.post(f"{router.url}/v1/unlisted", json={"model": MODEL})
    assert echo.status_code == 200 and echo.json()["echo"] == {"model": MODEL, "x": [1, 2]}
    assert lacking.status_code == 404 and lacking.content == direct.content  # the instance's own 404
    assert unlisted.status_code == 404 and unlisted.json()["error"]["code"] == "not_found"  # the router's


async def test_a_missing_or_unknown_model_is_answered_in_the_clients_shape(fleet: Fleet) -> None:
    _, router = fleet.start(1)
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        no_model = await client.post("/pooling", json={"input": "x"})
        unknown = await client.post("/classify", json={"model": "nope", "input": "x"})
        message_unknown = await client.post("/v1/messages", json={**MESSAGE, "model": "nope"})
        count_no_model = await client.post("/v1/messages/count_tokens", json={"messages": MESSAGE["messages"]})
        upload_no_model = await client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF", "audio/wav")})
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert message_unknown.status_code == 404
    assert message_unknown.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `nope` does not exist."},
    }
    assert count_no_model.status_code == 400
    assert count_no_model.json()["type"] == "error"
    assert count_no_model.json()["error"]["type"] == "invalid_request_error"
    assert upload_no_model.status_code == 400 and upload_no_model.json()["error"]["param"] == "model"


async def test_an_instance_killed_before_the_first_byte_is_retried_elsewhere(fleet: Fleet) -> None:
    engines, router = fleet.start(2, health_interval_s=30)  # the router does not yet know the instance is gone
    dead = engines[0]
    dead.kill()
    files = {"file": ("a.wav", b"RIFF" * 1000, "audio/wav")}
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        answers = await asyncio.gather(
            *[client.post("/v1/rerank", json=RERANK) for _ in range(4)],
            *[client.post("/v1/messages", json=MESSAGE) for _ in range(2)],
            *[client.post("/v1/audio/transcriptions", data={"model": MODEL}, files=files) for _ in range(2)],
        )
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers][4:]
    assert router.metric("tokenyard_upstream_retries_total", dead.url) >= 1


async def test_keys_and_rate_limits_hold_on_the_other_paths(fleet: Fleet) -> None:
    key = "sk-raw-paths-0123456789"
    config = {"api_keys": [{"key": key, "name": "team", "requests_per_minute": 2}]}
    _, router = fleet.start(1, config=config)
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        anonymous = await client.post("/v1/rerank", json=RERANK)
        upload = await client.post(
            "/v1/audio/transcriptions", data={"model": MODEL}, files={"file": ("a.wav", b"RIFF", "audio/wav")}
        )
        served = [await client.post("/v1/rerank", json=RERANK, headers=auth) for _ in range(3)]
    assert anonymous.status_code == 401 and upload.status_code == 401
    assert [r.status_code for r in served] == [200, 200, 429]
    assert served[0].headers["x-ratelimit-limit-requests"] == "2"


def test_engine_process_serves_the_scripted_paths(tmp_path: object) -> None:
    """The scripted upstream answers the new paths itself (so the tests above compare against it)."""
    engine = Engine(tmp_path, 4, 1).start()  # type: ignore[arg-type]
    try:
        engine.wait_ready()
        answer = httpx.post(f"{engine.url}/v1/rerank", json=RERANK, timeout=5).json()
        assert [r["index"] for r in answer["results"]] == [0, 1]
    finally:
        engine.stop()


async def test_answers_name_the_public_model_where_the_instance_serves_another_name(fleet: Fleet) -> None:
    """The instance answers under its own name; the client reads the route's public one, as chat does: in
    a JSON answer's `model`, and in a streamed message's `message_start`. The rest passes unchanged."""
    upstream = "served-under-another-name"
    (engine,), router = fleet.start(
        1, tokens=4, delay_ms=1, route={"upstream_model": upstream}, script={"model": upstream}
    )
    async with httpx.AsyncClient(timeout=30) as client:
        for path, body in [
            ("/v1/messages", MESSAGE),
            ("/v1/rerank", RERANK),
            ("/v1/score", {"model": MODEL, "text_1": "a", "text_2": "b"}),
            ("/pooling", {"model": MODEL, "input": "a b"}),
            ("/classify", {"model": MODEL, "input": "a b"}),
        ]:
            answer = await client.post(f"{router.url}{path}", json=body)
            assert answer.status_code == 200 and answer.json()["model"] == MODEL, (path, answer.text)
            direct = await client.post(f"{engine.url}{path}", json={**body, "model": upstream})
            assert {**direct.json(), "model": MODEL} == answer.json()
        streamed = await client.post(f"{router.url}/v1/messages", json={**MESSAGE, "stream": True})
        direct = await client.post(f"{engine.url}/v1/messages", json={**MESSAGE, "model": upstream, "stream": True})
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert orjson.loads(events[0])["message"]["model"] == MODEL
    assert upstream not in streamed.text
    assert streamed.content.split(b"\n\n", 1)[1] == direct.content.split(b"\n\n", 1)[1]
