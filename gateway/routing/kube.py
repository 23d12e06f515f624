"""Kubernetes API discovery: watch a Service's EndpointSlices and follow its Ready endpoints.

The same job as DNS discovery, pushed instead of polled: a pod joins the route when it turns Ready and
leaves as soon as it is not. The loop is the usual list-then-watch. List the slices, then watch from
that resourceVersion; a watch the server ends on time (timeoutSeconds) is resumed, one that failed is
followed by a fresh list after a backoff, and 410 Gone (the history we watch from was compacted) by a
fresh list at once. A failed list keeps the instances we have, as a failed DNS lookup does.

The service-account token is read again for every request, since the kubelet rotates it; it is sent,
never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.routing.discovery import address_url
from gateway.settings import SERVICE_ACCOUNT_DIR, DiscoverySettings

log = logging.getLogger(__name__)

EndpointSlice = dict[str, Any]

WATCH_TIMEOUT_S = 240  # the API server ends each watch after this; we resume from where it was
CONNECT_TIMEOUT_S = 5.0
MIN_WATCH_S = 1.0  # a watch that ends sooner is not resumed at once: never a hot loop on the API server


class KubeError(Exception):
    """The API server said no, or said something we cannot use."""


class Gone(KubeError):
    """410: the resourceVersion we watch from is too old; list again."""


@dataclass(frozen=True)
class KubeTarget:
    api_url: str
    namespace: str
    service: str

    @property
    def slices_url(self) -> str:
        return f"{self.api_url}/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"

    @property
    def selector(self) -> str:
        return f"kubernetes.io/service-name={self.service}"


def kube_target(
    settings: DiscoverySettings,
    env: Mapping[str, str] = os.environ,
    namespace_file: Path = SERVICE_ACCOUNT_DIR / "namespace",
) -> KubeTarget:
    """Where to watch: the settings, else what a pod is given (its API server env, its namespace file)."""
    assert settings.service is not None  # the settings ask for it in mode kubernetes
    api_url = settings.api_url
    if api_url is None:
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeError("no api_url and no KUBERNETES_SERVICE_HOST/PORT: not in a cluster?")
        api_url = address_url("https", host, int(port))
    namespace = settings.namespace
    if namespace is None:
        try:
            namespace = namespace_file.read_text().strip()
        except OSError as exc:
            raise KubeError(f"no namespace set and {namespace_file} unreadable: {exc.strerror}") from None
    return KubeTarget(api_url.rstrip("/"), namespace, settings.service)


def slice_urls(endpoint_slice: EndpointSlice, settings: DiscoverySettings) -> set[str]:
    """The instance URLs of one slice's Ready endpoints."""
    ports = endpoint_slice.get("ports") or []
    chosen: dict[str, Any]
    if settings.port_name is not None:
        chosen = next((p for p in ports if p.get("name") == settings.port_name), {})
    else:
        chosen = ports[0] if ports else {}
    port = chosen.get("port") or settings.port
    urls = set()
    for endpoint in endpoint_slice.get("endpoints") or []:
        # Kubernetes reads a missing `ready` as ready (unknown state); only an explicit false is not.
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        addresses = endpoint.get("addresses") or []
        if addresses:  # the addresses of one endpoint are fungible: the first will do
            urls.add(address_url(settings.scheme, addresses[0], port))
    return urls


def bearer_headers(token_file: Path) -> dict[str, str]:
    """The Authorization header from the token file as it is now; none when there is no file
    (kubectl proxy, or an api_url that needs no token)."""
    try:
        token = token_file.read_text().strip()
    except FileNotFoundError:
        return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


