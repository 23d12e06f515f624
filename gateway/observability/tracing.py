"""Tracing's seam: off, nothing here imports OpenTelemetry and the request path holds no span.

`build_tracing(settings)` is all the app calls. With `tracing.enabled` false (the default) it answers None:
the state holds no tracer, the tracing middleware is not installed, and every place that could open a span
finds `forwarded.trace` None and does nothing more. Switched on, it imports gateway.observability.otel (the
`tokenyard[otel]` extra: opentelemetry-sdk and the OTLP/HTTP exporter), which is configured by the
standard OTEL_* variables. Switched on without the extra, the start fails with a message that says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.settings import TracingSettings

if TYPE_CHECKING:
    from gateway.observability.otel import Tracing


class TracingUnavailable(RuntimeError):
    """tracing.enabled is on, but OpenTelemetry is not installed."""


def build_tracing(settings: TracingSettings) -> Tracing | None:
    if not settings.enabled:
        return None
    try:
        from gateway.observability import otel
    except ImportError as exc:
        raise TracingUnavailable(
            f"tracing.enabled is on, but OpenTelemetry is not installed ({exc.name} is missing): "
            "pip install 'tokenyard[otel]', or turn tracing off."
        ) from exc
    return otel.Tracing.from_environment()
