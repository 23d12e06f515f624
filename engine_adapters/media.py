"""Media in a chat request (images, audio, video), made safe to hand to the engine.

Fetching media is a network request made on a user's behalf, so nothing is fetched that the model's
MediaPolicy does not allow, and the engine never fetches anything itself: every media part that names a URL
is resolved here into a `data:` URL, which vLLM decodes in memory.

- `data:` URLs are always taken (base64 only), bounded in bytes.
- `http(s)` URLs only when the policy lists the host (vLLM's --allowed-media-domains: a name, or
  `*.example.com` for its subdomains). The host is resolved once, and every address it has must be a public
  one unless the policy's `allowed_networks` holds it: never loopback, link-local (169.254.0.0/16, where
  clouds keep their metadata), private or reserved ranges by default. The request goes to the address that
  was checked (the name only in the Host header and TLS SNI), so a second DNS answer cannot redirect it.
  Redirects are followed by hand, each hop checked the same way, at most `max_redirects`.
- `file://` URLs only under the policy's `local_dir` (vLLM's --allowed-local-media-path), resolved with
  symlinks followed, so `..` and links cannot leave it.
- Every item is bounded in bytes (`max_bytes`), images in pixels (`max_pixels`), a request in items
  (`max_items`) and each fetch in time (`timeout_s`).

Each refusal is an InvalidRequest whose `param` names the part (`messages[0].content[1]`) and says why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import ipaddress
import mimetypes
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from engine_adapters.errors import InvalidRequest

# A chat part's type -> the input it gives the model. Text parts (and an assistant's refusal) are text.
MODALITY_OF_PART = {
    "image_url": "image",
    "image_embeds": "image",
    "image_pil": "image",
    "input_audio": "audio",
    "audio_url": "audio",
    "audio_embeds": "audio",
    "video_url": "video",
    "video_embeds": "video",
    "file": "file",
}
TEXT_PARTS = frozenset({"text", "refusal"})
_URL_PARTS = ("image_url", "audio_url", "video_url")
MiB = 1024 * 1024


@dataclass(frozen=True)
class MediaPolicy:
    allowed_domains: tuple[str, ...] = ()  # http(s) fetching is off while empty
    allowed_networks: tuple[str, ...] = ()  # CIDRs allowed besides public addresses, e.g. "127.0.0.1/32"
    local_dir: str | None = None  # file:// under this directory; off when None
    max_bytes: int = 20 * MiB
    max_pixels: int = 25_000_000
    max_items: int = 16
    timeout_s: float = 10.0
    max_redirects: int = 3


def text_only_message(model: str, part: dict[str, Any], modalities: tuple[str, ...]) -> str:
    """Why a model refuses a content part, in a user's words."""
    takes = "text only" if modalities == ("text",) else " and ".join(modalities)
    return f"The model {model!r} takes {takes}; it cannot read this {part.get('type')} part."


def media_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`messages[i].content[j]`, part) for every part of a chat that is not text."""
    for i, message in enumerate(messages):
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") not in TEXT_PARTS:
                yield f"messages[{i}].content[{j}]", part


async def resolve_media(messages: list[dict[str, Any]], policy: MediaPolicy) -> list[dict[str, Any]]:
    """The messages with every media URL replaced by a `data:` URL of what it names, under `policy`."""
    parts = list(media_parts(messages))
    if len(parts) > policy.max_items:
        raise InvalidRequest(
            f"The request holds {len(parts)} media items; this model takes at most {policy.max_items}.",
            param="messages",
        )
    resolved: dict[int, dict[str, Any]] = {}
    for param, part in parts:
        resolved[id(part)] = await _resolved_part(part, param, policy)
    return [
        {**m, "content": [resolved.get(id(p), p) for p in m["content"]]} if isinstance(m.get("content"), list) else m
        for m in messages
    ]


async def _resolved_part(part: dict[str, Any], param: str, policy: MediaPolicy) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "input_audio":
        data = (part.get("input_audio") or {}).get("data")
        _check_size(_decoded_size(data, param), policy, param)
        return part
    if kind not in _URL_PARTS:
        return part
    field = part.get(kind)
    url = field.get("url") if isinstance(field, dict) else field
    if not isinstance(url, str):
        raise InvalidRequest(f"The {kind} part needs a `url`.", param=param)
    data_url = await _data_url(url, param, policy)
    if kind == "image_url":
        _check_image(data_url, param, policy)
    new_field = {**field, "url": data_url} if isinstance(field, dict) else {"url": data_url}
    return {**part, kind: new_field}


async def _data_url(url: str, param: str, policy: MediaPolicy) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "data":
        _check_size(_decoded_size(_base64_of(url, param), param), policy, param)
        return url
    if scheme in ("http", "https"):
        try:
            async with asyncio.timeout(policy.timeout_s):
                mime, body = await _fetch(url, param, policy)
        except TimeoutError:
            raise InvalidRequest(
                f"Fetching the media at {_shown(url)} took longer than {policy.timeout_s:g} s.", param=param
            ) from None
        except httpx.HTTPError as exc:
            raise InvalidRequest(f"The media at {_shown(url)} could not be fetched: {exc}", param=param) from None
        return _as_data_url(mime, body)
    if scheme == "file":
        return _as_data_url(*_local_file(url, param, policy))
    raise InvalidRequest(f"Media URLs must be data:, http(s): or file: URLs, not {scheme or 'none'}.", param=param)


def _base64_of(data_url: str, param: str) -> str:
    head, _, data = data_url.partition(",")
    if not head.endswith(";base64"):
        raise InvalidRequest("A media data: URL must be base64 (data:<type>;base64,...).", param=param)
    return data


def _decoded_size(data: Any, param: str) -> int:
    if not isinstance(data, str):
        raise InvalidRequest("The media's data must be a base64 string.", param=param)
    return len(data) * 3 // 4


def _check_size(size: int, policy: MediaPolicy, param: str) -> None:
    if size > policy.max_bytes:
        raise InvalidRequest(
            f"The media item is {size} bytes; this model takes at most {policy.max_bytes} bytes an item.", param=param
        )


def _check_image(data_url: str, param: str, policy: MediaPolicy) -> None:
    """Decodes the image's header only: its size in pixels, without decompressing a bomb."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(_base64_of(data_url, param), validate=False)
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
    except (UnidentifiedImageError, binascii.Error, ValueError, OSError):
        raise InvalidRequest("The image_url part does not hold an image this server can read.", param=param) from None
    if width * height > policy.max_pixels:
        raise InvalidRequest(
            f"The image is {width}x{height} pixels; this model takes at most {policy.max_pixels} pixels.",
            param=param,
        )