class EndpointSliceWatch:
    """Follows one Service; hands the sorted URLs of its Ready endpoints to `apply` on each change."""

    def __init__(
        self,
        settings: DiscoverySettings,
        apply: Callable[[list[str]], None],
        *,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._apply = apply
        self.watch_timeout_s = watch_timeout_s
        self._rng = rng or random.Random()
        self._slices: dict[str, set[str]] = {}  # slice name -> its ready URLs
        self._applied: list[str] | None = None
        self._failures = 0
        self.synced = asyncio.Event()  # set once the first list has been applied

    async def wait_synced(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.synced.wait()
        return self.synced.is_set()

    async def run(self) -> None:
        while True:
            try:
                target = kube_target(self.settings)
                async with self._client(target) as client:
                    while True:
                        version = await self._list(client, target)
                        with contextlib.suppress(Gone):  # history compacted: list again, now
                            await self._follow(client, target, version)
                        log.info("service %s/%s: watch expired (410); listing again", target.namespace, target.service)
            except Exception as exc:  # whatever broke, keep the instances we have and start over
                self._failures += 1
                delay = min(self.settings.interval_s, 0.2 * 2 ** (self._failures - 1)) * (0.5 + self._rng.random())
                log.warning(
                    "kubernetes discovery of service %s: %s; retrying in %.1f s",
                    self.settings.service,
                    _describe(exc),
                    delay,
                )
                await asyncio.sleep(delay)

    def _client(self, target: KubeTarget) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if target.api_url.startswith("https:") and self.settings.ca_file.is_file():
            verify = ssl.create_default_context(cafile=str(self.settings.ca_file))
        return httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(CONNECT_TIMEOUT_S * 2, connect=CONNECT_TIMEOUT_S))

    async def _list(self, client: httpx.AsyncClient, target: KubeTarget) -> str:
        response = await client.get(
            target.slices_url,
            params={"labelSelector": target.selector},
            headers=bearer_headers(self.settings.token_file),
        )
        _check(response)
        body = response.json()
        self._slices = {item["metadata"]["name"]: slice_urls(item, self.settings) for item in body.get("items") or []}
        self._changed()
        self.synced.set()
        return str(body["metadata"]["resourceVersion"])

    async def _follow(self, client: httpx.AsyncClient, target: KubeTarget, version: str) -> None:
        """Watch from `version`, resuming each watch that ends on time; returns never, raises on failure."""
        loop = asyncio.get_running_loop()
        while True:
            opened = loop.time()
            version = await self._watch(client, target, version)
            self._failures = 0  # it ran its course: the connection is good
            if (early := MIN_WATCH_S - (loop.time() - opened)) > 0:
                await asyncio.sleep(early)

    async def _watch(self, client: httpx.AsyncClient, target: KubeTarget, version: str) -> str:
        params = {
            "labelSelector": target.selector,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout_s),
        }
        # The server ends the watch itself; the read timeout only catches a connection gone silent.
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=self.watch_timeout_s + 30)
        async with client.stream(
            "GET", target.slices_url, params=params, timeout=timeout, headers=bearer_headers(self.settings.token_file)
        ) as response:
            if response.status_code >= 400:
                await response.aread()
            _check(response)
            async for line in response.aiter_lines():
                if line.strip():
                    version = self._on_event(json.loads(line), version)
                    self._failures = 0
        return version

    def _on_event(self, event: dict[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":  # obj is a Status
            if obj.get("code") == 410:
                raise Gone("watch expired")
            raise KubeError(f"watch error {obj.get('code')}: {str(obj.get('message'))[:200]}")
        metadata = obj.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or version)
        if kind in ("ADDED", "MODIFIED"):
            self._slices[metadata["name"]] = slice_urls(obj, self.settings)
        elif kind == "DELETED":
            self._slices.pop(metadata.get("name", ""), None)
        else:  # BOOKMARK: only a newer resourceVersion
            return version
        self._changed()
        return version

    def _changed(self) -> None:
        urls = sorted(set[str]().union(*self._slices.values()))
        if urls != self._applied:
            self._applied = urls
            self._apply(urls)


def _check(response: httpx.Response) -> None:
    if response.status_code == 410:
        raise Gone("resourceVersion too old")
    if response.status_code in (401, 403):
        raise KubeError(f"HTTP {response.status_code}: may the ServiceAccount get/list/watch endpointslices?")
    if response.status_code >= 400:
        raise KubeError(f"HTTP {response.status_code}: {response.text[:200]}")


def _describe(exc: Exception) -> str:
    # httpx's messages name the URL, never the headers, so the token stays out of the log.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
