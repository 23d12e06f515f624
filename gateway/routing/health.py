"""Active health checks: every interval, GET /health on each instance, then its load and models (each time
on a route with LoRA adapters, whose /v1/models says which adapters the instance holds).

An instance is healthy while it answers /health with 200. One that was healthy is taken out after
`failures` checks in a row fail (router.health_failures), so one slow answer from a busy instance does not
move its traffic (and, on a LoRA route, its adapters) elsewhere; the first check at start decides at once.
Passive signals (failed requests) go to the breaker instead; an instance takes traffic only when both agree.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from engine_adapters.openai_http import EngineLoad
from gateway.errors import GatewayError
from gateway.routing.instance import Instance

log = logging.getLogger(__name__)


async def probe(instance: Instance, failures: int = 1) -> bool:
    """One check of the instance; True when it passed after failing before (it came back). A healthy
    instance is taken out at its `failures`-th failed check in a row."""
    adapter = instance.adapter
    try:
        await adapter.check_health()
    except GatewayError:
        instance.failed_checks += 1
        if instance.healthy and instance.failed_checks >= failures:
            log.warning("upstream %s failed %d health checks in a row", instance.url, instance.failed_checks)
            instance.healthy = False
        return False
    instance.failed_checks = 0
    came_back = not instance.healthy
    if came_back:
        log.info("upstream %s is healthy again", instance.url)
    instance.healthy = True
    try:
        instance.engine = await adapter.scrape_load() or EngineLoad()
        # A restarted instance may serve another context length; on a LoRA route, other adapters.
        if came_back or not adapter.models() or adapter.lora_names:
            await adapter.refresh_models()
    except GatewayError:
        log.debug("upstream %s: no load or models this round", instance.url, exc_info=True)
    return came_back


async def watch_health(
    instances: Callable[[], Iterable[Instance]],
    interval_s: float,
    failures: int = 1,
    on_healthy: Callable[[], None] = lambda: None,
) -> None:
    """Probe every instance each interval; `on_healthy` is called when any came back."""
    while True:
        await asyncio.sleep(interval_s)
        results = await asyncio.gather(*(probe(instance, failures) for instance in instances()), return_exceptions=True)
        for result in results:  # a bug in one probe must not end the checks for every instance
            if isinstance(result, Exception):
                log.error("health check failed unexpectedly", exc_info=result)
        if any(result is True for result in results):
            on_healthy()
