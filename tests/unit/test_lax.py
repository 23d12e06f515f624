"""Numbers read as the engine's pydantic reads them in lax mode, for checks on the raw JSON."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.protocol.lax import lax_int

VALUES: list[Any] = [
    8,
    8.0,
    8.5,
    "8",
    " 8 ",
    "8.0",
    "+8",
    "-3",
    "1_000",
    "8.5",
    "1e3",
    "0x10",
    "８",
    True,
    None,
    [2],
    {},
]


@pytest.mark.parametrize("value", VALUES)
def test_lax_int_reads_what_pydantic_reads(value: Any) -> None:
    try:
        expected: int | None = TypeAdapter(int).validate_python(value)
    except ValidationError:
        expected = None
    assert lax_int(value) == expected
