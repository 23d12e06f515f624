"""What a request really used, told by whoever learns it to whoever charges it.

The limits middleware opens a `Spent` for each request it charges (`spending`); the metering of the engine
or relayed request under it (gateway.services.metering.MeteredStream) reports into it: the answer's usage
once known (the router always asks an instance for it, and drops it again where the client did not), and
meanwhile how many events have come. So a budget is charged what was generated even when the client never
sees a usage (a stream without include_usage) or leaves before the end (what came up to then).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Spent:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = False  # the answer's usage came
    events: int = 0  # pieces of output that came (about a token each), for an answer that ended without usage

    def report(self, prompt_tokens: int, completion_tokens: int) -> None:
        if prompt_tokens or completion_tokens:
            self.prompt_tokens, self.completion_tokens, self.reported = prompt_tokens, completion_tokens, True


_SPENT: ContextVar[Spent | None] = ContextVar("tokenyard_spent", default=None)


@contextmanager
def spending() -> Iterator[Spent]:
    """A fresh Spent for the request running in this context (tasks it starts share it)."""
    spent = Spent()
    token = _SPENT.set(spent)
    try:
        yield spent
    finally:
        _SPENT.reset(token)


def current() -> Spent | None:
    """The charged request's Spent; None where nothing charges it."""
    return _SPENT.get()
