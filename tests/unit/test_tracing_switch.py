"""The tracing switch: off by default, on through the env or the CLI; on without OpenTelemetry, a clear error."""

from __future__ import annotations

import sys

import pytest

from gateway.app import create_app
from gateway.cli import _parser, main, settings_from_args
from gateway.middleware.request_log import forwarded_from
from gateway.observability.tracing import TracingUnavailable
from gateway.settings import Settings


def test_tracing_is_off_by_default_and_on_by_env_or_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().tracing.enabled is False
    assert settings_from_args(_parser().parse_args(["serve", "--enable-tracing"])).tracing.enabled is True
    monkeypatch.setenv("TOKENYARD_TRACING__ENABLED", "true")
    assert Settings().tracing.enabled is True


def test_tracing_on_without_opentelemetry_fails_at_start_and_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gateway.observability.otel", None)  # as if the otel extra were missing
    with pytest.raises(TracingUnavailable, match=r"tokenyard\[otel\]"):
        create_app(Settings(tracing={"enabled": True}))
    with pytest.raises(SystemExit, match=r"pip install 'tokenyard\[otel\]'"):
        main(["serve", "--enable-tracing"])


def test_tracing_off_the_app_holds_no_tracer() -> None:
    assert create_app(Settings()).state.tokenyard.tracing is None


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "headers": list(headers)}


def test_only_a_well_formed_trace_context_is_forwarded() -> None:
    good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    forwarded = forwarded_from(_scope((b"traceparent", good), (b"tracestate", b"a=1,b=2")), "rid")
    assert forwarded.headers() == {"x-request-id": "rid", "traceparent": good.decode(), "tracestate": "a=1,b=2"}
    for bad in (good.upper(), b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01", good + b"-extra", b"garbage"):
        assert forwarded_from(_scope((b"traceparent", bad), (b"tracestate", b"a=1")), "rid").headers() == {
            "x-request-id": "rid"
        }
    unprintable = forwarded_from(_scope((b"traceparent", good), (b"tracestate", b"a=\x01")), "rid")
    assert unprintable.tracestate is None and unprintable.traceparent == good.decode()
