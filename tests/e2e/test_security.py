"""Keys, TLS and slow clients against a real server process.

The gateway's own logic runs under the production server loop with the scripted engine; one test
starts the real engine with keys, to show the openai SDK's AuthenticationError against real serving.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import trustme

from tests.conftest import TEXT_MODEL, free_port, start_server, stop_server, wait_ready
from tests.support.scripted_gateway import MODEL, start

KEYS = ["sk-tokenyard-e2e-alpha-51f0c2", "sk-tokenyard-e2e-beta-93ab7d"]
FILE_KEY = "sk-tokenyard-e2e-file-0d44e1"
WRONG_KEY = "sk-tokenyard-e2e-wrong-77aa10"
PROMPT = "canary prompt 8c1f: the password is swordfish"


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    finally:
        proc.kill()


def test_configured_keys_appear_in_no_log_metric_error_or_dump(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{FILE_KEY} name=from-file rpm=2\n")
    config = {
        "api_keys": ",".join(KEYS),
        "auth": {"api_keys_file": str(keys_file)},
        "limits": {"max_body_bytes": 2048},
        "log_level": "debug",
    }
    proc, url = start(config, {"tokens": 4}, tmp_path / "server.log")
    seen: list[str] = []  # every status line, header and body a client got back
    try:
        with httpx.Client(base_url=url, timeout=30) as http:

            def call(method: str, path: str, key: str | None, **kwargs: object) -> httpx.Response:
                headers = {"authorization": f"Bearer {key}"} if key else {}
                response = http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
                seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")
                return response

            body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4}
            statuses = [
                call("POST", "/v1/chat/completions", KEYS[0], json=body).status_code,
                call("POST", "/v1/chat/completions", KEYS[1], json={**body, "stream": True}).status_code,
                call("GET", "/v1/models", None).status_code,
                call("GET", "/v1/models", WRONG_KEY).status_code,
                call("POST", "/v1/completions", KEYS[0], content=b"x" * 4096).status_code,
                call("POST", "/v1/chat/completions", KEYS[0], json={**body, "n": 500}).status_code,
                *[call("GET", "/v1/models", FILE_KEY).status_code for _ in range(3)],
            ]
            metrics = call("GET", "/metrics", None).text
    finally:
        code = _stop(proc)
    assert statuses == [200, 200, 401, 401, 413, 400, 200, 200, 429]
    assert code == 0
    log = (tmp_path / "server.log").read_text()
    lines = [orjson.loads(line) for line in log.splitlines()]  # every line is JSON
    dump = next(line["settings"] for line in lines if line["message"] == "settings")
    assert [k["key"] for k in dump["api_keys"]] == ["**********", "**********"]
    access = [line for line in lines if line["logger"] == "tokenyard.access"]
    assert [a["status"] for a in access if a["path"] != "/ready"] == statuses + [200]
    assert {a["key"] for a in access} >= {
        *(f"key-{hashlib.sha256(k.encode()).hexdigest()[:12]}" for k in KEYS),
        "from-file",
        None,
    }
    assert all(a["request_id"] and a["latency_ms"] >= 0 for a in access)
    assert 'tokenyard_rejected_total{reason="auth"} 2.0' in metrics
    everything = "\n".join([log, metrics, *seen])
    for secret in [*KEYS, FILE_KEY, WRONG_KEY, PROMPT, "swordfish"]:
        assert secret not in everything


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    ca, key, chain = tmp_path / "ca.pem", tmp_path / "key.pem", tmp_path / "cert.pem"
    authority.cert_pem.write_to_path(str(ca))
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    yield ca, key, chain


def test_tls(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> None:
    ca, key, chain = tls_files
    tls = {"ssl_keyfile": str(key), "ssl_certfile": str(chain)}
    proc, url = start({"tls": tls, "api_keys": KEYS[0]}, {"tokens": 3}, tmp_path / "server.log", scheme="https")
    try:
        verify = ssl.create_default_context(cafile=str(ca))
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready", verify=verify).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        with httpx.Client(verify=verify) as http:
            sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[0], http_client=http, max_retries=0)
            reply = sdk.completions.create(model=MODEL, prompt="x", max_tokens=3)
            assert reply.choices[0].text == "t0 t1 t2 "
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
            httpx.get(f"{url}/ready")
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(url.replace("https", "http") + "/ready")
    finally:
        assert _stop(proc) == 0


def _closed_after(sock: socket.socket, since: float) -> float:
    """Seconds from `since` until the server closes `sock` (reads until EOF)."""
    sock.settimeout(5)
    while sock.recv(4096):
        pass
    return time.monotonic() - since


def test_slow_and_half_open_clients_are_bounded(tmp_path: Path) -> None:
    limits = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "keep_alive_timeout_s": 1}
    proc, url = start({"limits": limits}, {"tokens": 2}, tmp_path / "server.log")
    port = int(url.rsplit(":", 1)[1])
    try:
        opened = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]  # connect, say nothing
        slow_headers = socket.create_connection(("127.0.0.1", port))
        slow_headers.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        slow_body = socket.create_connection(("127.0.0.1", port))
        slow_body.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model": '
        )
        assert httpx.get(f"{url}/v1/models").status_code == 200  # served meanwhile
        for sock in idle[:1] + [slow_headers]:
            assert 0.9 <= _closed_after(sock, opened) <= 2.0  # header_timeout_s after connecting
        slow_body.settimeout(5)
        answer = b"".join(iter(lambda: slow_body.recv(65536), b""))  # up to the close the 408 promises
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
        assert json.loads(payload)["error"]["code"] == "request_timeout"
        assert time.monotonic() - opened < 2.5  # body_timeout_s after the request began, not never
        time.sleep(0.5)
        assert all(sock.recv(1) == b"" for sock in idle)  # every idle connection was closed
        assert httpx.get(f"{url}/v1/models").status_code == 200
    finally:
        for sock in [*idle, slow_headers, slow_body]:
            sock.close()
        assert _stop(proc) == 0


@pytest.mark.engine
def test_the_sdk_raises_authentication_error_against_a_real_engine(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    args = [
        "--port",
        str(port),
        "--model",
        "builtin:gemma3-270m",
        "--served-model-name",
        TEXT_MODEL,
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "512",
        "--api-keys",
        ",".join(KEYS),
    ]
    proc = start_server(args, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log_path, 900)
        for key in ("EMPTY", WRONG_KEY):
            sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as err:
                sdk.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=4)
            assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[1], max_retries=0)
        reply = sdk.completions.create(model=TEXT_MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
        assert reply.usage is not None and reply.usage.completion_tokens == 4
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        started = time.monotonic()
        code = stop_server(proc)
        stopped_s = time.monotonic() - started
    assert code == 0 and stopped_s < 30  # drained at once: nothing was in flight
    everything = log_path.read_text() + metrics
    assert all(secret not in everything for secret in [*KEYS, WRONG_KEY, PROMPT])
