from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Fleet

SPLICE_MODES = [pytest.param(True, id="splice"), pytest.param(False, id="no-splice")]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(params=SPLICE_MODES)
def fleet_both(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet whose routers run with the splice on, then off: the relay's answers must not differ."""
    started = Fleet(tmp_path, splice=request.param)
    try:
        yield started
    finally:
        started.stop()
