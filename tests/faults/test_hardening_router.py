"""Issue 33, the router's side: what a client sends must not crash a route, slip past it, or pin memory in it.
Real router processes in front of scripted instances (tests.support.scripted_upstream)."""

from __future__ import annotations

import httpx
import pytest

from tests.faults.harness import MODEL, Fleet

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "say something"}]


@pytest.mark.parametrize("best_of", ["abc", [2], {"n": 2}])
def test_a_resumable_stream_with_a_bad_count_is_a_400(fleet: Fleet, best_of: object) -> None:
    engines, router = fleet.start(1, tokens=4, delay_ms=1, route={"resume_streams": True}, log_level="info")
    for field in ("best_of", "n", "max_tokens"):
        body = {"model": MODEL, "messages": MESSAGES, "stream": True, field: best_of}
        answer = httpx.post(f"{router.url}{CHAT}", json=body, timeout=10)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == field
    assert "Traceback" not in router.log_path.read_text()
    ok = httpx.post(f"{router.url}{CHAT}", json={"model": MODEL, "messages": MESSAGES, "stream": True, "n": "1"})
    assert ok.status_code == 200 and ok.text.rstrip().endswith("data: [DONE]")


def _form(*parts: tuple[str, bytes, bool]) -> bytes:
    """A multipart body of (name, value, is_file) parts."""
    out = b""
    for name, value, is_file in parts:
        filename = b'; filename="a.wav"\r\ncontent-type: audio/wav' if is_file else b""
        out += b"--" + BOUNDARY + b'\r\ncontent-disposition: form-data; name="%s"%s\r\n\r\n' % (name.encode(), filename)
        out += value + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


BOUNDARY = b"hardening-boundary-33"


def test_a_second_model_field_or_key_is_refused(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1, tokens=4, delay_ms=1)
    audio = bytes(range(256)) * 1024  # 256 KiB: the second field comes well after routing
    form_type = {"content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}
    for second_first in (False, True):
        parts = [("model", MODEL.encode(), False), ("file", audio, True), ("model", b"other-model", False)]
        if second_first:
            parts = [parts[0], parts[2], parts[1]]
        answer = httpx.post(
            f"{router.url}/v1/audio/transcriptions", content=_form(*parts), headers=form_type, timeout=10
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "model"
    assert engine.stats()["completed"] == 0
    ok = httpx.post(
        f"{router.url}/v1/audio/transcriptions",
        content=_form(("model", MODEL.encode(), False), ("file", audio, True)),
        headers=form_type,
        timeout=10,
    )
    assert ok.status_code == 200 and ok.json()["model"] == MODEL
    json_type = {"content-type": "application/json"}
    for path, rest in [
        (CHAT, b'"messages":[{"role":"user","content":"hi"}]'),
        ("/v1/rerank", b'"query":"q","documents":["a"]'),
    ]:
        for second in (b'"model":"other-model"', b'"m\\u006fdel":"other-model"'):
            raw = b'{"model":"%s",%s,%s}' % (MODEL.encode(), rest, second)
            answer = httpx.post(f"{router.url}{path}", content=raw, headers=json_type, timeout=10)
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["error"]["param"] == "model"
    nested = b'{"model":"%s","messages":[{"role":"user","content":"hi"}],"metadata":{"model":"x"}}' % MODEL.encode()
    assert httpx.post(f"{router.url}{CHAT}", content=nested, headers=json_type, timeout=10).status_code == 200
