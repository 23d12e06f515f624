"""Engine mode loads nothing of the router: an engine-mode app, built in a fresh process, has not imported
pyzmq (the KV events), the Kubernetes discovery or the routed adapter. AppState knows routes only through a
protocol (gateway.state.RoutedModel), and the lifespan imports gateway.routing.reload only when routes are set.
tests/faults/test_router_imports.py holds the other half: a router never imports vLLM."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.unit.test_import_graph import ROOT

PROBE = """
import json, sys
from gateway.app import create_app
from gateway.settings import Settings
app = create_app(Settings())
assert app.state is not None
print(json.dumps(sorted(sys.modules)))
"""
ROUTER_ONLY = ("zmq", "kubernetes", "gateway.routing.adapter", "gateway.routing.kube", "gateway.routing.kv_events")


def imported_by(probe: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_an_engine_mode_app_imports_nothing_of_the_router() -> None:
    imported = imported_by(PROBE)
    assert {"gateway.app", "gateway.state", "gateway.relay.door"} <= imported  # the app was built
    assert sorted(m for m in imported if m.split(".")[0] in ROUTER_ONLY or m.startswith(ROUTER_ONLY)) == []


def test_a_router_app_does_import_them() -> None:
    """The probe can see them: the same process that starts the route table has the router's modules."""
    imported = imported_by("import json, sys\nimport gateway.routing.reload\nprint(json.dumps(sorted(sys.modules)))")
    assert {"zmq", "gateway.routing.adapter", "gateway.routing.kv_events"} <= imported
