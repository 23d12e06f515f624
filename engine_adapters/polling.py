"""Waiting for a condition that nothing signals: the in-flight counts a drain or a close waits on.

Those counts change in several places (streams, whole answers, embeddings, an engine that dies), so there is
no single spot to set an event from; a short poll reads them where they live instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL_S = 0.05


async def poll_until(
    done: Callable[[], bool],
    deadline: Callable[[], float],
    clock: Callable[[], float] = time.monotonic,
    interval_s: float = POLL_S,
) -> bool:
    """Check `done` every `interval_s` until it holds (True) or `clock()` passes `deadline()` (False).

    The deadline is read afresh each time, since a drain's deadline can move (a second signal shortens it).
    """
    while not done():
        if clock() >= deadline():
            return False
        await asyncio.sleep(interval_s)
    return True
