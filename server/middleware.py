"""Pure ASGI middleware: request metrics and timing headers (outermost), the body size limit."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.metrics import Metrics
from server.timing import Timing


async def send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class BodyTooLarge(Exception):
    pass


async def read_body(receive, max_bytes: int | None = None) -> bytes | None:
    """The whole request body; None if the client left. BodyTooLarge past `max_bytes`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if max_bytes is not None and size > max_bytes:
            raise BodyTooLarge
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """An ASGI receive that hands over an already read body, then the connection's."""
    sent = False

    async def receive_again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


def record_timing(state: Any, timing: Timing | None, search_s: float | None = None) -> None:
    """A route's split of its time (into request.state), for the headers and the histograms.

    `timing` is None when nothing was embedded (a search by vectors): the headers say 0.
    """
    state.timing = (timing, search_s)


def timing_headers(total_s: float, recorded: tuple[Timing | None, float | None] | None) -> list:
    """x-total-time (and the same as `Server-Timing: app;dur=<ms>`, which the search page
    shows) always; the queue/preprocess/inference (and search) split when recorded."""
    headers = [
        (b"x-total-time", b"%.3f" % (1000 * total_s)),
        (b"server-timing", b"app;dur=%.2f" % (1000 * total_s)),
    ]
    if recorded is not None:
        timing, search_s = recorded
        timing = timing or Timing()
        headers += [
            (b"x-queue-time", b"%.3f" % (1000 * timing.queue)),
            (b"x-preprocess-time", b"%.3f" % (1000 * timing.preprocess)),
            (b"x-inference-time", b"%.3f" % (1000 * timing.inference)),
        ]
        if search_s is not None:
            headers.append((b"x-search-time", b"%.3f" % (1000 * search_s)))
    return headers


class MetricsMiddleware:
    """Counts every request by route template (not raw path: bounded label values), adds the
    x-*-time headers (TEI's names, in ms) and observes the same split in histograms."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        start = time.perf_counter()
        state = scope.setdefault("state", {})

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                recorded = state.get("timing")
                extra = timing_headers(time.perf_counter() - start, recorded)
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
                if recorded is not None and recorded[0] is not None and status < 400:
                    self.metrics.observe_timing(recorded[0])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """413 for bodies over the limit: by Content-Length up front, or counted when chunked."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._refuse(send)
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return await self.app(scope, receive, send)
        try:
            body = await read_body(receive, self.max_bytes)
        except BodyTooLarge:
            return await self._refuse(send)
        if body is not None:
            await self.app(scope, replay(body, receive), send)

    async def _refuse(self, send) -> None:
        await send_json(
            send,
            413,
            {
                "error": "body_too_large",
                "detail": f"request body is larger than the limit of {self.max_bytes} bytes",
            },
        )


class HeadAsGet:
    """HEAD on any GET route: the GET's status and headers without its body (RFC 9110)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, without_body)
