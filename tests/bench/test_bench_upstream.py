"""The benchmark stub speaks the OpenAI wire format (checked by the real openai SDK) and obeys max_tokens."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.support.bench_upstream import encode, script

ROOT = Path(__file__).resolve().parents[2]


def test_max_tokens_carries_chunks_and_pace() -> None:
    assert script(encode(32, 10)) == (32, 0.010)
    assert script(128) == (128, 0.0)
    assert script(None) == (16, 0.0)


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.bench_upstream", "--port", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_stream_and_whole_answers_are_openai_shaped(stub_url: str) -> None:
    client = OpenAI(base_url=f"{stub_url}/v1", api_key="x", _strict_response_validation=True)
    chunks = list(
        client.chat.completions.create(
            model="stub",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices]
    assert len(texts) == 5 and len(set(texts)) > 1  # distinct texts: LiteLLM cuts 100 identical chunks
    usage = chunks[-1].usage
    assert chunks[-2].choices[0].finish_reason == "length" and usage is not None and usage.completion_tokens == 5
    whole = client.completions.create(model="stub", prompt="hi", max_tokens=3)
    assert whole.choices[0].text == "tok " * 3 and whole.usage is not None and whole.usage.completion_tokens == 3
    assert [m.id for m in client.models.list()] == ["stub"]
    single = list(
        client.chat.completions.create(
            model="stub", messages=[{"role": "user", "content": "hi"}], max_tokens=1, stream=True, timeout=5
        )
    )
    assert [c.choices[0].finish_reason for c in single] == [None, "length"]  # a 1-chunk stream still ends
