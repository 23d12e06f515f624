"""Engine mode, tracing on, through the real engine: vLLM is handed the server span's traceparent
(AsyncLLM's trace_headers) and continues the trace, so its own llm_request span, exported to the same
OTLP/HTTP receiver, is a child of tokenyard's server span under the client's trace id."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import TEXT_MODEL, free_port, start_server, stop_server, wait_ready
from tests.support.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.engine

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def test_vllm_continues_the_trace_under_the_server_span(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        port, log_path = free_port(), tmp_path / "server.log"
        model = {
            "name": TEXT_MODEL,
            "model": "builtin:gemma3-270m",
            "dtype": "bfloat16",
            "max_model_len": 512,
            "engine_args": {"otlp_traces_endpoint": f"{receiver.url}/v1/traces"},
        }
        config = tmp_path / "traced.yaml"
        config.write_text(yaml.safe_dump({"models": [model], "tracing": {"enabled": True}}))
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        }  # vLLM's exporter defaults to gRPC
        proc = start_server(["--config", str(config), "--port", str(port)], log_path, env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, log_path, 900)
            body = {
                "model": TEXT_MODEL,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            headers = {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01", "x-request-id": "engine-trace-1"}
            answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
            assert answer.status_code == 200 and "[DONE]" in answer.text
            (server,) = receiver.wait_for("POST /v1/chat/completions")
            (engine,) = receiver.wait_for("llm_request", timeout_s=30)
        finally:
            stop_server(proc)
    assert server.trace_id == engine.trace_id == TRACE_ID
    assert server.parent_span_id == "b7ad6b7169203331" and engine.parent_span_id == server.span_id
    assert server.attributes["tokenyard.request_id"] == "engine-trace-1"
    assert server.attributes["gen_ai.usage.output_tokens"] == 4 and server.attributes["gen_ai.usage.input_tokens"] > 0
