"""The `router` fixture: each router-facing test runs once through each of its module's two routers."""

from __future__ import annotations

import pytest

from tests.e2e.fleet import ROUTER_MODES, EngineFleet


@pytest.fixture(params=list(ROUTER_MODES))
def router(request: pytest.FixtureRequest, fleet: EngineFleet) -> str:
    """The URL of the module's router with router.splice on ("splice") or off ("asgi"); `fleet` is the
    module's own (module-scoped) fixture."""
    return fleet.routers[request.param]
