"""Numbers as the engine reads them: pydantic's lax mode takes `8`, `8.0`, `"8"`, `" 8 "`, `"8.0"`, `"1_000"` and
`true` for an int. A check on the raw JSON (a cap, a refusal) must read a value the same way, or a string
slips past a check that the engine then serves."""

from __future__ import annotations

import re
from typing import Any

_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0*)?")


def lax_int(value: Any) -> int | None:
    """The int pydantic's lax mode would make of `value`; None where it would refuse it."""
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _INT_TEXT.fullmatch(text := value.strip()):
        return int(text.split(".", 1)[0])
    return None
