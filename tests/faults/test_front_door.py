"""A router process probed by a hostile client over real sockets: oversized request heads, JSON bodies
shaped to cost the most to parse, HEAD and undeclared methods, two Authorization headers, and a
trailing slash with a forged Host. Raw sockets where an HTTP client would refuse to send the input."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import orjson
import psutil

from tests.faults.harness import MODEL, Fleet, Router

KEY = "sk-tokenyard-faults-front-5d20c4"
AUTH = {"authorization": f"Bearer {KEY}"}
MiB = 1 << 20


def _start(fleet: Fleet) -> Router:
    _, router = fleet.start(1, config={"api_keys": KEY})
    return router


def _exchange(port: int, request: bytes, timeout_s: float = 10) -> bytes:
    """Send `request` from one thread while reading the answer, up to the server's close, in this one."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout_s)

    def send() -> None:
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server may stop reading once it has answered

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    finally:
        sock.close()
        sender.join(timeout_s)
    return b"".join(chunks)


def _status_and_error(answer: bytes) -> tuple[bytes, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    error: dict[str, object] = orjson.loads(body)["error"]
    return head, error


def _big_head(value_bytes: int, end: bool = True) -> bytes:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * value_bytes
    return head + b"\r\n\r\n" if end else head


def test_an_oversized_head_is_431_as_it_arrives_and_memory_stays_flat(fleet: Fleet) -> None:
    router = _start(fleet)
    assert router.proc is not None
    # Never finished: the answer comes from the bytes counted so far, not from the end of the head.
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", router.port))
    sock.settimeout(5)
    sock.sendall(_big_head(2 * MiB, end=False))
    answer = b""
    while b"}}" not in answer and (chunk := sock.recv(65536)):
        answer += chunk
    assert time.monotonic() - started < 5  # not the 10 s header deadline
    head, error = _status_and_error(answer)
    assert head.startswith(b"HTTP/1.1 431 ") and b"connection: close" in head
    assert error == {
        "message": "The request line and headers are larger than 65536 bytes.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_header_fields_too_large",
    }
    assert sock.recv(65536) == b""  # and the connection is closed
    sock.close()
    # Just past the bound, whole in one read: refused too; a head within it is served.
    assert _exchange(router.port, _big_head(64 * 1024)).startswith(b"HTTP/1.1 431 ")
    within = _exchange(router.port, _big_head(60 * 1024).replace(b"Host: x", b"Host: x\r\nConnection: close"))
    assert within.startswith(b"HTTP/1.1 401 ")  # read whole and answered as any request: no key
    # A flood of 32 MiB heads from eight connections at once, twice over.
    process = psutil.Process(router.proc.pid)
    before = process.memory_info().rss
    for _ in range(2):
        answers: list[bytes] = []

        def send_a_big_head(into: list[bytes] = answers) -> None:
            into.append(_exchange(router.port, _big_head(32 * MiB)))

        threads = [threading.Thread(target=send_a_big_head) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(answers) == 8 and all(a.startswith(b"HTTP/1.1 431 ") for a in answers)
    grown = process.memory_info().rss - before
    assert grown < 48 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
    assert httpx.get(f"{router.url}/v1/models", headers=AUTH).status_code == 200


def test_a_costly_json_shape_is_refused_without_stalling_the_loop(fleet: Fleet) -> None:
    router = _start(fleet)
    assert router.proc is not None
    process = psutil.Process(router.proc.pid)
    lists = b'{"model":"%s","messages":[' % MODEL.encode() + b",".join([b"[]"] * 2_660_000) + b"]}"
    assert len(lists) < 8 * MiB
    deep = b'{"model":"%s","messages":' % MODEL.encode() + b"[" * 3 * MiB + b"]" * 3 * MiB + b"}"
    health_s: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=router.url, timeout=10) as http:
            while not done.is_set():
                started = time.monotonic()
                assert http.get("/health").status_code == 200
                health_s.append(time.monotonic() - started)
                time.sleep(0.01)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        with httpx.Client(base_url=router.url, headers=AUTH, timeout=30) as http:
            for body, message in (
                (lists, "The request body has more than 250000 JSON elements."),
                (deep, "The request body has more than 20000 JSON arrays and objects."),
            ):
                cpu = process.cpu_times()
                response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
                spent = sum(process.cpu_times()[:2]) - sum(cpu[:2])
                assert response.status_code == 400
                assert response.json()["error"] == {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
                assert spent < 0.5, f"{spent:.2f} s of router CPU"  # was 2.7 s for the lists
    finally:
        done.set()
        prober.join(10)
    assert health_s and max(health_s) < 0.5, f"/health took up to {max(health_s):.2f} s"


def test_head_works_wherever_get_does_and_other_methods_are_405(fleet: Fleet) -> None:
    router = _start(fleet)
    with httpx.Client(base_url=router.url, timeout=10) as http:
        for path, headers in (("/health", {}), ("/metrics", {}), ("/v1/models", AUTH), (f"/v1/models/{MODEL}", AUTH)):
            got, head = http.get(path, headers=headers), http.head(path, headers=headers)
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-type"] == got.headers["content-type"]
        assert http.head("/v1/models").status_code == 401  # the same key as GET
        for method, path, allow in (
            ("DELETE", "/v1/models", "GET, HEAD"),
            ("POST", "/health", "GET, HEAD"),
            ("PUT", "/v1/chat/completions", "POST"),
            ("HEAD", "/v1/completions", "POST"),
            ("TRACE", "/v1/models", "GET, HEAD"),
            ("OPTIONS", "/v1/embeddings", "POST"),
            ("GET", "/v1/rerank", "POST"),
            ("GET", "/pooling", "POST"),
            ("PUT", "/v1/audio/transcriptions", "POST"),
        ):
            response = http.request(method, path, headers=AUTH)
            assert response.status_code == 405
            assert response.headers["allow"] == allow
            if method != "HEAD":
                assert response.json()["error"] == {
                    "message": f"This method is not allowed here; allowed: {allow}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "method_not_allowed",
                }
    # On the wire, a HEAD answer has the GET answer's length and no body: the next answer follows at once.
    answer = _exchange(
        router.port,
        b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and b"content-length: 15" in first
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b'{"status":"ok"}')


def test_two_authorization_headers_are_refused(fleet: Fleet) -> None:
    router = _start(fleet)
    wrong = "Bearer sk-tokenyard-faults-wrong-0000"
    with httpx.Client(base_url=router.url, timeout=10) as http:
        for pair in (
            (AUTH["authorization"], wrong),
            (wrong, AUTH["authorization"]),
            (AUTH["authorization"], AUTH["authorization"]),
        ):
            response = http.get("/v1/models", headers=[("authorization", pair[0]), ("authorization", pair[1])])
            assert response.status_code == 400
            assert response.json()["error"] == {
                "message": "The request has more than one Authorization header.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        assert http.get("/v1/models", headers=AUTH).status_code == 200
        assert http.get("/health", headers=[("authorization", wrong), ("authorization", wrong)]).status_code == 200


def test_a_trailing_slash_is_served_without_a_redirect_to_the_clients_host(fleet: Fleet) -> None:
    router = _start(fleet)
    forged = {"host": "evil.example"}
    with httpx.Client(base_url=router.url, timeout=10, follow_redirects=False) as http:
        health = http.get("/health/", headers=forged)  # a probe, with no key
        assert (health.status_code, health.json()) == (200, {"status": "ok"}) and "location" not in health.headers
        models = http.get("/v1/models/", headers={**AUTH, **forged})
        assert models.status_code == 200 and "location" not in models.headers
        assert models.json()["data"][0]["id"] == MODEL
        assert http.get("/v1/models/", headers=forged).status_code == 401
        chat = http.post(
            "/v1/chat/completions/",
            headers={**AUTH, **forged},
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert chat.status_code == 200 and "location" not in chat.headers
        assert chat.json()["choices"][0]["message"]["content"]


def test_a_request_the_parser_refuses_gets_an_openai_400(fleet: Fleet) -> None:
    router = _start(fleet)
    for request in (b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", b"FROB /health HTTP/1.1\r\nHost: x\r\n\r\n"):
        head, error = _status_and_error(_exchange(router.port, request))
        assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head
        assert error == {
            "message": "Invalid HTTP request received.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
