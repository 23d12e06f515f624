"""The chart's `helm test` script, run as rendered against a real router whose keys file has the server's
layout (a comment first, `name=` fields): it must find the key as the server does and see every model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.helm.rendering import render


def test_helm_test_script_reads_the_keys_file_like_the_server(fleet: Fleet, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("# rotated weekly\n\nsk-helm-test-0123 name=ops rpm=60\nsk-other-4567\n")
    engine = Engine(tmp_path, tokens=2, delay_ms=1).start()
    fleet.engines.append(engine)
    router = Router(tmp_path, [engine.url])
    config = {
        "routes": [{"name": MODEL, "upstreams": [engine.url]}],
        "router": router.settings,
        "auth": {"api_keys_file": str(keys)},
        "log_level": "warning",
    }
    router.config.write_text(yaml.safe_dump(config))
    fleet.routers.append(router.start())
    engine.wait_ready()
    router.wait_ready()

    (pod,) = render(
        {
            "apiKeys": {"keys": ["unused-0123456789"]},
            "models": [{"name": MODEL, "model": "/m"}],
            "tests": {"timeoutSeconds": 10},
        }
    ).of_kind("Pod")
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    env.update(MODELS_URL=f"{router.url}/v1/models", KEYS_FILE=str(keys))
    result = subprocess.run(
        [sys.executable, "-c", container["command"][2]],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert MODEL in result.stdout


def test_helm_test_script_fails_while_a_model_has_no_ready_engine(fleet: Fleet, tmp_path: Path) -> None:
    """`helm test` with every engine down: the router still lists the model, and /ready says it has no ready
    engine, so the test fails instead of passing on a release that serves nothing."""
    down = Engine(tmp_path, tokens=2, delay_ms=1)  # its port chosen, never started
    router = Router(tmp_path, [down.url])
    router.config.write_text(
        yaml.safe_dump({"routes": [{"name": MODEL, "upstreams": [down.url]}], "router": router.settings})
    )
    fleet.routers.append(router.start())
    router.wait_ready()

    (pod,) = render({"models": [{"name": MODEL, "model": "/m"}], "tests": {"timeoutSeconds": 3}}).of_kind("Pod")
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    env.update(MODELS_URL=f"{router.url}/v1/models")
    result = subprocess.run(
        [sys.executable, "-c", container["command"][2]],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"models with no ready engine: ['{MODEL}']" in result.stderr
