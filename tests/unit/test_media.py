"""engine_adapters.media: what a model's media policy lets through, against a real local HTTP server."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine_adapters.errors import InvalidRequest
from engine_adapters.media import MediaPolicy, resolve_media

LOCAL = ("127.0.0.1/32", "::1/128")


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "green").save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def host() -> Iterator[int]:
    image = png()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  # http.server's name
            if self.path.startswith("/hop/"):
                hops = int(self.path.split("/")[2])
                self.send_response(302)
                self.send_header("location", f"/hop/{hops - 1}" if hops > 1 else "/a.png")
                self.end_headers()
                return
            if self.path == "/slow.png":
                time.sleep(1.0)
            body = image if self.path in ("/a.png", "/slow.png") else b"x" * 5000
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up first
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def chat(url: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]}
    ]


async def resolved_url(url: str, policy: MediaPolicy) -> str:
    messages = await resolve_media(chat(url), policy)
    return str(messages[0]["content"][1]["image_url"]["url"])


async def refusal(url: str, policy: MediaPolicy) -> str:
    with pytest.raises(InvalidRequest) as refused:
        await resolve_media(chat(url), policy)
    assert refused.value.param == "messages[0].content[1]"
    return str(refused.value)


async def test_a_fetched_image_becomes_a_data_url_of_its_bytes(host: int) -> None:
    policy = MediaPolicy(allowed_domains=("localhost",), allowed_networks=LOCAL)
    url = await resolved_url(f"http://localhost:{host}/a.png", policy)
    assert url == "data:image/png;base64," + base64.b64encode(png()).decode()
    inline = "data:image/png;base64," + base64.b64encode(png()).decode()
    assert await resolved_url(inline, MediaPolicy()) == inline  # data: URLs need no allow-list


async def test_nothing_is_fetched_by_default_or_from_a_host_not_listed(host: int) -> None:
    assert "data: URL" in await refusal(f"http://localhost:{host}/a.png", MediaPolicy())
    listed = MediaPolicy(allowed_domains=("*.example.com",), allowed_networks=LOCAL)
    assert "from localhost is not allowed" in await refusal(f"http://localhost:{host}/a.png", listed)


async def test_loopback_is_refused_unless_the_operator_allows_it(host: int) -> None:
    policy = MediaPolicy(allowed_domains=("localhost",))
    assert "loopback" in await refusal(f"http://localhost:{host}/a.png", policy)
    for address in ("10.1.2.3", "169.254.169.254", "192.168.0.1", "0.0.0.0"):
        named = MediaPolicy(allowed_domains=(address,))
        assert f"resolves to {address}" in await refusal(f"http://{address}:{host}/a.png", named)


async def test_redirects_are_followed_and_bounded(host: int) -> None:
    policy = MediaPolicy(allowed_domains=("localhost",), allowed_networks=LOCAL, max_redirects=2)
    assert (await resolved_url(f"http://localhost:{host}/hop/2", policy)).startswith("data:image/png;base64,")
    assert "more than 2 times" in await refusal(f"http://localhost:{host}/hop/3", policy)


async def test_bytes_items_and_time_are_bounded(host: int) -> None:
    small = MediaPolicy(allowed_domains=("localhost",), allowed_networks=LOCAL, max_bytes=1000)
    assert "at most 1000 bytes" in await refusal(f"http://localhost:{host}/big.png", small)
    big_inline = "data:image/png;base64," + base64.b64encode(b"x" * 4000).decode()
    assert "at most 1000 bytes" in await refusal(big_inline, small)
    quick = MediaPolicy(allowed_domains=("localhost",), allowed_networks=LOCAL, timeout_s=0.2)
    assert "took longer than 0.2 s" in await refusal(f"http://localhost:{host}/slow.png", quick)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png()).decode()}}
    with pytest.raises(InvalidRequest, match="at most 2"):
        await resolve_media([{"role": "user", "content": [image, image, image]}], MediaPolicy(max_items=2))


async def test_local_files_only_inside_the_media_directory(tmp_path: Path) -> None:
    inside = tmp_path / "media"
    inside.mkdir()
    (inside / "a.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    (inside / "link.png").symlink_to(tmp_path / "secret.png")
    policy = MediaPolicy(local_dir=str(inside))
    assert (await resolved_url((inside / "a.png").as_uri(), policy)).startswith("data:image/png;base64,")
    for outside in (tmp_path / "secret.png", inside / "link.png", inside / ".." / "secret.png"):
        assert "outside" in await refusal(f"file://{outside}", policy)
    assert "does not read local media" in await refusal((inside / "a.png").as_uri(), MediaPolicy())
