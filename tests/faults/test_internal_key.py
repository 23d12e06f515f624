"""The chart's internal key, through real processes: an instance that requires it (a tokenyard server with a
keys file, as the chart runs engines) refuses a request without it, and a router whose route reads it from
`api_key_file` gets through, also after the key is rotated in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.faults.client import completion
from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.support.waiting import wait_until


def _serve(fleet: Fleet, router: Router, route: dict[str, Any], **config: Any) -> Router:
    """Start `router` with one route over `route`'s upstreams and extra top-level config."""
    body = {"routes": [{"name": MODEL, **route}], "router": router.settings, "log_level": "warning", **config}
    router.config.write_text(yaml.safe_dump(body))
    fleet.routers.append(router.start())
    router.wait_ready()
    return router


def _post(url: str, key: str | None = None) -> int:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/completions", json=completion(max_tokens=2), headers=headers, timeout=10).status_code


def test_instance_requires_the_internal_key_and_the_router_sends_it_from_a_file(fleet: Fleet, tmp_path: Path) -> None:
    keys = tmp_path / "internal-key"
    keys.write_text("# the internal key\nsk-internal-one name=router\n")
    engine = Engine(tmp_path, tokens=2, delay_ms=1).start()
    fleet.engines.append(engine)
    engine.wait_ready()
    # The instance: a tokenyard server that takes only the keys in the file, as an engine pod does.
    instance = _serve(fleet, Router(tmp_path, []), {"upstreams": [engine.url]}, auth={"api_keys_file": str(keys)})
    front = _serve(fleet, Router(tmp_path, []), {"upstreams": [instance.url], "api_key_file": str(keys)})

    assert _post(instance.url) == 401  # a pod that skips the router and has no key is refused
    assert _post(instance.url, "sk-wrong") == 401
    assert _post(front.url) == 200  # the router sends the key from its file

    keys.write_text("sk-internal-two\n")  # rotated: the old key no longer opens the instance
    wait_until(lambda: _post(instance.url, "sk-internal-one") == 401, 10, "the instance re-read its keys file")
    wait_until(lambda: _post(front.url) == 200, 10, "the router re-read its key file")
    assert _post(instance.url, "sk-internal-two") == 200
