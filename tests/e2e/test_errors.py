"""Bad input against the real server: OpenAI-shaped errors and the SDK's own exception classes."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TEXT_MODEL

USER = [{"role": "user", "content": "hi"}]


def _assert_error_body(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] is None or isinstance(error["code"], str)
    assert "Traceback" not in error["message"]
    return dict(error)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 2.1}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.01}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ],
)
def test_bad_chat_fields(client: openai.OpenAI, http: httpx.Client, change: dict[str, Any], param: str) -> None:
    body = {"model": TEXT_MODEL, "messages": USER, **change}
    error = _assert_error_body(http.post("/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**body)


def test_bad_json(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
    assert _assert_error_body(response, 400)["type"] == "invalid_request_error"


def test_context_length_exceeded(client: openai.OpenAI, http: httpx.Client) -> None:
    for stream in (False, True):
        body = {"model": TEXT_MODEL, "messages": USER, "max_tokens": 5000, "stream": stream}
        error = _assert_error_body(http.post("/v1/chat/completions", json=body), 400)
        assert error["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=TEXT_MODEL, prompt="word " * 2100, max_tokens=4)
    assert err.value.code == "context_length_exceeded"


def test_unknown_model(client: openai.OpenAI, http: httpx.Client) -> None:
    body = {"model": "gpt-9", "messages": USER}
    assert _assert_error_body(http.post("/v1/chat/completions", json=body), 404)["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(**body)  # type: ignore[call-overload]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="x")


def test_unsupported_values_are_clear_400s(http: httpx.Client) -> None:
    error = _assert_error_body(
        http.post("/v1/completions", json={"model": TEXT_MODEL, "prompt": "x", "suffix": "y"}), 400
    )
    assert error["param"] == "suffix"
    error = _assert_error_body(
        http.post("/v1/chat/completions", json={"model": TEXT_MODEL, "messages": USER, "logit_bias": {"abc": 1}}), 400
    )
    assert error["param"] == "logit_bias"
    _assert_error_body(
        http.post("/v1/chat/completions", json={"model": TEXT_MODEL, "messages": [{"role": "tool", "content": "x"}]}),
        400,
    )
