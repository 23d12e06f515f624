"""`tokenyard serve [--config FILE] [flags]`: flags -> Settings -> create_app -> uvicorn."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from gateway.settings import ModelSettings, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenyard", description="An OpenAI-compatible gateway over vLLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the configured models")
    serve.add_argument("--config", type=Path, help="YAML settings file (CLI > env > YAML > defaults)")
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=int, help="port to listen on")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    serve.add_argument("--cache-dir", type=Path, help="where builtin models are prepared")
    # Named as in `vllm serve`; --model replaces the configured model list with this one model.
    serve.add_argument("--model", help="model path (replaces the configured models)")
    serve.add_argument("--served-model-name", help="the name clients send as model; default --model")
    serve.add_argument("--dtype", help="the weights' dtype, as in vllm serve")
    serve.add_argument("--max-model-len", type=int, help="the context length; default the model's")
    serve.add_argument("--chat-template", type=Path, help="a Jinja chat template file")
    serve.add_argument(
        "--enable-tracing",
        action="store_true",
        default=None,
        help="export OpenTelemetry traces (the otel extra; OTEL_* variables say where)",
    )
    _add_security_flags(serve)
    return parser


# --- Security flags, named as in FastChat and `vllm serve` ---------------------------------
def _names(text: str) -> list[str]:
    """A JSON list, as vLLM takes it (`'["*"]'`), or comma-separated (`GET,POST`)."""
    text = text.strip()
    if text.startswith("["):
        return [str(value) for value in json.loads(text)]
    return [value.strip() for value in text.split(",") if value.strip()]


def _add_security_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("security")
    group.add_argument("--api-keys", help="comma-separated keys (also TOKENYARD_API_KEYS); the env or a file hide them")
    group.add_argument("--api-keys-file", type=Path, help="one key a line, re-read when it changes")
    group.add_argument("--guard-metrics", action="store_true", default=None, help="ask for a key on /metrics too")
    group.add_argument("--allowed-origins", type=_names, help="CORS origins, JSON or comma-separated (off when unset)")
    group.add_argument("--allowed-methods", type=_names, help="CORS methods (default GET,POST)")
    group.add_argument("--allowed-headers", type=_names, help="CORS request headers")
    group.add_argument("--allow-credentials", action="store_true", default=None, help="CORS credentials")
    group.add_argument("--ssl-keyfile", type=Path, help="TLS private key (PEM)")
    group.add_argument("--ssl-certfile", type=Path, help="TLS certificate chain (PEM)")
    group.add_argument("--ssl", action="store_true", help="TLS from the SSL_KEYFILE and SSL_CERTFILE env (FastChat)")


def _security_overrides(args: argparse.Namespace) -> dict[str, Any]:
    tls = {"ssl_keyfile": args.ssl_keyfile, "ssl_certfile": args.ssl_certfile}
    if args.ssl:
        missing = [name for name in ("SSL_KEYFILE", "SSL_CERTFILE") if not os.environ.get(name)]
        if missing:
            raise SystemExit(f"--ssl needs {' and '.join(missing)} in the environment")
        tls = {
            "ssl_keyfile": tls["ssl_keyfile"] or Path(os.environ["SSL_KEYFILE"]),
            "ssl_certfile": tls["ssl_certfile"] or Path(os.environ["SSL_CERTFILE"]),
        }
    sections = {
        "auth": {"api_keys_file": args.api_keys_file, "guard_metrics": args.guard_metrics},
        "cors": {
            "allowed_origins": args.allowed_origins,
            "allowed_methods": args.allowed_methods,
            "allowed_headers": args.allowed_headers,
            "allow_credentials": args.allow_credentials,
        },
        "tls": tls,
    }
    overrides: dict[str, Any] = {"api_keys": args.api_keys} if args.api_keys is not None else {}
    for section, values in sections.items():
        if given := {key: value for key, value in values.items() if value is not None}:
            overrides[section] = given  # merged with env and YAML field by field
    return overrides


# --- end of the security flags ---------------------------------------------------------------------


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key in ("config", "host", "port", "log_level", "cache_dir")
        if (value := getattr(args, key, None)) is not None
    }
    if args.model:
        model: dict[str, Any] = {"name": args.served_model_name or args.model, "model": args.model}
        model.update({k: v for k in ("dtype", "max_model_len", "chat_template") if (v := getattr(args, k)) is not None})
        overrides["models"] = [ModelSettings(**model)]
    overrides.update(_security_overrides(args))
    if args.enable_tracing:
        overrides["tracing"] = {"enabled": True}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    from gateway.app import create_app
    from gateway.observability.logging import configure_logging
    from gateway.observability.tracing import TracingUnavailable
    from gateway.server import serve

    args = _parser().parse_args(argv)
    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except TracingUnavailable as exc:
        raise SystemExit(f"tokenyard: {exc}") from None
    # uvicorn with a drain on SIGTERM, bounded by settings.drain_deadline_s (see gateway.server and gateway.lifecycle).
    # Exits non-zero when an in-process engine dies (settings.engine_dead_exit_s).
    return serve(app, settings)
