"""The server: uvicorn, with bounds on slow and oversized request heads, each request's ClientSocket, the
drain on SIGTERM and the exit when an in-process engine dies (the checklists are in gateway.lifecycle).
uvicorn's own classes are subclassed in gateway.uvicorn_coupling, imported here only when the app runs."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from gateway.lifecycle import AFTER_CUT_S, log_event

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gateway.settings import Settings


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    from gateway.uvicorn_coupling import BoundedProtocol

    limits, tls = settings.limits, settings.tls
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # our JSON handler on the root logger formats uvicorn's records too
        "access_log": False,  # the gateway writes its own access log, with request ids
        "http": functools.partial(BoundedProtocol, limits=limits),  # uvicorn calls it as it would the class
        "timeout_keep_alive": limits.keep_alive_timeout_s,
        # The drain has already waited for the requests; this only covers sockets still closing.
        "timeout_graceful_shutdown": int(AFTER_CUT_S),
    }
    if tls.ssl_keyfile and tls.ssl_certfile:
        options.update(ssl_keyfile=str(tls.ssl_keyfile), ssl_certfile=str(tls.ssl_certfile))
    return options


def serve(app: FastAPI, settings: Settings) -> int:
    """Run `app` until SIGTERM or SIGINT, then drain (see the module docstring). Returns the exit code."""
    import uvicorn

    from gateway.uvicorn_coupling import DrainingServer

    # The settings as the process sees them; SecretStr fields print as stars.
    log_event("settings", settings=settings.model_dump(mode="json"))
    server = DrainingServer(uvicorn.Config(app, **uvicorn_options(settings)), app.state.tokenyard)
    server.run()
    return server.exit_code
