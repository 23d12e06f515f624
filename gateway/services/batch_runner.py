"""The batch runner: one per process, started in the app's lifespan, sharing the work of every batch with the
other replicas through the store (gateway.store.batches).

Each pass it reads batches waiting for validation into lines, finishes the batches that are done (or expired,
or cancelled) into their output and error files, and claims as many lines as its slots allow
(batch.max_concurrency here, batch.max_concurrency_per_batch per batch). Each line runs as an in-process ASGI
request into the app itself, so it passes the same middlewares as a live request: the batch owner's key
(auth, rate limits, budgets), admission at the lowest priority (a live request waiting is always served
first), routing, metrics and tracing. A line refused for load (429, 503, 502, 504; not a spent budget) goes
back to be tried again after batch.retry_s; any other answer is its result, written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message

from gateway.errors import GatewayError
from gateway.keys import ACTING_KEY
from gateway.observability.metrics import Metrics
from gateway.services.batch_input import read_input
from gateway.settings import BatchSettings
from gateway.store.batches import STATUSES, BatchStore, Line, new_request_id
from gateway.store.files import FileStore

log = logging.getLogger(__name__)

# The lowest priority vLLM's convention allows (lower runs sooner): a batch line waits behind every live request.
BATCH_PRIORITY = 2**63 - 1
_RETRIED = frozenset({429, 502, 503, 504})
_COUNT_EVERY_S = 2.0


async def call_app(app: ASGIApp, path: str, body: bytes, headers: list[tuple[bytes, bytes]], owner: str) -> Message:
    """One POST through the whole app, in process: its status, headers and body as {status, headers, body}."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        "client": None,
        "server": None,
        "state": {},
        ACTING_KEY: owner,
    }
    sent = False
    never = asyncio.Event()  # the caller never leaves: nothing but the answer's end stops the request

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    answer: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"], answer["headers"] = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer


def _retried(status: int, body: Any) -> bool:
    """Refused for load, not for what the line asks: try it again later. A spent budget is the line's answer."""
    if status not in _RETRIED:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return not (isinstance(error, dict) and error.get("code") == "insufficient_quota")


class BatchRunner:
    def __init__(
        self,
        batches: BatchStore,
        files: FileStore,
        settings: BatchSettings,
        metrics: Metrics,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.batches, self.files, self.settings, self.metrics = batches, files, settings, metrics
        self._paused = paused  # the process is draining: no new line is claimed
        self.worker = f"{os.uname().nodename}-{os.getpid()}-{os.urandom(4).hex()}"
        self.running: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._app: ASGIApp | None = None
        self._renewed = self._counted = 0.0

    def start(self, app: ASGIApp) -> None:
        self._app = app
        self._wake = asyncio.Event()
        self._loop = asyncio.create_task(self._run(), name="batch-runner")

    async def close(self) -> None:
        """Stop claiming; lines running here are stopped and handed back, to run again here or elsewhere."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        tasks = dict(self.running)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._validate()
                await self._finish()
                await self._claim()
                await self._renew()
                await self._count()
            except GatewayError:
                pass  # the store is down: logged by its transaction, tried again at the next pass
            except Exception:
                log.exception("batch runner pass failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_s):
                    await self._wake.wait()
            self._wake.clear()

    async def _validate(self) -> None:
        for batch_id, owner, file_id in await self.batches.validating():
            try:
                stored = await self.files.get(owner, file_id)
                endpoint = (await self.batches.get(owner, batch_id))["endpoint"]
                lines, errors = await read_input(self.files.chunks(stored), endpoint)
            except GatewayError as exc:
                if exc.status != 404:
                    raise
                lines, errors = [], [{"code": "invalid_file", "message": str(exc), "param": "input_file_id"}]
            if errors:
                if await self.batches.fail(batch_id, errors):
                    log.info("batch %s: validating -> failed (%d error(s) in its input file)", batch_id, len(errors))
            elif await self.batches.start(batch_id, lines):
                log.info("batch %s: validating -> in_progress (%d lines)", batch_id, len(lines))

    async def _finish(self) -> None:
        for batch_id, final in await self.batches.to_finish(self.settings.lease_s):
            if final == "completed" and await self.batches.mark_finalizing(batch_id):
                log.info("batch %s: in_progress -> finalizing", batch_id)
            if await self.batches.finish(batch_id, final):
                log.info("batch %s: -> %s", batch_id, final)

    async def _claim(self) -> None:
        free = self.settings.max_concurrency - len(self.running)
        for batch_id, expires_at in await self.batches.running():
            if free <= 0 or self._paused():
                return
            if expires_at <= time.time():
                continue  # expired: finished at the next pass
            per_batch, lease_s = self.settings.max_concurrency_per_batch, self.settings.lease_s
            for line in await self.batches.claim(batch_id, self.worker, free, lease_s, per_batch):
                task = asyncio.create_task(self._line(line), name=f"batch line {batch_id}:{line.line}")
                self.running[(batch_id, line.line)] = task
                free -= 1

    async def _renew(self) -> None:
        now = time.monotonic()
        if now - self._renewed < self.settings.lease_s / 3:
            return
        self._renewed = now
        await self.batches.renew(self.worker, list(self.running))

    async def _count(self) -> None:
        now = time.monotonic()
        if now - self._counted < _COUNT_EVERY_S:
            return
        self._counted = now
        counts = await self.batches.count()
        for status in STATUSES:
            self.metrics.batches.labels(status).set(counts.get(status, 0))

    async def _line(self, line: Line) -> None:
        try:
            await self._serve(line)
        except asyncio.CancelledError:
            with contextlib.suppress(GatewayError):  # the process stops: the line goes back at once
                await self.batches.release(line, self.worker, 0.0)
            raise
        except GatewayError:
            pass  # the store is down: the line's lease runs out and it runs again
        except Exception:
            log.exception("batch line failed")
        finally:
            self.running.pop((line.batch_id, line.line), None)
            self._wake.set()

    async def _serve(self, line: Line) -> None:
        assert self._app is not None
        request_id = new_request_id()
        headers = [(b"x-priority", str(BATCH_PRIORITY).encode()), (b"x-request-id", request_id.encode())]
        try:
            answer = await call_app(self._app, line.endpoint, orjson.dumps(line.body), headers, line.owner)
        except Exception:  # the app failed past its error handlers (it answered 500): that is the line's answer
            log.exception("batch line %s:%d failed in the app", line.batch_id, line.line)
            error = {"message": "The server had an error while processing this request.", "type": "server_error"}
            answer = {"status": 500, "body": orjson.dumps({"error": {**error, "param": None, "code": None}})}
        status = int(answer["status"])
        try:
            body: Any = orjson.loads(bytes(answer["body"]))
        except orjson.JSONDecodeError:
            body = bytes(answer["body"]).decode("utf-8", "replace")
        if _retried(status, body):
            self.metrics.batch_requests.labels("retried").inc()
            await self.batches.release(line, self.worker, self.settings.retry_s)
            return
        result = {
            "id": request_id,
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        outcome = "output" if 200 <= status < 300 else "error"
        if outcome == "error":  # the status and the error's code only: a line's content may be private
            said = body.get("error") if isinstance(body, dict) else None
            code = said.get("code") or said.get("type") if isinstance(said, dict) else None
            log.warning("batch %s line %d answered %d (%s)", line.batch_id, line.line, status, code)
        if await self.batches.record(line, outcome, result):
            self.metrics.batch_requests.labels("completed" if outcome == "output" else "failed").inc()
