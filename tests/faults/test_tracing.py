"""The request id and the trace reach the instances, through real processes: a router in front of scripted
engines that record the headers they got. With tracing on, the router exports its spans to a real OTLP/HTTP
receiver, and the traceparent an instance got is its attempt span's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.support.otlp_receiver import OtlpReceiver

CLIENT_KEY, INTERNAL_KEY = "sk-client-secret", "sk-internal-secret"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 4,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def _start(fleet: Fleet, tmp_path: Path, engines: int, **config: Any) -> tuple[list[Engine], Router]:
    started = [Engine(tmp_path, tokens=4, delay_ms=1).start() for _ in range(engines)]
    fleet.engines += started
    router = Router(tmp_path, [])
    route = {"name": MODEL, "policy": "round-robin", "upstreams": [e.url for e in started], "api_key": INTERNAL_KEY}
    body = {"routes": [route], "router": router.settings, "log_level": "warning", "api_keys": [CLIENT_KEY], **config}
    router.config.write_text(yaml.safe_dump(body))
    for engine in started:
        engine.wait_ready()
    fleet.routers.append(router.start())
    router.wait_ready()
    return started, router


def _client_headers(**extra: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {CLIENT_KEY}",
        "x-api-key": "sk-other-secret",
        "cookie": "session=secret",
        "proxy-authorization": "Basic c2VjcmV0",
        "x-custom": "mine",
        **extra,
    }


def _generation_headers(engine: Engine) -> list[dict[str, str]]:
    return [seen["headers"] for seen in engine.requests() if seen["path"] == "/v1/chat/completions"]


def _no_client_credentials(headers: dict[str, str]) -> None:
    assert headers["authorization"] == f"Bearer {INTERNAL_KEY}"  # the route's own key, not the client's
    for name in ("x-api-key", "cookie", "proxy-authorization", "x-custom"):
        assert name not in headers
    assert CLIENT_KEY not in str(headers)


def test_every_attempt_carries_the_request_id_and_traceparent_but_no_client_credential(
    fleet: Fleet, tmp_path: Path
) -> None:
    (down, up), router = _start(fleet, tmp_path, 2)
    down.control(fault="503")  # round-robin: whichever comes first, a request that lands here is retried
    for _ in range(2):
        answer = httpx.post(
            f"{router.url}/v1/chat/completions",
            json=CHAT,
            timeout=10,
            headers=_client_headers(
                **{"x-request-id": "req-trace-1", "traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
            ),
        )
        assert answer.status_code == 200 and "[DONE]" in answer.text
        assert answer.headers["x-request-id"] == "req-trace-1"
    tried, served = _generation_headers(down), _generation_headers(up)
    assert tried and len(served) == 2  # one request was retried from the failing instance to the other
    for headers in tried + served:
        assert headers["x-request-id"] == "req-trace-1"
        assert headers["traceparent"] == TRACEPARENT and headers["tracestate"] == "vendor=abc"  # tracing off: as given
        _no_client_credentials(headers)


def test_a_generated_request_id_reaches_the_instance_and_a_malformed_traceparent_does_not(
    fleet: Fleet, tmp_path: Path
) -> None:
    (engine,), router = _start(fleet, tmp_path, 1)
    answer = httpx.post(
        f"{router.url}/v1/chat/completions",
        json={**CHAT, "stream": False},
        timeout=10,
        headers=_client_headers(traceparent=TRACEPARENT.upper(), tracestate="a=b"),
    )
    assert answer.status_code == 200
    (headers,) = _generation_headers(engine)
    assert headers["x-request-id"] == answer.headers["x-request-id"]  # the id the router logged and answered
    assert "traceparent" not in headers and "tracestate" not in headers
    _no_client_credentials(headers)


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Any:
    with OtlpReceiver() as started:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", started.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "router-under-test")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        yield started


def test_a_routed_stream_gives_the_span_tree_under_the_clients_trace(
    fleet: Fleet, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    (down, up), router = _start(fleet, tmp_path, 2, tracing={"enabled": True})
    down.control(fault="503")
    assert httpx.get(f"{router.url}/health", timeout=5).status_code == 200  # exported before the rest, if at all
    for _ in range(2):  # round-robin: one of the two is tried on the failing instance first
        answer = httpx.post(
            f"{router.url}/v1/chat/completions",
            json=CHAT,
            timeout=10,
            headers=_client_headers(traceparent=TRACEPARENT, **{"x-request-id": "req-otel"}),
        )
        assert answer.status_code == 200
    servers = receiver.wait_for("POST /v1/chat/completions", 2)
    assert len(servers) == 2
    routes, attempts = receiver.wait_for("tokenyard.route", 3), receiver.wait_for("tokenyard.attempt", 3)
    assert len(routes) == len(attempts) == 2 + len(_generation_headers(down))  # each try on `down` was retried
    by_id = {span.span_id: span for span in receiver.spans}
    for server in servers:
        assert server.trace_id == TRACE_ID and server.parent_span_id == "00f067aa0ba902b7"  # the client's span
        assert server.service == "router-under-test"
        attrs = server.attributes
        assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == MODEL
        assert attrs["gen_ai.usage.output_tokens"] == 4 and attrs["gen_ai.usage.input_tokens"] == 2
        assert attrs["gen_ai.response.finish_reasons"] == ["length"] and attrs["http.response.status_code"] == 200
        assert attrs["tokenyard.request_id"] == "req-otel" and attrs["gen_ai.request.max_tokens"] == 4
        assert server.events == ["tokenyard.first_token", "tokenyard.stream_end"]
    assert {by_id[span.parent_span_id].name for span in routes + attempts} == {"POST /v1/chat/completions"}
    failed = [a for a in attempts if a.attributes["tokenyard.instance"] == down.url]
    assert failed and all(a.attributes["http.response.status_code"] == 503 for a in failed)
    retried = [a for a in attempts if a.attributes.get("tokenyard.retry_reason")]
    assert len(retried) == len(failed) and all(a.attributes["tokenyard.attempt"] == 2 for a in retried)
    assert all(r.attributes["tokenyard.route.policy"] == "round-robin" for r in routes)
    # What each instance got is its attempt span's traceparent: the instance's spans nest under the attempt.
    sent = {h["traceparent"] for h in _generation_headers(down) + _generation_headers(up)}
    assert sent == {f"00-{TRACE_ID}-{a.span_id}-01" for a in attempts}
    for headers in _generation_headers(down) + _generation_headers(up):
        _no_client_credentials(headers)
    assert not [span for span in receiver.spans if span.name.endswith(("/health", "/metrics", "/ready"))]


def test_raw_paths_carry_the_request_id_and_trace_on_every_attempt_but_no_client_credential(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A passed-through request (JSON or an audio upload) tells each instance tried what chat does."""
    (down, up), router = _start(fleet, tmp_path, 2)
    down.control(fault="503")
    traced = {"x-request-id": "req-raw-1", "traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    for _ in range(2):  # round-robin: one of the two lands on the failing instance first, and is retried
        answer = httpx.post(
            f"{router.url}/v1/rerank",
            json={"model": MODEL, "query": "q", "documents": ["a"]},
            timeout=10,
            headers=_client_headers(**traced),
        )
        assert answer.status_code == 200, answer.text
    down.control(fault="none")  # an upload already sent is not retried: both instances answer these
    for _ in range(2):
        upload = httpx.post(
            f"{router.url}/v1/audio/transcriptions",
            data={"model": MODEL},
            files={"file": ("a.wav", b"\0" * 1000, "audio/wav")},
            timeout=10,
            headers=_client_headers(**traced),
        )
        assert upload.status_code == 200, upload.text
    paths = ("/v1/rerank", "/v1/audio/transcriptions")
    seen = [(s["path"], s["headers"]) for s in down.requests() + up.requests() if s["path"] in paths]
    assert [path for path, _ in seen].count("/v1/rerank") >= 3  # two requests, retried from the failing instance
    assert [path for path, _ in seen].count("/v1/audio/transcriptions") == 2
    for _, headers in seen:
        assert headers["x-request-id"] == "req-raw-1"
        assert headers["traceparent"] == TRACEPARENT and headers["tracestate"] == "vendor=abc"
        _no_client_credentials(headers)
