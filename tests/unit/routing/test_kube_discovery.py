"""Kubernetes API discovery against a fake API server on 127.0.0.1: list, watch, 410, the token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.routing.adapter import RoutedAdapter
from gateway.routing.kube import EndpointSliceWatch, KubeError, kube_target, slice_urls
from gateway.settings import DiscoverySettings, RouterSettings, RouteSettings
from tests.support.fake_instance import FakeUpstream
from tests.support.waiting import until

SLICES = "/apis/discovery.k8s.io/v1/namespaces/serving/endpointslices"


def endpoint(address: str, ready: bool | None = True) -> dict[str, Any]:
    return {"addresses": [address], "conditions": {} if ready is None else {"ready": ready}}


def endpoint_slice(name: str, *endpoints: dict[str, Any], port: int = 8000) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": "0"},
        "ports": [{"name": "http", "port": port}],
        "endpoints": list(endpoints),
    }


@dataclass
class Seen:
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class Watch:
    """One open watch; the test writes its events, then ends it, or the server drops it."""

    seen: Seen
    events: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)

    def send(self, kind: str, obj: dict[str, Any]) -> None:
        self.events.put_nowait(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

    def end(self) -> None:
        self.events.put_nowait(None)

    def drop(self) -> None:
        """Cut the connection mid-stream, with no closing chunk."""
        self.events.put_nowait(b"")


class FakeKubeApi:
    """Just enough of the API server: the EndpointSlice list and a chunked watch stream, over HTTP/1.1."""

    def __init__(self) -> None:
        self.slices: dict[str, dict[str, Any]] = {}
        self.version = 100
        self.lists: list[Seen] = []
        self.watches: asyncio.Queue[Watch] = asyncio.Queue()
        self.watch_status = 200  # what the next watch request is answered with
        self.url = ""
        self._open: list[Watch] = []
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FakeKubeApi:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for watch in self._open:  # end the handlers ourselves: Python 3.11 cannot close a server's clients
            watch.drop()
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()

    async def next_watch(self) -> Watch:
        async with asyncio.timeout(3):
            return await self.watches.get()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            target = urlsplit(head[0].split(" ")[1])
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if line)}
            seen = Seen(target.path, {k: v[0] for k, v in parse_qs(target.query).items()}, headers)
            assert seen.path == SLICES and seen.params["labelSelector"] == "kubernetes.io/service-name=engines"
            if seen.params.get("watch") != "true":
                self.lists.append(seen)
                items = [
                    {**s, "metadata": {**s["metadata"], "resourceVersion": str(self.version)}}
                    for s in self.slices.values()
                ]
                body = json.dumps({"metadata": {"resourceVersion": str(self.version)}, "items": items}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            elif self.watch_status != 200:
                status, self.watch_status = self.watch_status, 200
                writer.write(b"HTTP/1.1 %d Gone\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status)
            else:
                watch = Watch(seen)
                self.watches.put_nowait(watch)
                self._open.append(watch)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                while (line := await watch.events.get()) is not None:
                    if not line:
                        writer.transport.abort()
                        return
                    writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        writer.close()


def settings(api: FakeKubeApi, tmp_path: Path, **overrides: Any) -> DiscoverySettings:
    token_file = tmp_path / "token"
    if not token_file.exists():
        token_file.write_text("token-1\n")
    return DiscoverySettings(
        **{
            "mode": "kubernetes",
            "service": "engines",
            "namespace": "serving",
            "api_url": api.url,
            "token_file": token_file,
            "interval_s": 0.5,
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def following(config: DiscoverySettings) -> AsyncIterator[Callable[[], list[str]]]:
    applied: list[list[str]] = [[]]
    watch = EndpointSliceWatch(config, applied.append, watch_timeout_s=30)
    task = asyncio.ensure_future(watch.run())
    try:
        assert await watch.wait_synced(3)
        yield lambda: applied[-1]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def soon(predicate: Callable[[], bool], within_s: float = 1.0) -> None:
    await until(predicate, within_s, "the watch's next state", interval_s=0.01, in_thread=False)


async def test_list_then_watch_follows_ready_endpoints(tmp_path: Path) -> None:
    async with FakeKubeApi() as api:
        api.slices["engines-a"] = endpoint_slice(
            "engines-a", endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=None), endpoint("10.0.0.3", ready=False)
        )
        async with following(settings(api, tmp_path)) as current:
            # A missing `ready` counts as ready, as Kubernetes has it; an explicit false does not.
            assert current() == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
            watch = await api.next_watch()
            assert watch.seen.params["resourceVersion"] == "100" and watch.seen.params["timeoutSeconds"] == "30"

            watch.send("ADDED", endpoint_slice("engines-b", endpoint("10.0.1.1"), port=9000))
            await soon(lambda: "http://10.0.1.1:9000" in current())
            watch.send(
                "MODIFIED",
                endpoint_slice(
                    "engines-a", endpoint("10.0.0.1", ready=False), endpoint("10.0.0.2"), endpoint("10.0.0.3")
                ),
            )
            await soon(lambda: current() == ["http://10.0.0.2:8000", "http://10.0.0.3:8000", "http://10.0.1.1:9000"])
            watch.send("BOOKMARK", {"metadata": {"resourceVersion": "180"}})
            watch.send("DELETED", endpoint_slice("engines-b"))
            await soon(lambda: current() == ["http://10.0.0.2:8000", "http://10.0.0.3:8000"])
            assert len(api.lists) == 1  # all of it from one list and one watch


@pytest.mark.parametrize("how", ["http-410", "error-event-410", "dropped"])
async def test_an_expired_or_broken_watch_lists_again(tmp_path: Path, how: str) -> None:
    async with FakeKubeApi() as api:
        api.slices["engines-a"] = endpoint_slice("engines-a", endpoint("10.0.0.1"))
        if how == "http-410":
            api.watch_status = 410
        async with following(settings(api, tmp_path)) as current:
            api.slices["engines-a"] = endpoint_slice("engines-a", endpoint("10.0.0.9"))  # a change the watch misses
            if how == "error-event-410":
                (await api.next_watch()).send("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})
            elif how == "dropped":
                (await api.next_watch()).drop()
            await soon(lambda: current() == ["http://10.0.0.9:8000"], within_s=2)
            assert len(api.lists) == 2
            await api.next_watch()  # and it watches again, from the new list


async def test_the_token_is_sent_and_read_again_on_reconnect(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeKubeApi() as api:
        config = settings(api, tmp_path)
        async with following(config):
            assert api.lists[0].headers["authorization"] == "Bearer token-1"
            watch = await api.next_watch()
            assert watch.seen.headers["authorization"] == "Bearer token-1"
            config.token_file.write_text("token-2\n")  # the kubelet rotated it
            watch.end()  # the server ends the watch on time: it is resumed, with the token as it is now
            resumed = await api.next_watch()
            assert resumed.seen.headers["authorization"] == "Bearer token-2"
            assert resumed.seen.params["resourceVersion"] == "100" and len(api.lists) == 1
            resumed.send("ERROR", {"kind": "Status", "code": 500, "message": "etcd is sad"})
            relisted = await api.next_watch()
            assert api.lists[1].headers["authorization"] == relisted.seen.headers["authorization"] == "Bearer token-2"
    assert "etcd is sad" in caplog.text  # the failure is logged ...
    assert "token-1" not in caplog.text and "token-2" not in caplog.text  # ... the token never


async def test_a_route_starts_with_the_listed_instances_and_follows_them(tmp_path: Path) -> None:
    async with FakeKubeApi() as api:
        api.slices["engines-a"] = endpoint_slice("engines-a", endpoint("10.0.0.1"), endpoint("fd00::2"))
        route = RouteSettings(name="m", discovery=settings(api, tmp_path))
        adapter = RoutedAdapter(route, RouterSettings(health_interval_s=3600), connect=FakeUpstream)  # type: ignore[arg-type]
        await adapter.start()
        try:
            assert sorted(adapter.instances) == ["http://10.0.0.1:8000", "http://[fd00::2]:8000"]
            (await api.next_watch()).send("DELETED", endpoint_slice("engines-a"))
            await soon(lambda: not adapter.instances)
        finally:
            await adapter.close()


async def test_an_unreachable_api_keeps_retrying_without_instances(tmp_path: Path) -> None:
    async with FakeKubeApi() as api:
        pass  # closed: nothing listens there any more
    applied: list[list[str]] = []
    watch = EndpointSliceWatch(settings(api, tmp_path), applied.append)
    task = asyncio.ensure_future(watch.run())
    try:
        assert not await watch.wait_synced(0.3) and applied == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_ports_readiness_and_addresses_of_a_slice() -> None:
    base = DiscoverySettings(mode="kubernetes", service="engines", port=7000)
    two_ports = {
        "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}],
        "endpoints": [endpoint("10.0.0.1"), endpoint("fd00::1"), {"addresses": [], "conditions": {}}],
    }
    assert slice_urls(two_ports, base) == {"http://10.0.0.1:9090", "http://[fd00::1]:9090"}  # the first port
    named = base.model_copy(update={"port_name": "http", "scheme": "https"})
    assert slice_urls(two_ports, named) == {"https://10.0.0.1:8000", "https://[fd00::1]:8000"}
    no_ports = {"ports": None, "endpoints": [endpoint("10.0.0.1"), {"addresses": ["10.0.0.2"]}]}
    assert slice_urls(no_ports, base) == {"http://10.0.0.1:7000", "http://10.0.0.2:7000"}


def test_where_to_watch_defaults_to_the_pod_environment(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("serving\n")
    config = DiscoverySettings(mode="kubernetes", service="engines")
    target = kube_target(
        config, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path / "namespace"
    )
    assert target.slices_url == "https://10.96.0.1:443/apis/discovery.k8s.io/v1/namespaces/serving/endpointslices"
    assert target.selector == "kubernetes.io/service-name=engines"
    with pytest.raises(KubeError, match="not in a cluster"):
        kube_target(config, {}, tmp_path / "namespace")
    with pytest.raises(KubeError, match="namespace"):
        kube_target(config.model_copy(update={"api_url": "https://k8s:6443"}), {}, tmp_path / "missing")


def test_each_mode_needs_its_target() -> None:
    with pytest.raises(ValueError, match="dns_name"):
        DiscoverySettings()
    with pytest.raises(ValueError, match="service"):
        DiscoverySettings(mode="kubernetes", dns_name="engines.serving.svc")
    assert DiscoverySettings(mode="kubernetes", service="engines").dns_name is None
