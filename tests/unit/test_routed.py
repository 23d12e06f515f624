"""gateway.api.routed: the paths only a route's instances serve, declared in engine mode."""

from __future__ import annotations

import asyncio

from tests.support.scripted_app import MODEL, scripted_client, settings


def test_engine_mode_answers_404_for_a_routed_only_path_and_405_for_another_method() -> None:
    async def run() -> None:
        async with scripted_client(settings()) as client:
            served = await client.post("/pooling", json={"model": MODEL, "input": "a"})
            assert served.status_code == 404 and served.json()["error"]["code"] == "not_found"
            unknown = await client.post("/classify", json={"model": "nobody", "input": "a"})
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
            for model, code in ((MODEL, "not_found"), ("whisper", "model_not_found")):  # an upload, as SDKs send it
                upload = await client.post(
                    "/v1/audio/transcriptions", data={"model": model}, files={"file": ("a.wav", b"RIFF" * 64)}
                )
                assert upload.status_code == 404 and upload.json()["error"]["code"] == code, upload.text
            for method, path in (("GET", "/pooling"), ("TRACE", "/v1/models"), ("PUT", "/v1/audio/transcriptions")):
                refused = await client.request(method, path)
                assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"

    asyncio.run(run())
