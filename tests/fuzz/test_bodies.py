"""hypothesis-made request bodies that are wrong by construction: each gets a 4xx OpenAI error, and the
server goes on serving a valid request right after it.

Wrong types, huge numbers, deep nesting, invalid UTF-8, empty and oversized strings, and raw bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.fuzz.app import AUTH, EMBED_MODEL, LIMITS, MODEL, fuzz_app

VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 4},
    "/v1/embeddings": {"model": EMBED_MODEL, "input": "hi"},
}
ROUTES = st.sampled_from(sorted(VALID))

# Letters that spell no number, no "inf"/"nan" and none of the words pydantic reads as a bool.
JUNK = st.text(alphabet="bcdgjkmpqrsuvwxz", min_size=1, max_size=12)
LISTS = st.lists(st.integers(), max_size=3)
OBJECTS = st.dictionaries(st.text(max_size=4), st.integers(), max_size=3)
NOT_INT = st.one_of(JUNK, LISTS, OBJECTS, st.integers(-(10**6), 10**6).map(lambda i: i + 0.5))
NOT_NUMBER = st.one_of(JUNK, LISTS, OBJECTS)
NOT_BOOL = st.one_of(JUNK, LISTS, OBJECTS, st.integers(min_value=2), st.floats(0.01, 0.99))
NOT_STRING = st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), LISTS, OBJECTS, st.none()
)
NOT_TEXT_OR_LIST = st.one_of(st.integers(), st.booleans(), OBJECTS, st.none(), st.lists(OBJECTS, min_size=1))

COMMON = {
    "model": NOT_STRING,
    "max_tokens": NOT_INT,
    "n": NOT_INT,
    "temperature": NOT_NUMBER,
    "top_p": NOT_NUMBER,
    "stream": NOT_BOOL,
    "seed": NOT_INT,
    "priority": NOT_INT,
    "stop": st.one_of(st.integers(), st.booleans(), OBJECTS, LISTS.filter(bool)),
    "logit_bias": st.one_of(JUNK, LISTS, st.integers()),
}
WRONG_TYPES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "/v1/chat/completions": {
        **COMMON,
        "messages": st.one_of(NOT_STRING.filter(lambda v: v != []), JUNK, st.lists(st.integers(), min_size=1)),
        "logprobs": NOT_BOOL,
        "top_logprobs": NOT_INT,
    },
    "/v1/completions": {**COMMON, "prompt": NOT_TEXT_OR_LIST, "echo": NOT_BOOL, "logprobs": NOT_INT},
    "/v1/embeddings": {
        "model": NOT_STRING,
        "input": NOT_TEXT_OR_LIST,
        "encoding_format": st.one_of(JUNK, st.integers(), LISTS),
    },
}
HUGE: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": st.one_of(st.integers(LIMITS["max_tokens"] + 1, 10**40), st.integers(-(10**40), 0)),
    "n": st.one_of(st.integers(LIMITS["max_n"] + 1, 10**40), st.integers(-(10**40), 0)),
    "temperature": st.one_of(st.floats(2.001, 1e308), st.floats(-1e308, -0.001)),
    "top_p": st.floats(1.001, 1e308),
    "presence_penalty": st.floats(2.001, 1e308),
    "priority": st.one_of(st.integers(2**63, 10**40), st.integers(-(10**40), -(2**63) - 1)),
}


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # not orjson: it refuses the integers past 64 bits we want to send


@st.composite
def wrong_type(draw: st.DrawFn) -> tuple[str, bytes]:
    route = draw(ROUTES)
    field = draw(st.sampled_from(sorted(WRONG_TYPES[route])))
    return route, _dumps({**VALID[route], field: draw(WRONG_TYPES[route][field])})


@st.composite
def huge_number(draw: st.DrawFn) -> tuple[str, bytes]:
    route = draw(st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
    field = draw(st.sampled_from(sorted(HUGE)))
    value = draw(HUGE[field])
    return route, f'{_dumps(VALID[route])[:-1].decode()}, "{field}": {value!r}}}'.encode()


@st.composite
def deep(draw: st.DrawFn) -> tuple[str, bytes]:
    route = draw(ROUTES)
    field = draw(st.sampled_from(["extra", "model", "stop", "input", "prompt", "messages"]))
    depth = draw(st.integers(65, 3000))
    return route, _dumps({**VALID[route], field: "x"})[
        :-1
    ] + b', "' + field.encode() + b'": ' + b"[" * depth + b"]" * depth + b"}"


INVALID_UTF8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\x80"])


@st.composite
def bad_utf8(draw: st.DrawFn) -> tuple[str, bytes]:
    route = draw(ROUTES)
    raw = _dumps(VALID[route])
    at = raw.index(b'"hi"') + 1  # inside a string value
    return route, raw[:at] + draw(INVALID_UTF8) + raw[at:]


@st.composite
def empty_or_oversized(draw: st.DrawFn) -> tuple[str, bytes]:
    route = draw(ROUTES)
    body = dict(VALID[route])
    choice = draw(st.sampled_from(["model", "big-model", "big-text", "empty-list"]))
    text_field = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input"}[route]
    if choice == "model":
        body["model"] = ""
    elif choice == "big-model":
        body["model"] = "m" * draw(st.integers(70_000, 200_000))  # past the body limit: 413
    elif choice == "big-text":
        text = "w" * draw(st.integers(LIMITS["max_prompt_chars"] + 1, 60_000))  # past the prompt cap: 400
        body[text_field] = [{"role": "user", "content": text}] if text_field == "messages" else text
    else:
        body[text_field] = draw(st.sampled_from([[], [""]])) if text_field != "prompt" else []
    return route, _dumps(body)


@st.composite
def raw_bytes(draw: st.DrawFn) -> tuple[str, bytes]:
    return draw(ROUTES), draw(st.binary(max_size=200))


BAD_BODIES = st.one_of(wrong_type(), huge_number(), deep(), bad_utf8(), empty_or_oversized(), raw_bytes())


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(fuzz_app(), headers=AUTH, raise_server_exceptions=False) as test_client:
        yield test_client


def _is_openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and set(error) == {"message", "type", "param", "code"}
        and isinstance(error["message"], str)
        and (error["code"] is None or isinstance(error["code"], str))
    )


@given(case=BAD_BODIES)
@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_bad_bodies_get_a_4xx_openai_error_and_serving_goes_on(client: TestClient, case: tuple[str, bytes]) -> None:
    route, raw = case
    response = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    assert _is_openai_error(response.json()), response.text[:300]
    valid = client.post(route, json=VALID[route])
    assert valid.status_code == 200, valid.text[:300]


def test_each_kind_of_bad_body_meets_its_guard(client: TestClient) -> None:
    """One of each, with the exact answer, so the property above cannot pass by accident."""
    chat = "/v1/chat/completions"
    cases = [
        (_dumps({**VALID[chat], "max_tokens": "lots"}), 400, "max_tokens"),
        (f'{_dumps(VALID[chat])[:-1].decode()}, "max_tokens": {10**30}}}'.encode(), 400, "max_tokens"),
        (_dumps(VALID[chat])[:-1] + b', "x": ' + b"[" * 2000 + b"]" * 2000 + b"}", 400, None),
        (_dumps(VALID[chat]).replace(b'"hi"', b'"h\xffi"'), 400, None),
        (_dumps({**VALID[chat], "model": ""}), 400, "model"),
        (_dumps({**VALID[chat], "model": "m" * 70_000}), 413, None),
    ]
    for raw, status, param in cases:
        response = client.post(chat, content=raw, headers={"content-type": "application/json"})
        assert (response.status_code, response.json()["error"]["param"]) == (status, param), response.text[:200]
