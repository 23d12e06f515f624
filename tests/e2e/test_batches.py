"""The openai SDK's own batch flow against the real engine (`make serve`'s models): upload a JSONL file, create
the batch, poll it, read the output file; chat, completions and embeddings lines each give what the same
request gives live."""

from __future__ import annotations

import io
import time
from typing import Any

import openai
import orjson

from tests.conftest import EMBED_MODEL, TEXT_MODEL


def run_batch(client: openai.OpenAI, endpoint: str, bodies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The batch's output lines by custom_id, once it has completed."""
    content = b"".join(
        orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": endpoint, "body": body}) + b"\n"
        for i, body in enumerate(bodies)
    )
    upload = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(content)
    batch = client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + 300
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.error_file_id is None, batch
    assert batch.request_counts is not None and batch.request_counts.completed == len(bodies)
    assert batch.output_file_id is not None
    lines = [orjson.loads(line) for line in client.files.content(batch.output_file_id).content.splitlines()]
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in lines)
    return {line["custom_id"]: line["response"]["body"] for line in lines}


def test_chat_lines_answer_as_live_requests(client: openai.OpenAI) -> None:
    bodies = [
        {"model": TEXT_MODEL, "messages": [{"role": "user", "content": q}], "max_tokens": 6, "temperature": 0}
        for q in ("The capital of France is", "Two plus two equals")
    ]
    results = run_batch(client, "/v1/chat/completions", bodies)
    for i, body in enumerate(bodies):
        live = client.chat.completions.create(**body)
        assert results[f"c{i}"]["object"] == "chat.completion"
        assert results[f"c{i}"]["choices"][0]["message"]["content"] == live.choices[0].message.content
        assert results[f"c{i}"]["usage"]["prompt_tokens"] == live.usage.prompt_tokens  # type: ignore[union-attr]


def test_completion_lines_answer_as_live_requests(client: openai.OpenAI) -> None:
    bodies = [{"model": TEXT_MODEL, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}]
    results = run_batch(client, "/v1/completions", bodies)
    live = client.completions.create(**bodies[0])
    assert results["c0"]["object"] == "text_completion"
    assert results["c0"]["choices"][0]["text"] == live.choices[0].text


def test_embedding_lines_answer_as_live_requests(client: openai.OpenAI) -> None:
    bodies = [{"model": EMBED_MODEL, "input": ["Hello world!", "Batch jobs run at night."], "encoding_format": "float"}]
    results = run_batch(client, "/v1/embeddings", bodies)
    live = client.embeddings.create(**bodies[0])
    vectors = [item["embedding"] for item in results["c0"]["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == 384
    for got, want in zip(vectors, [item.embedding for item in live.data], strict=True):
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-4
