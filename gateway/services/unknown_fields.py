"""Logging the names of request fields we accept but ignore, once each, so operators learn what clients
expect of us."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from gateway.observability.logging import FIELDS_ATTR
from gateway.state import AppState

log = logging.getLogger(__name__)

MAX_LOGGED_FIELD_NAMES = 256  # a client sending ever new names cannot grow the set or the log without bound


def log_unknown_fields(state: AppState, req: BaseModel) -> None:
    """Unknown request fields are accepted and ignored. Each one's NAME (never its value, which may hold
    anything) is logged once per process, so operators learn what clients expect that we do not do."""
    seen = state.unknown_fields_seen
    for name in req.model_extra or ():
        if name not in seen and len(seen) < MAX_LOGGED_FIELD_NAMES:
            seen.add(name)
            log.info("ignored an unknown request field", extra={FIELDS_ATTR: {"field": name[:100]}})
