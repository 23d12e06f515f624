"""`tokenyard serve [--config FILE] [flags]`: flags -> Settings -> create_app -> uvicorn."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from gateway.settings import ModelSettings, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenyard", description="An OpenAI-compatible gateway over vLLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the configured models")
    serve.add_argument("--config", type=Path, help="YAML settings file (CLI > env > YAML > defaults)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--cache-dir", type=Path)
    # Named as in `vllm serve`; --model replaces the configured model list with this one model.
    serve.add_argument("--model", help="model path (replaces the configured models)")
    serve.add_argument("--served-model-name")
    serve.add_argument("--dtype")
    serve.add_argument("--max-model-len", type=int)
    serve.add_argument("--chat-template", type=Path)
    return parser


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
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from gateway.app import create_app

    args = _parser().parse_args(argv)
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=int(settings.drain_deadline_s) or None)
    return 0
