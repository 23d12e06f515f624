from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.fleet import ROUTER_MODES
from tests.faults.harness import Fleet

# router.splice on and off, with the ids the e2e router fixture uses ("splice", "asgi")
SPLICE_MODES = [pytest.param(splice, id=name) for name, splice in ROUTER_MODES.items()]


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