def _as_data_url(mime: str, body: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(body).decode()}"


def _shown(url: str) -> str:
    """A URL as an error may show it: scheme, host and path, never a query (it may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}"


# -- http(s) ---------------------------------------------------------------------------------------


async def _fetch(url: str, param: str, policy: MediaPolicy) -> tuple[str, bytes]:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=policy.timeout_s) as client:
        for _ in range(policy.max_redirects + 1):
            address = await _checked_address(url, param, policy)
            parts = urlsplit(url)
            pinned = parts._replace(netloc=_netloc(address, parts.port)).geturl()
            headers = {"host": parts.netloc.rsplit("@", 1)[-1], "accept": "*/*"}
            extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
            request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"The media at {_shown(url)} answered HTTP {response.status_code}.", param=param
                    )
                return _mime(response, url), await _bounded_body(response, param, policy)
            finally:
                await response.aclose()
    raise InvalidRequest(f"The media at {_shown(url)} redirects more than {policy.max_redirects} times.", param=param)


async def _checked_address(url: str, param: str, policy: MediaPolicy) -> str:
    """The address to fetch `url` from, once its host is allowed and every address it resolves to is."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(f"Media may be fetched over http(s) only, not {_shown(url)}.", param=param)
    if not policy.allowed_domains:
        raise InvalidRequest(
            "This model does not fetch media from URLs: send the media as a data: URL.",
            param=param,
        )
    if not any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in policy.allowed_domains):
        raise InvalidRequest(f"Fetching media from {host} is not allowed for this model.", param=param)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, parts.port, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequest(f"The media host {host} cannot be resolved.", param=param) from None
    addresses = [ipaddress.ip_address(str(entry[4][0]).split("%")[0]) for entry in found]
    networks = [ipaddress.ip_network(cidr, strict=False) for cidr in policy.allowed_networks]
    for address in addresses:
        if not address.is_global and not any(address in network for network in networks):
            raise InvalidRequest(
                f"The media host {host} resolves to {address}, a loopback, private, link-local or reserved "
                "address, which this model does not fetch from.",
                param=param,
            )
    return str(addresses[0])


def _netloc(address: str, port: int | None) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port else host


def _mime(response: httpx.Response, url: str) -> str:
    mime = response.headers.get("content-type", "").split(";")[0].strip()
    return mime or mimetypes.guess_type(urlsplit(url).path)[0] or "application/octet-stream"


async def _bounded_body(response: httpx.Response, param: str, policy: MediaPolicy) -> bytes:
    length = response.headers.get("content-length")
    if length is not None and length.isdigit():
        _check_size(int(length), policy, param)
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        _check_size(len(body), policy, param)
    return bytes(body)


# -- file:// ---------------------------------------------------------------------------------------


def _local_file(url: str, param: str, policy: MediaPolicy) -> tuple[str, bytes]:
    if policy.local_dir is None:
        raise InvalidRequest("This model does not read local media files (file: URLs).", param=param)
    root = os.path.realpath(policy.local_dir)
    path = os.path.realpath(unquote(urlsplit(url).path))
    if os.path.commonpath([root, path]) != root:
        raise InvalidRequest("The file: URL is outside the model's local media directory.", param=param)
    try:
        size = os.path.getsize(path)
        _check_size(size, policy, param)
        with open(path, "rb") as file:
            body = file.read(policy.max_bytes + 1)
    except OSError:
        raise InvalidRequest("The file: URL names no readable file in the media directory.", param=param) from None
    _check_size(len(body), policy, param)
    return mimetypes.guess_type(path)[0] or "application/octet-stream", body
