"""DNS discovery: re-resolve a (Kubernetes headless Service) name and follow its addresses.

A headless Service resolves to one address per Ready pod, so pods join and leave the route as they
become Ready or go away. A failed lookup keeps the instances we have: a resolver hiccup must not
empty a route; dead instances are caught by the health checks anyway.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from gateway.settings import DiscoverySettings

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def address_url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


async def discover(settings: DiscoverySettings, resolver: Resolver) -> list[str] | None:
    """The instance URLs the name stands for now; None when the lookup failed."""
    assert settings.dns_name is not None  # the settings ask for it in mode dns
    try:
        async with asyncio.timeout(settings.interval_s):
            addresses = await resolver(settings.dns_name, settings.port)
    except (OSError, TimeoutError, UnicodeError) as exc:
        log.warning("cannot resolve %s: %s; keeping the instances we have", settings.dns_name, exc)
        return None
    return [address_url(settings.scheme, address, settings.port) for address in addresses]


async def watch_dns(settings: DiscoverySettings, resolver: Resolver, apply: Callable[[list[str]], None]) -> None:
    while True:
        await asyncio.sleep(settings.interval_s)
        urls = await discover(settings, resolver)
        if urls is not None:
            apply(urls)
