"""Images through the real engine: the tiny vision-language model of tests/support/vlm_fixture.py (BLIP-2 over the
embedded Gemma 3 270M) served in engine mode, with media from data: URLs, an allowed host (a local HTTP server
this module starts) and a local media directory; every refusal of engine_adapters.media; and a text-only model
(the session's Gemma) given an image, in each API's shape."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import START_TIMEOUT_S, TEXT_MODEL, Server, free_port, start_server, stop_server, wait_ready
from tests.support.vlm_fixture import MODEL_NAME, TOKENS_PER_IMAGE, build_vlm

pytestmark = pytest.mark.engine
PROMPT = "Describe the picture."


def png(color: str, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


class MediaHost:
    """A local HTTP server that serves images, and redirects where a test tells it to."""

    def __init__(self, files: dict[str, bytes]) -> None:
        files_ = files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  # http.server's name
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("location", self.path.removeprefix("/redirect?to="))
                    self.end_headers()
                    return
                body = files_.get(self.path.lstrip("/"))
                self.send_response(200 if body is not None else 404)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up first
                    self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}/{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    (folder / "red.png").write_bytes(png("red"))
    return folder


@pytest.fixture(scope="module")
def host() -> Iterator[MediaHost]:
    served = MediaHost({"red.png": png("red"), "blue.png": png("blue"), "huge.png": png("white", (6000, 5000))})
    yield served
    served.close()


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory, media_dir: Path) -> Iterator[str]:
    model_dir = build_vlm(tmp_path_factory.mktemp("vlm"))
    port, log_path = free_port(), tmp_path_factory.mktemp("vlm-server") / "server.log"
    model = {
        "name": MODEL_NAME,
        "model": str(model_dir),
        "max_model_len": 1024,
        "limit_mm_per_prompt": {"image": 1},  # BLIP-2 takes one image a prompt
        "media": {
            # 127.0.0.2 and the cloud metadata address are named too, to show their addresses are refused anyway.
            "allowed_domains": ["localhost", "127.0.0.2", "169.254.169.254"],
            "allowed_networks": ["127.0.0.1/32", "::1/128"],  # the test's own host, allowed by the operator
            "local_dir": str(media_dir),
        },
    }
    env = {"TOKENYARD_MODELS": json.dumps([model]), "VLLM_CPU_KVCACHE_SPACE": "1"}  # a 1,024-token model needs little
    proc = start_server(["--port", str(port)], log_path, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log_path, START_TIMEOUT_S)
        yield url
    finally:
        stop_server(proc)


def image_chat(url: str, **extra: Any) -> dict[str, Any]:
    # The image first: Gemma's template joins text parts with a newline, so its token count stays the text's.
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}]
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 1,
        **extra,
    }


def ask(vlm: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{vlm}/v1/chat/completions", json=body, timeout=120)


def first_logprob(answer: dict[str, Any]) -> float:
    return float(answer["choices"][0]["logprobs"]["content"][0]["logprob"])


def test_an_image_reaches_the_model(vlm: str) -> None:
    text_only = ask(vlm, {**image_chat(""), "messages": [{"role": "user", "content": PROMPT}]}).json()
    red = ask(vlm, image_chat(data_url(png("red")))).json()
    blue = ask(vlm, image_chat(data_url(png("blue")))).json()
    assert red["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + TOKENS_PER_IMAGE
    assert blue["usage"]["prompt_tokens"] == red["usage"]["prompt_tokens"]
    assert first_logprob(red) != first_logprob(blue)  # the pixels reach the model's output
    card = httpx.get(f"{vlm}/v1/models/{MODEL_NAME}", timeout=10).json()
    assert card["input_modalities"] == ["text", "image"]


def test_an_allowed_host_s_image_is_the_same_image(vlm: str, host: MediaHost, media_dir: Path) -> None:
    inline = ask(vlm, image_chat(data_url(png("red")))).json()
    fetched = ask(vlm, image_chat(host.url("red.png"))).json()
    local = ask(vlm, image_chat((media_dir / "red.png").as_uri())).json()
    for answer in (fetched, local):
        assert answer["choices"][0]["message"]["content"] == inline["choices"][0]["message"]["content"]
        assert first_logprob(answer) == pytest.approx(first_logprob(inline), abs=1e-4)
    # Through a redirect on the same allowed host, too.
    redirected = ask(vlm, image_chat(host.url(f"redirect?to={host.url('red.png')}"))).json()
    assert first_logprob(redirected) == pytest.approx(first_logprob(inline), abs=1e-4)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("{host}/red.png", "Fetching media from 127.0.0.1 is not allowed"),  # an address, not an allowed name
        # The cloud metadata address through a redirect: refused before any connection is made.
        ("{localhost}/redirect?to=http://169.254.169.254/latest/meta-data/", "resolves to 169.254.169.254"),
        ("http://127.0.0.2:9/red.png", "resolves to 127.0.0.2, a loopback"),  # not in allowed_networks
        ("{localhost}/redirect?to=http://metadata.example.com/", "not allowed"),
        ("{localhost}/missing.png", "answered HTTP 404"),
        ("{localhost}/huge.png", "pixels"),
        ("file:///etc/passwd", "outside the model's local media directory"),
        ("ftp://example.com/a.png", "data:, http(s): or file: URLs"),
        ("data:image/png,notbase64", "must be base64"),
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "does not hold an image"),
    ],
)
def test_each_refusal_is_a_400_naming_the_part(vlm: str, host: MediaHost, where: str, reason: str) -> None:
    url = where.format(host=f"http://127.0.0.1:{host.port}", localhost=f"http://localhost:{host.port}")
    response = ask(vlm, image_chat(url))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[0]" and error["type"] == "invalid_request_error"
    assert reason in error["message"]


def test_too_many_images_and_unknown_parts_are_refused(vlm: str) -> None:
    image = {"type": "image_url", "image_url": {"url": data_url(png("red"))}}
    two = {**image_chat(""), "messages": [{"role": "user", "content": [image, image]}]}
    response = ask(vlm, two)
    assert response.status_code == 400 and "At most 1 image" in response.json()["error"]["message"]
    odd = {**image_chat(""), "messages": [{"role": "user", "content": [{"type": "hologram"}]}]}
    response = ask(vlm, odd)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0]"
    assert "hologram" in response.json()["error"]["message"]


def test_a_streamed_answer_with_an_image(vlm: str) -> None:
    client = openai.OpenAI(base_url=f"{vlm}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=image_chat(data_url(png("red")))["messages"],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    whole = ask(vlm, {**image_chat(data_url(png("red"))), "logprobs": False, "top_logprobs": None}).json()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == whole["usage"]["prompt_tokens"]


def test_an_anthropic_image_block(vlm: str) -> None:
    client = anthropic.Anthropic(base_url=vlm, api_key="unused")
    raw = base64.b64encode(png("red")).decode()
    message = client.messages.create(
        model=MODEL_NAME,
        max_tokens=4,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": raw}},
                    {"type": "text", "text": PROMPT},
                ],
            }
        ],
    )
    chat = ask(vlm, {**image_chat(data_url(png("red"))), "logprobs": False, "top_logprobs": None}).json()
    assert message.usage.input_tokens == chat["usage"]["prompt_tokens"]


def test_a_responses_input_image(vlm: str) -> None:
    client = openai.OpenAI(base_url=f"{vlm}/v1", api_key="unused")
    parts: Any = [
        {"type": "input_image", "image_url": data_url(png("red")), "detail": "auto"},
        {"type": "input_text", "text": PROMPT},
    ]
    response = client.responses.create(
        model=MODEL_NAME, input=[{"role": "user", "content": parts}], max_output_tokens=4, store=False
    )
    chat = ask(vlm, {**image_chat(data_url(png("red"))), "logprobs": False, "top_logprobs": None}).json()
    assert response.usage is not None and response.usage.input_tokens == chat["usage"]["prompt_tokens"]


# -- a text-only model given an image (the session's server, the embedded Gemma) --------------------------


def test_a_text_only_model_says_so_in_responses(server: Server) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    parts: Any = [{"type": "input_text", "text": PROMPT}, {"type": "input_image", "image_url": data_url(png("red"))}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=TEXT_MODEL, input=[{"role": "user", "content": parts}], store=False)
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "input[0].content[1]"
    assert error["message"] == f"The model '{TEXT_MODEL}' takes text only; it cannot read this image_url part."


def test_a_text_only_model_says_so_in_chat(server: Server) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    content: Any = [
        {"type": "text", "text": PROMPT},
        {"type": "image_url", "image_url": {"url": data_url(png("red"))}},
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=TEXT_MODEL, messages=[{"role": "user", "content": content}])
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages[0].content[1]"
    assert error["message"] == f"The model '{TEXT_MODEL}' takes text only; it cannot read this image_url part."


def test_a_text_only_model_says_so_in_anthropic_s_shape(server: Server) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="unused")
    raw = base64.b64encode(png("red")).decode()
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model=TEXT_MODEL,
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": raw}}
                    ],
                }
            ],
        )
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "takes text only" in body["error"]["message"]
